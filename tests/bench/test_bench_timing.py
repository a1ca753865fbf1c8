"""measure, matmul_peak_gflops and fno_forward_flops (FFT flops exact for known transforms)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probneural.bench import fno_forward_flops, matmul_peak_gflops, measure
from probneural.bench.timing import interleaved_times
from probneural.operators import FNO


class _Apply(nn.Module):
    """A module calling ``fn`` on its input, to count the flops of single torch calls."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_measure_returns_sane_statistics() -> None:
    a = torch.randn(256, 256)
    calls = []

    def work() -> None:
        calls.append(1)
        torch.mm(a, a)

    timing = measure(work, device="cpu", warmup=1, repeats=3)
    assert len(calls) == 5  # warm-up, timed calls, and one untimed call for the memory peak
    assert len(timing["times_s"]) == 3
    assert 0 < timing["min_s"] <= timing["median_s"] < 10
    assert timing["iqr_s"] >= 0
    assert timing["memory_source"] in ("cpu_rss_increase_approx", "unavailable")


def test_measure_sees_a_large_allocation() -> None:
    timing = measure(lambda: torch.ones(16 * 2**20).add_(1.0), device="cpu", warmup=0, repeats=2)  # 64 MiB
    if timing["memory_source"] == "unavailable":
        pytest.skip("no /proc/self/statm on this platform")
    assert timing["peak_memory_bytes"] > 32 * 2**20


@pytest.mark.parametrize("bad", [{"warmup": -1}, {"repeats": 0}, {"repeats": 1.5}])
def test_measure_rejects_bad_counts(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        measure(lambda: None, device="cpu", **bad)


def test_interleaved_times_alternate_two_calls_and_time_each(monkeypatch) -> None:
    clock, calls = [0.0], []
    monkeypatch.setattr("probneural.bench.timing.time.perf_counter", lambda: clock[0])

    def call(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            clock[0] += seconds
        return run

    times = interleaved_times({"ours": call("ours", 1.0), "theirs": call("theirs", 3.0)}, device="cpu", rounds=4,
                              warmup=1)
    # one untimed round, then each goes first in turn
    assert calls == ["ours", "theirs"] + ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert times == {"ours": [1.0] * 4, "theirs": [3.0] * 4}
    with pytest.raises(ValueError, match="rounds"):
        interleaved_times({"ours": call("ours", 1.0)}, device="cpu", rounds=0)
    with pytest.raises(ValueError, match="warmup"):
        interleaved_times({"ours": call("ours", 1.0)}, device="cpu", rounds=1, warmup=-1)


def test_ratio_metrics_are_the_median_and_extremes_of_per_round_ratios() -> None:
    from probneural.bench.suites import ratio_metrics

    assert ratio_metrics("r", [1.0, 2.0, 6.0], [2.0, 2.0, 3.0]) == {"r": 1.0, "r_min": 0.5, "r_max": 2.0}
    with pytest.raises(ValueError):
        ratio_metrics("r", [1.0, 2.0], [1.0])  # rounds of both calls or none


def test_matmul_peak_is_positive() -> None:
    assert matmul_peak_gflops("cpu", torch.float32, size=128) > 0
    with pytest.raises(ValueError, match="dtype"):
        matmul_peak_gflops("cpu", torch.int32, size=16)


def test_rfft_flops_are_exact() -> None:
    x = torch.randn(4, 3, 16)  # 12 real signals of 16 points: 12 * 2.5 * 16 * log2(16)
    assert fno_forward_flops(_Apply(torch.fft.rfft), x) == 12 * 2.5 * 16 * 4


def test_complex_fft_and_inverse_real_fft_flops_are_exact() -> None:
    x = torch.randn(2, 8, 32).to(torch.complex64)  # 16 complex signals of 32 points
    assert fno_forward_flops(_Apply(lambda z: torch.fft.fft(z, dim=-1)), x) == 16 * 5 * 32 * 5
    half = torch.randn(2, 8, 17, dtype=torch.complex64)  # irfft to 32 real points
    assert fno_forward_flops(_Apply(lambda z: torch.fft.irfft(z, n=32)), half) == 16 * 2.5 * 32 * 5


def test_multidimensional_rfft_counts_all_transformed_points() -> None:
    x = torch.randn(2, 3, 8, 16)  # 6 signals of 8 * 16 = 128 points
    assert fno_forward_flops(_Apply(torch.fft.rfft2), x) == round(6 * 2.5 * 128 * math.log2(128))


def test_matmul_flops_come_from_the_flop_counter() -> None:
    w = torch.randn(5, 7)
    assert fno_forward_flops(_Apply(lambda x: x @ w), torch.randn(3, 5)) == 2 * 3 * 5 * 7
    wc = torch.randn(5, 7, dtype=torch.complex64)
    x = torch.randn(3, 5, dtype=torch.complex64)
    assert fno_forward_flops(_Apply(lambda z: z @ wc), x) == 8 * 3 * 5 * 7  # complex multiply-add = 8 flops


def test_fft_and_matmul_flops_add_up() -> None:
    w = torch.randn(9, 9, dtype=torch.complex64)

    def spectral(x: torch.Tensor) -> torch.Tensor:  # a one-axis spectral layer: rfft, mix modes, irfft
        return torch.fft.irfft(torch.fft.rfft(x) @ w, n=16)

    x = torch.randn(6, 16)
    ffts = 2 * 6 * 2.5 * 16 * 4
    mixing = 8 * 6 * 9 * 9
    assert fno_forward_flops(_Apply(spectral), x) == ffts + mixing


def test_fno_flops_count_every_matmul_of_the_dft_form() -> None:
    # 1 layer, 8 channels, modes (4, 4) on 16 x 16, batch 2: count the GEMMs by hand
    model = FNO(1, 1, (4, 4), width=8, n_layers=1, projection_channels=16, positional_grid=None)
    b, c, n, m = 2, 8, 16, 4
    pointwise = 2 * b * n * n * (1 * c + c * c + c * 16 + 16 * 1)  # lifting, skip, projection
    last_axis = 2 * (2 * b * c * n * n * (2 * m))  # forward and inverse truncated real DFTs
    first_axis = 2 * (2 * b * c * (4 * m) * n * (2 * m))  # forward and inverse complex DFTs, [Re; Im] stacked
    contraction = 2 * (2 * m * m) * (2 * b) * c * (2 * c)
    assert fno_forward_flops(model, torch.randn(b, 1, n, n)) == pointwise + last_axis + first_axis + contraction
