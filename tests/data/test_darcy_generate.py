"""Darcy data generation: shapes, contrast, boundary, striding, batching invariance, registry and cache."""

import pytest
import torch

import probneural
from probneural.data import PROBLEMS, darcy, generate
from probneural.data.grf import grf_neumann

SMALL = {"n": 5, "resolution": 5, "solve_resolution": 17, "dtype": torch.float64, "progress": False, "seed": 3}


@pytest.fixture(scope="module")
def small():
    return darcy.generate(**SMALL)


def test_shapes_contrast_and_boundary(small):
    assert small.x.shape == small.y.shape == (5, 1, 5, 5)
    assert small.x.dtype == small.y.dtype == torch.float64
    assert set(small.x.unique().tolist()) == {3.0, 12.0}
    for edge in (small.y[..., 0, :], small.y[..., -1, :], small.y[..., :, 0], small.y[..., :, -1]):
        assert (edge == 0).all()
    assert (small.y[..., 1:-1, 1:-1] > 0).all()
    for nodes in small.grid:
        torch.testing.assert_close(
            nodes, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), rtol=0, atol=0
        )


def test_metadata_records_every_generation_parameter(small):
    meta = small.metadata
    assert meta["problem"] == "darcy" and meta["seed"] == 3 and meta["n"] == 5
    assert meta["resolution"] == 5 and meta["solve_resolution"] == 17
    assert meta["contrast"] == [12.0, 3.0] and meta["grf"]["alpha"] == 2.0 and meta["grf"]["tau"] == 3.0
    assert meta["solver"]["name"] == "pcg" and meta["solver"]["rtol"] == 1e-10
    assert meta["dtype"] == "float64" and meta["probneural_version"] == probneural.__version__


def test_output_is_the_strided_fine_solution(small):
    fine = darcy.generate(**{**SMALL, "resolution": 17})
    assert torch.equal(small.x, fine.x[..., ::4, ::4])
    assert torch.equal(small.y, fine.y[..., ::4, ::4])
    a = darcy.coefficient(grf_neumann(5, 17, seed=3))
    assert torch.equal(fine.x[:, 0], a)
    assert torch.equal(fine.y[:, 0], darcy.solve(a))


def test_independent_of_batch_size(small, device):
    for batch_size in (2, 5):
        other = darcy.generate(**{**SMALL, "batch_size": batch_size, "device": device})
        assert other.x.device.type == device.type
        torch.testing.assert_close(other.x.cpu(), small.x, rtol=0, atol=0)
        torch.testing.assert_close(other.y.cpu(), small.y, rtol=1e-12, atol=0)


def test_seed_changes_the_data(small):
    assert not torch.equal(darcy.generate(**{**SMALL, "seed": 4}).x, small.x)


def test_returned_dtype(small):
    single = darcy.generate(**{**SMALL, "dtype": torch.float32})
    assert single.x.dtype == single.y.dtype == single.grid[0].dtype == torch.float32
    assert torch.equal(single.y, small.y.float())


def test_custom_contrast():
    data = darcy.generate(**{**SMALL, "n": 2, "contrast": (5, 1)})
    assert set(data.x.unique().tolist()) == {1.0, 5.0}


def test_default_solve_resolution():
    assert darcy.default_solve_resolution(85) == 421
    assert darcy.default_solve_resolution(64) == 442
    assert darcy.default_solve_resolution(421) == 421
    assert darcy.default_solve_resolution(141) == 421


def test_incompatible_solve_resolution_names_valid_values():
    with pytest.raises(ValueError, match=r"solve_resolution=10 .*nearest valid: 9, 13"):
        darcy.generate(n=1, resolution=5, solve_resolution=10, progress=False)
    with pytest.raises(ValueError, match="solve_resolution must be an int >= 5"):
        darcy.generate(n=1, resolution=5, solve_resolution=3, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"resolution": 2}, "resolution"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"contrast": (12.0, -3.0)}, "contrast"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        darcy.generate(**{**SMALL, **kwargs})


def test_registry_dispatches_by_name(small):
    assert "darcy" in PROBLEMS
    assert torch.equal(generate("darcy", **SMALL).y, small.y)
    with pytest.raises(KeyError, match="darcy"):
        generate("darcey", **SMALL)


def test_cache_dir_round_trip_skips_the_solver(small, tmp_path, monkeypatch):
    first = darcy.generate(**SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("darcy-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("solver called despite a valid cache entry")

    monkeypatch.setattr(darcy, "solve", fail)
    second = darcy.generate(**SMALL, cache_dir=tmp_path)
    assert torch.equal(second.x, first.x) and torch.equal(second.y, first.y) and torch.equal(second.y, small.y)
    assert second.metadata == first.metadata
