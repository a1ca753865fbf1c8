"""Benchmark suites at smoke size: they run, and run_suite writes one record per case."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from probneural.operators import count_parameters
from probneural.bench import SUITES, neuralop_fno, read_records, run_suite
from probneural.data.dataset import OperatorDataset
from probneural.train.trainer import Trainer, normalize

SMOKE = dict(device="cpu", warmup=1, repeats=1, matmul_size=128, progress=False)


def test_throughput_smoke_writes_records(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    paths = run_suite(
        "throughput", tmp_path, cpu_environment,
        resolutions=(16,), batch_sizes=(2,), modes=(4, 4), width=8, **SMOKE,
    )
    (record,) = read_records(paths)
    assert record["case"] == {"resolution": 16, "batch_size": 2, "modes": [4, 4], "width": 8, "n_layers": 4}
    metrics = record["metrics"]
    for key in ("train_step_ms", "inference_ms", "forward_gflop", "forward_gflops_per_s", "matmul_peak_gflops"):
        assert metrics[key] > 0, key
    assert metrics["train_step_samples_per_s"] == pytest.approx(2e3 / metrics["train_step_ms"])
    assert record["environment"] == cpu_environment


def test_compare_neuralop_smoke(tmp_path: Path, cpu_environment: dict[str, Any]) -> None:
    paths = run_suite(
        "compare_neuralop", tmp_path, cpu_environment,
        resolution=16, solve_resolution=31, modes=4, width=8, n_train=8, n_test=4, epochs=1, batch_size=4, **SMOKE,
    )
    theirs, ours = sorted(read_records(paths), key=lambda r: r["case"]["model"])
    assert (theirs["case"]["model"], ours["case"]["model"]) == ("neuraloperator", "probneural")
    for record in (theirs, ours):
        metrics = record["metrics"]
        assert 0 < metrics["test_rel_l2"] < 10 and metrics["parameters"] > 0
        assert metrics["train_step_ms"] > 0 and metrics["inference_ms"] > 0 and metrics["forward_gflop"] > 0
    assert ours["metrics"]["train_step_ratio_ours_theirs"] == pytest.approx(
        ours["metrics"]["train_step_ms"] / theirs["metrics"]["train_step_ms"]
    )
    for metric in ("train_step", "inference"):  # the two trained models' calls alternated round by round
        key = f"{metric}_ratio_ours_theirs_interleaved"
        assert 0 < ours["metrics"][f"{key}_min"] <= ours["metrics"][key] <= ours["metrics"][f"{key}_max"]


def test_neuralop_fno_keeps_the_same_fourier_block_and_trains_under_the_trainer() -> None:
    torch.manual_seed(0)
    model = neuralop_fno(modes=4, width=8, n_layers=1)
    weights = [p for p in model.parameters() if p.is_complex()]
    assert len(weights) == 1 and weights[0].shape == (8, 8, 8, 4)  # the 2m x m block of our modes=(4, 4)
    assert count_parameters(model) == sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    nodes = torch.linspace(0, 1, 16)
    data = OperatorDataset(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), (nodes, nodes))
    history = Trainer(epochs=1, batch_size=2, device="cpu", progress=False).fit(normalize(model, data), data)
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))
    assert weights[0].is_complex() and weights[0].imag.abs().sum() > 0


def test_real_parameter_count_counts_complex_as_two() -> None:
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    module.b = torch.nn.Parameter(torch.zeros(4))
    assert count_parameters(module) == 10


def test_run_suite_rejects_bad_names_arguments_and_environments(
    tmp_path: Path, cpu_environment: dict[str, Any]
) -> None:
    assert {"throughput", "compare_neuralop", "data_generation", "hessian"} <= set(SUITES.names())
    with pytest.raises(KeyError, match=", ".join(sorted(SUITES.names()))):
        run_suite("thruput", tmp_path, cpu_environment)
    with pytest.raises(ValueError, match="unknown arguments.*'resolution'"):
        run_suite("throughput", tmp_path, cpu_environment, resolution=16)
    bf16 = copy.deepcopy(cpu_environment)
    bf16["precision"]["name"] = "bf16"
    with pytest.raises(ValueError, match="environment: records precision='bf16'"):
        run_suite("throughput", tmp_path, bf16, device="cpu")
    with pytest.raises(ValueError, match="too coarse"):
        run_suite("throughput", tmp_path, cpu_environment, resolutions=(16,), modes=(12, 12), device="cpu")
    assert not list(tmp_path.iterdir())
