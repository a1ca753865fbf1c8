"""FFTW's planned line transforms against torch.fft, their argument checks and their fallback."""

import importlib.util
import os
import sys

import pytest
import torch

from probneural.data import fftw
from probneural.data.fftw import LineFFT

COMPLEX = [torch.complex64, torch.complex128]
LOADED = fftw.available(torch.zeros(1, dtype=torch.complex64))
# the tests of what the plans compute need pyfftw (test_fftw_is_used_where_pyfftw_is_installed says when it must be)
needs_fftw = pytest.mark.skipif(not LOADED, reason="pyfftw is not installed, or PROBNEURAL_FFTW=0 or PROBNEURAL_NATIVE=0, here")


def _random(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def test_fftw_is_used_where_pyfftw_is_installed():
    # `make test` installs the fftw extra; a plain `pip install probneural` has no pyfftw, and the solvers use torch.fft
    expected = (importlib.util.find_spec("pyfftw") is not None
                and os.environ.get("PROBNEURAL_NATIVE", "1") != "0" and os.environ.get("PROBNEURAL_FFTW", "1") != "0")
    assert LOADED == expected
    assert (fftw.version() is not None) == LOADED


@needs_fftw
def test_available_only_for_complex_cpu_tensors():
    assert fftw.available(torch.zeros(2, dtype=torch.complex128), torch.zeros(3, dtype=torch.complex64))
    assert not fftw.available(torch.zeros(2, dtype=torch.float64))
    assert not fftw.available(torch.zeros(2, dtype=torch.complex64, device="meta"))
    assert not fftw.available(torch.zeros(2, 2, dtype=torch.complex64).to_sparse())


@needs_fftw
@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("n", [16, 17, 256])
def test_forward_and_inverse_match_torch_fft_on_padded_rows(dtype, n):
    # padded rows (a row stride longer than n) on both sides, as the Navier-Stokes solver's buffers have
    source = torch.empty(2, 3, n + 5, dtype=dtype)[..., :n]
    destination = torch.empty(2, 3, n + 8, dtype=dtype)[..., :n]
    forward, inverse = LineFFT(source, destination), LineFFT(source, destination, inverse=True)
    tolerance = {"rtol": 1e-5, "atol": 1e-5 * n} if dtype == torch.complex64 else {"rtol": 1e-12, "atol": 1e-12 * n}
    for seed in range(2):  # a plan reads its source anew at every call
        source.copy_(_random(2, 3, n, dtype=dtype, seed=seed))
        assert forward() is destination
        torch.testing.assert_close(destination, torch.fft.fft(source, dim=-1), **tolerance)
        inverse()
        torch.testing.assert_close(destination, torch.fft.ifft(source, dim=-1, norm="forward"), **tolerance)


@needs_fftw
def test_a_plan_leaves_its_source_and_gives_the_same_bits_every_call():
    source = _random(4, 64, dtype=torch.complex128, seed=3)
    kept, destination = source.clone(), torch.empty_like(source)
    plan = LineFFT(source, destination)
    assert torch.equal(source, kept)  # planning does not touch the tensors (FFTW_ESTIMATE)
    first = plan().clone()
    assert torch.equal(source, kept)  # nor does the transform touch its source
    assert torch.equal(plan(), first)
    other = torch.empty_like(source)
    LineFFT(source, other)()
    assert torch.equal(other, first)  # a second plan of the same transform: the same algorithm


@needs_fftw
def test_bad_arguments_are_named():
    c64, c128 = torch.complex64, torch.complex128
    lines = torch.zeros(2, 8, dtype=c128)
    expected = "expected a strided complex64 or complex128 CPU tensor, got"
    with pytest.raises(ValueError, match=f"source: {expected} torch.float64"):
        LineFFT(lines.real, lines.clone())
    with pytest.raises(ValueError, match=f"destination: {expected} int"):
        LineFFT(lines, 3)
    with pytest.raises(ValueError, match=r"source: expected a strided .*\(torch.sparse_coo\)"):
        LineFFT(lines.to_sparse(), lines.clone())
    with pytest.raises(ValueError, match="source: expected a non-empty tensor"):
        LineFFT(torch.zeros(0, 8, dtype=c128), torch.zeros(0, 8, dtype=c128))
    with pytest.raises(ValueError, match="source: expected a tensor without a conjugate"):
        LineFFT(lines.conj(), lines.clone())
    with pytest.raises(ValueError, match=r"destination: expected torch.complex128 of shape \(2, 8\)"):
        LineFFT(lines, torch.zeros(2, 8, dtype=c64))
    with pytest.raises(ValueError, match=r"destination: expected torch.complex128 of shape \(2, 8\)"):
        LineFFT(lines, torch.zeros(2, 9, dtype=c128))
    with pytest.raises(ValueError, match="destination: expected memory of its own"):
        LineFFT(lines, lines)
    with pytest.raises(ValueError, match="destination: expected memory of its own"):
        storage = torch.zeros(3, 8, dtype=c128)
        LineFFT(storage[:2], storage[1:])
    with pytest.raises(ValueError, match="destination: expected distinct memory for every element"):
        LineFFT(lines, torch.zeros(1, 8, dtype=c128).expand(2, 8))


def test_an_installed_pyfftw_that_fails_to_load_is_reported_and_not_used(monkeypatch, tmp_path):
    # e.g. FFTW's libraries missing, or a pyfftw built against another numpy (ValueError, OSError, ...)
    (tmp_path / "pyfftw").mkdir()
    (tmp_path / "pyfftw" / "__init__.py").write_text('raise OSError("libfftw3.so: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyfftw", raising=False)
    for switch in ("PROBNEURAL_FFTW", "PROBNEURAL_NATIVE"):  # the import is attempted whatever this run's switches
        monkeypatch.delenv(switch, raising=False)
    fftw._pyfftw.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="pyfftw cannot be used .OSError: libfftw3.so"):
            assert not fftw.available(torch.zeros(1, dtype=torch.complex64))
    finally:
        monkeypatch.undo()
        fftw._pyfftw.cache_clear()


@pytest.mark.parametrize("off", ["PROBNEURAL_FFTW", "PROBNEURAL_NATIVE", "no pyfftw"])
def test_without_pyfftw_planning_says_so(monkeypatch, off):
    if off == "no pyfftw":
        monkeypatch.setitem(sys.modules, "pyfftw", None)  # `import pyfftw` raises ImportError
    else:
        monkeypatch.setenv(off, "0")
    fftw._pyfftw.cache_clear()
    try:
        assert not fftw.available(torch.zeros(1, dtype=torch.complex64))
        assert fftw.version() is None
        with pytest.raises(RuntimeError, match="FFTW is not loaded"):
            LineFFT(torch.zeros(1, 4, dtype=torch.complex64), torch.zeros(1, 4, dtype=torch.complex64))
    finally:
        monkeypatch.undo()
        fftw._pyfftw.cache_clear()
