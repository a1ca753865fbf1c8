"""The data_generation suite runs at smoke size and its reference agrees with our solvers."""

import pytest

from probneural.bench import SUITES
from probneural.bench.data_generation import data_generation


@pytest.mark.parametrize("precision, agreement", [("fp64", 1e-9), ("fp32", 1e-4)])
def test_smoke_size_cases_agree_with_the_references(precision, agreement):
    results = data_generation(
        n_samples=2, n_reference=1, darcy_resolution=9, darcy_solve_resolution=17, burgers_resolution=32,
        burgers_solve_resolution=64, navier_stokes_resolution=16, navier_stokes_steps=3,
        device="cpu", precision=precision, progress=False,
    )
    assert [case["problem"] for case, _ in results] == ["darcy", "burgers", "navier_stokes"]
    for case, metrics in results:
        assert metrics["max_relative_difference"] < agreement, (case, metrics)
        assert metrics["speedup"] > 0 and metrics["speedup_min"] <= metrics["speedup_max"]
    assert {"sample_steps_per_s", "reference_sample_steps_per_s"} <= set(results[2][1])
    burgers_case, burgers = results[1]  # ours on the whole grid too, timed in the same rounds
    assert burgers_case["viscosity"] == 0.1
    assert burgers["whole_grid_max_relative_difference"] < agreement and burgers["whole_grid_samples_per_s"] > 0
    # trimmed against whole grid over the whole batch: the same numbers to rounding
    assert burgers["whole_grid_max_relative_difference_to_ours"] < (1e-14 if precision == "fp64" else 1e-6)
    assert SUITES.get("data_generation") is data_generation


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        data_generation(precision="bf16", progress=False)
    with pytest.raises(ValueError, match=r"problems: unknown \['heat'\]"):
        data_generation(problems=["heat"], progress=False)
    with pytest.raises(ValueError, match="n_reference must be <= n_samples"):
        data_generation(n_samples=1, n_reference=2, progress=False)
    with pytest.raises(ValueError, match="repeats must be"):
        data_generation(repeats=0, progress=False)
    with pytest.raises(ValueError, match=r"darcy_resolution: expected n with \(darcy_solve_resolution - 1\) = 420"):
        data_generation(darcy_resolution=64, progress=False)
    with pytest.raises(ValueError, match="burgers_resolution: expected a divisor of burgers_solve_resolution = 8192"):
        data_generation(burgers_resolution=1000, progress=False)
    with pytest.raises(ValueError, match="burgers_viscosity must be"):
        data_generation(burgers_viscosity=0.0, progress=False)
    with pytest.raises(ValueError, match="darcy_resolution must be an int"):
        data_generation(darcy_resolution=85.0, progress=False)
    with pytest.raises(ValueError, match="repeats must be"):  # a bad Darcy grid does not matter without Darcy
        data_generation(problems=["burgers"], darcy_resolution=64, repeats=0, progress=False)
