"""The curvature_compare suite runs at smoke size and agrees with curvlinops."""

import pytest

pytest.importorskip("curvlinops", reason="comparison library; make test installs it with --no-deps (Makefile CURVATURE_COMPARE)")

from probneural.bench import SUITES  # noqa: E402
from probneural.bench.curvature_suite import curvature_compare  # noqa: E402

TINY = dict(
    resolution=8, batch_size=2, modes=2, width=4, n_layers=1, projection_channels=8, small_resolution=8,
    small_batch_size=2, small_modes=2, small_width=4, hutchinson_samples=3,
    reference_columns=64, warmup=0, repeats=1, device="cpu", progress=False,
)


@pytest.mark.parametrize("precision, agreement", [("fp64", 1e-12), ("fp32", 1e-5)])
def test_smoke_size_cases_agree_with_curvlinops(precision, agreement):
    results = curvature_compare(precision=precision, **TINY)
    assert [(case["comparison"], case["method"]) for case, _ in results] == [
        ("kfac", "mc"), ("kfac", "type2"), ("ggn_diagonal", "exact"), ("ggn_diagonal", "hutchinson")
    ]
    for case, metrics in results:
        assert metrics["twin_output_max_rel_diff"] < agreement, case
        assert metrics["max_rel_diff"] < agreement, (case, metrics)
        assert metrics["within_tolerance"]
        assert metrics["spectral_parameters"] > 0
    (_, mc), (_, type2), (_, exact), (_, hutchinson) = results
    for kfac in (mc, type2):  # each side against the float64 factors
        assert kfac["max_rel_error_ours"] < agreement and kfac["max_rel_error_theirs"] < agreement
    # K-FAC covers the pointwise layers on both sides; curvlinops refuses the spectral weights
    assert mc["ours_parameters_covered"] == mc["theirs_parameters_covered"] == mc["pointwise_parameters"]
    assert mc["theirs_with_spectral_weights"].startswith("NotImplementedError")
    # the unflattened type-2 call of curvlinops is wrong before the spectral layer, right after it
    assert type2["unflattened_B_max_rel_diff.lifting"] > 1e-2
    assert type2["unflattened_B_max_rel_diff.projection_out"] < agreement
    # the GGN diagonal covers every parameter, spectral weights included
    assert exact["ours_parameters_covered"] == exact["total_parameters"]
    assert exact["max_rel_diff_spectral"] < agreement
    assert hutchinson["ours_parameters_covered"] == hutchinson["total_parameters"]
    assert hutchinson["hutchinson_max_rel_diff"] < agreement
    assert SUITES.get("curvature_compare") is curvature_compare


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        curvature_compare(precision="bf16", progress=False)
    with pytest.raises(ValueError, match="cases: expected a non-empty list"):
        curvature_compare(cases=["kfac_reduce"], progress=False)
    with pytest.raises(ValueError, match="small_resolution: 6 is too coarse"):
        curvature_compare(small_resolution=6, progress=False)
    with pytest.raises(ValueError, match="hutchinson_samples must be an int >= 2"):
        curvature_compare(hutchinson_samples=1, progress=False)
