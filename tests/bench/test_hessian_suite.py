"""The hessian benchmark suite at smoke size: it runs, its metrics are consistent, bad arguments fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from probneural.bench.hessian_suite import _interleaved_ratios, hessian_products
from probneural.bench.records import read_records, write_record
from probneural.bench.suites import SUITES

PRODUCTS = ("grad", "hvp", "double_backward", "ggn_vp")


def test_hessian_suite_smoke(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    assert SUITES.get("hessian") is hessian_products
    ((case, metrics),) = hessian_products(
        resolutions=(16,), batch_sizes=(2,), modes=(4, 4), width=8, n_layers=4,
        device="cpu", precision="fp32", warmup=0, repeats=1, seed=0, progress=False,
    )
    assert case == {"resolution": 16, "batch_size": 2, "modes": [4, 4], "width": 8, "n_layers": 4}
    for product in PRODUCTS:
        assert metrics[f"{product}_ms"] > 0 and metrics[f"{product}_min_ms"] > 0, product
        assert f"{product}_peak_memory_bytes" in metrics
    assert metrics["hvp_over_grad"] == pytest.approx(metrics["hvp_ms"] / metrics["grad_ms"])
    assert metrics["hvp_over_double_backward"] == pytest.approx(metrics["hvp_ms"] / metrics["double_backward_ms"])
    assert metrics["ggn_vp_over_grad"] == pytest.approx(metrics["ggn_vp_ms"] / metrics["grad_ms"])
    assert metrics["hvp_double_backward_rel_diff"] < 1e-4  # float32: the two products agree up to round-off
    assert metrics["parameters"] > 0
    for name in ("grad", "double_backward"):  # one round: its ratio is the median and both extremes
        key = f"hvp_over_{name}_interleaved"
        assert metrics[f"{key}_min"] == metrics[key] == metrics[f"{key}_max"] > 0
    (record,) = read_records([write_record(tmp_path, "hessian", case, metrics, cpu_environment)])
    assert record["metrics"] == metrics


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resolutions": (16,), "modes": (12, 12)}, "too coarse"),
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"width": 0}, "width"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_hessian_suite_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        hessian_products(device="cpu", progress=False, **kwargs)


def test_interleaved_rounds_cycle_through_every_order_and_report_the_extremes(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("probneural.bench.timing.time.perf_counter", lambda: clock[0])
    calls: list[str] = []
    durations = {"grad": [1.0, 2.0, 1.0, 1, 1, 1], "hvp": [2.0, 2.0, 6.0, 2, 2, 2],
                 "double_backward": [4.0, 2.0, 3.0, 4, 4, 4]}

    def product(name: str):
        def run() -> None:
            calls.append(name)
            clock[0] += durations[name][calls.count(name) - 1]
        return run

    metrics = _interleaved_ratios({name: product(name) for name in durations}, torch.device("cpu"), 6)
    rounds = [tuple(calls[i:i + 3]) for i in range(0, 18, 3)]
    assert len(set(rounds)) == 6  # every order once: each product after each other one
    assert rounds[0] == ("grad", "hvp", "double_backward")
    # per round, hvp / double_backward: 0.5, 1, 2, 0.5, 0.5, 0.5; hvp / grad: 2, 1, 6, 2, 2, 2
    assert (metrics["hvp_over_double_backward_interleaved_min"], metrics["hvp_over_double_backward_interleaved"],
            metrics["hvp_over_double_backward_interleaved_max"]) == (0.5, 0.5, 2.0)
    assert (metrics["hvp_over_grad_interleaved_min"], metrics["hvp_over_grad_interleaved"],
            metrics["hvp_over_grad_interleaved_max"]) == (1.0, 2.0, 6.0)
