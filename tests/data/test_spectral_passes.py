"""The C library of fused solver passes against the torch operations it replaces, its checks and its fallback."""

import os
import shutil
import sysconfig

import pytest
import torch

from probneural.data import spectral_passes
from probneural.data.spectral_passes import RowProducts, Transpose, rk3_stage, square_in_place

COMPLEX = [torch.complex64, torch.complex128]
BUILT = spectral_passes.available(torch.zeros(1, dtype=torch.complex64))
# the tests of what the library computes need it (test_library_is_built_where_a_c_compiler_is says when it must be)
needs_library = pytest.mark.skipif(not BUILT, reason="the C library is not built or is disabled here")


def _random(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _padded(*shape: int, dtype: torch.dtype, seed: int, padding: int = 3) -> torch.Tensor:
    """Random values in a tensor whose rows are longer than its last axis (a non-contiguous row stride)."""
    *leading, last = shape
    return _random(*leading, last + padding, dtype=dtype, seed=seed)[..., :last]


def test_library_is_built_where_a_c_compiler_is():
    # `pip install -e .` builds it with the compiler setuptools uses ($CC, else the one Python was built with);
    # without one the install goes on and every solver runs its torch operations. PROBNEURAL_NATIVE=0 turns it off.
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    expected = shutil.which(compiler) is not None and os.environ.get("PROBNEURAL_NATIVE", "1") != "0"
    assert BUILT == expected


@needs_library
def test_available_only_for_complex_cpu_tensors_of_one_dtype():
    assert spectral_passes.available(torch.zeros(2, dtype=torch.complex128), torch.zeros(3, dtype=torch.complex128))
    assert not spectral_passes.available(torch.zeros(2, dtype=torch.complex64), torch.zeros(2, dtype=torch.complex128))
    assert not spectral_passes.available(torch.zeros(2, dtype=torch.float64))


@needs_library
@pytest.mark.parametrize("dtype", COMPLEX)
def test_row_products_match_gather_multiply_add(dtype):
    batch, rows, sources, n = 3, 5, 7, 12
    src = _random(batch, sources, n, dtype=dtype, seed=0)
    first, second = _random(rows, n, dtype=dtype, seed=1), _random(rows, n, dtype=dtype, seed=2)
    first_rows, second_rows = torch.tensor([0, 6, 2, 2, 5]), torch.tensor([1, 0, 3, 4, 6])
    out = torch.empty(batch, rows, n, dtype=dtype)
    RowProducts(first, first_rows, sources)(out, src)
    torch.testing.assert_close(out, first * src[:, first_rows])
    RowProducts(first, first_rows, sources, second, second_rows)(out, src)
    torch.testing.assert_close(out, first * src[:, first_rows] + second * src[:, second_rows])
    RowProducts(first.conj(), first_rows, sources)(out, src)  # a conjugated view of a factor is resolved when copied
    torch.testing.assert_close(out, first.conj() * src[:, first_rows])


@needs_library
@pytest.mark.parametrize("dtype", COMPLEX)
def test_transposes_move_and_conjugate_lines(dtype):
    batch, n, grid_columns = 2, 9, 11
    columns = torch.tensor([0, 1, 2, 0, 9, 10])  # a column may be read twice (never written twice)
    lines = _padded(batch, 6, n, dtype=dtype, seed=3)
    expected = torch.cat([lines[:, :3], lines[:, 3:].conj()], dim=1)

    to_lines = torch.empty(batch, 6, n, dtype=dtype)
    grid = _padded(batch, n, grid_columns, dtype=dtype, seed=4)
    Transpose(columns, 3, grid_columns).to_lines(to_lines, grid)
    torch.testing.assert_close(to_lines, torch.cat([grid[..., columns[:3]], grid[..., columns[3:]].conj()], 2).mT,
                               rtol=0, atol=0)

    distinct = torch.tensor([0, 1, 2, 8, 9, 10])
    grid = grid.contiguous()  # the side written must be
    before = grid.clone()
    Transpose(distinct, 3, grid_columns).to_grid(grid, lines)
    torch.testing.assert_close(grid[..., distinct], expected.mT, rtol=0, atol=0)
    untouched = [c for c in range(grid_columns) if c not in distinct.tolist()]
    torch.testing.assert_close(grid[..., untouched], before[..., untouched], rtol=0, atol=0)


@needs_library
@pytest.mark.parametrize("dtype", COMPLEX)
def test_square_in_place_and_speed(dtype):
    z = _random(3, 17, 4, dtype=dtype, seed=5)
    expected, speed = z * z, (z.real.abs() + z.imag.abs()).amax(dim=(1, 2))
    assert square_in_place(z, False) is None
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    z = _random(3, 17, 4, dtype=dtype, seed=5)
    torch.testing.assert_close(square_in_place(z, True), speed, rtol=0, atol=0)
    z = _random(3, 17, 4, dtype=dtype, seed=5)
    z[1, 3, 2], z[2, 0, 0] = complex("nan"), complex(float("nan"), 0.0)  # NaN propagates, as with amax
    assert square_in_place(z, True).isnan().tolist() == [False, True, True]


@needs_library
@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("with_forcing", [False, True])
@pytest.mark.parametrize("shared_tables", [False, True])
def test_rk3_stage_matches_its_torch_operations(dtype, with_forcing, shared_tables):
    batch, rows, advected, n = 3, 6, 4, 10
    tables = 1 if shared_tables else batch
    w = _random(batch, rows, n, dtype=dtype, seed=6)
    damping, factor = _random(tables, rows, n, dtype=dtype, seed=7), _random(tables, advected, n, dtype=dtype, seed=8)
    forcing = _random(tables, rows, n, dtype=dtype, seed=9) if with_forcing else None
    advection = _padded(batch, advected, n, dtype=dtype, seed=10)[:, :, :n].contiguous()
    for previous in (None, _random(batch, advected, n, dtype=dtype, seed=11)):
        expected = damping * w if forcing is None else torch.addcmul(forcing, damping, w)
        source = advection if previous is None else torch.add(advection, previous, alpha=-0.4)
        expected[:, :advected].addcmul_(factor, source)
        result = rk3_stage(w.clone(), damping, forcing, factor, advection, previous, -0.4)
        torch.testing.assert_close(result, expected)  # rounding: torch's kernels may contract or reorder


@needs_library
def test_bad_arguments_are_named():
    table = torch.ones(2, 4, dtype=torch.complex128)
    with pytest.raises(ValueError, match="first_rows: entries must lie in"):
        RowProducts(table, torch.tensor([0, 3]), 3)
    products = RowProducts(table, torch.tensor([0, 2]), 3)
    with pytest.raises(ValueError, match="src: expected a CPU torch.complex128 tensor of shape"):
        products(torch.empty(1, 2, 4, dtype=torch.complex128), torch.empty(1, 3, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="out: expected a CPU torch.complex128 tensor of shape .* contiguous layout"):
        products(torch.empty(1, 2, 6, dtype=torch.complex128)[..., :4], torch.empty(1, 3, 4, dtype=torch.complex128))
    with pytest.raises(ValueError, match="src: expected contiguous rows"):
        products(torch.empty(1, 2, 4, dtype=torch.complex128), torch.empty(1, 3, 6, dtype=torch.complex128)[..., :4])
    with pytest.raises(ValueError, match="second, second_rows: expected both or neither"):
        RowProducts(table, torch.tensor([0, 2]), 3, second_rows=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="columns: entries must lie in"):
        Transpose(torch.tensor([0, 5]), 1, 5)
    with pytest.raises(ValueError, match="grid: expected"):
        Transpose(torch.tensor([0, 4]), 1, 5).to_grid(torch.empty(1, 3, 4, dtype=torch.complex64),
                                                     torch.empty(1, 2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"z: expected a CPU torch.complex64 tensor of shape \(3, 2\) with a contiguous"):
        square_in_place(torch.empty(2, 3, dtype=torch.complex64).mT, False)
    w = torch.zeros(2, 3, 4, dtype=torch.complex128)
    with pytest.raises(ValueError, match="damping: expected"):
        rk3_stage(w, torch.zeros(2, 2, 4, dtype=torch.complex128), None, w[:, :2].clone(), w[:, :2], None, 0.0)
    with pytest.raises(ValueError, match="previous: expected"):
        rk3_stage(w, w.clone(), None, w[:, :2].clone(), w[:, :2], w[:1, :2], 0.0)


@needs_library
def test_calls_that_would_reach_memory_they_should_not_are_refused():
    c64 = torch.complex64
    products = RowProducts(torch.ones(2, 4, dtype=c64), torch.tensor([0, 2]), 3)
    memory = torch.randn(40, dtype=c64)
    src = memory[:24].view(2, 3, 4)
    with pytest.raises(ValueError, match="out: expected memory of its own"):
        products(memory[16:32].view(2, 2, 4), src)  # writes what it reads
    with pytest.raises(ValueError, match="out: expected a CPU"):
        products(torch.empty(1, 2, 4, dtype=c64).expand(2, 2, 4), src)  # one sample's memory for two
    with pytest.raises(ValueError, match="conjugated"):
        products(torch.empty(2, 2, 4, dtype=c64), src.conj())
    with pytest.raises(ValueError, match="src: its elements lie outside its storage"):
        products(torch.empty(2, 2, 4, dtype=c64), torch._efficientzerotensor((2, 3, 4), dtype=c64))
    shrunk = torch.zeros(2, 4, 3, dtype=c64)
    shrunk.untyped_storage().resize_(8)
    with pytest.raises(ValueError, match="grid: its elements lie outside its storage"):
        Transpose(torch.tensor([0, 1, 2]), 2, 3).to_grid(shrunk, torch.zeros(2, 3, 4, dtype=c64))
    w = torch.zeros(2, 3, 4, dtype=torch.complex128)
    with pytest.raises(ValueError, match="w: expected memory of its own"):
        rk3_stage(w, w, None, w[:1, :2].clone(), w[:, :2].clone(), None, 0.0)


def test_without_the_library_calls_say_so_and_solvers_use_torch(monkeypatch):
    monkeypatch.setenv("PROBNEURAL_NATIVE", "0")
    spectral_passes._library.cache_clear()
    try:
        assert not spectral_passes.available(torch.zeros(1, dtype=torch.complex64))
        with pytest.raises(RuntimeError, match="not loaded"):
            square_in_place(torch.zeros(1, 3, dtype=torch.complex64), False)
    finally:
        monkeypatch.delenv("PROBNEURAL_NATIVE")
        spectral_passes._library.cache_clear()


@needs_library
def test_a_library_built_from_other_sources_or_not_loadable_is_not_used(monkeypatch):
    # An editable install not rebuilt since its C sources changed: the digest compiled into the library differs.
    monkeypatch.setattr(spectral_passes, "source_digest", lambda: "0" * 64)
    spectral_passes._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="built from other sources"):
            assert not spectral_passes.available(torch.zeros(1, dtype=torch.complex64))
        monkeypatch.undo()

        def unloadable(path):
            raise OSError(f"{path}: wrong ELF class")

        monkeypatch.setattr(spectral_passes.ctypes, "CDLL", unloadable)
        spectral_passes._library.cache_clear()
        with pytest.warns(RuntimeWarning, match="cannot be used"):
            assert not spectral_passes.available(torch.zeros(1, dtype=torch.complex64))
    finally:
        monkeypatch.undo()
        spectral_passes._library.cache_clear()
    assert spectral_passes.available(torch.zeros(1, dtype=torch.complex64))
    assert spectral_passes._library().spectral_passes_source().decode() == spectral_passes.source_digest()
