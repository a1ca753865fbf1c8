"""OperatorDataset: validation at construction, indexing, splitting, moving."""

import pytest
import torch

from probneural.data import OperatorDataset
from probneural.data import dataset as dataset_module


def _dataset(n=6, spatial=(4, 5), c_in=2, c_out=1, **kwargs):
    x = torch.randn(n, c_in, *spatial, dtype=torch.float64)
    y = torch.randn(n, c_out, *spatial, dtype=torch.float64)
    grid = tuple(torch.linspace(0, 1, size, dtype=torch.float64) for size in spatial)
    return OperatorDataset(x, y, grid, {"problem": "toy", "seed": 1, **kwargs})


def test_length_items_and_shape():
    data = _dataset()
    assert len(data) == 6 and data.spatial_shape == (4, 5)
    x0, y0 = data[0]
    assert x0.shape == (2, 4, 5) and y0.shape == (1, 4, 5)
    assert torch.equal(x0, data.x[0])
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 2, 4, 5) and yb.shape == (4, 1, 4, 5)


def test_split_keeps_order_and_records_the_range():
    data = _dataset()
    train, test = data.split(4)
    assert len(train) == 4 and len(test) == 2
    assert torch.equal(train.x, data.x[:4]) and torch.equal(test.y, data.y[4:])
    assert train.metadata["subset"] == [0, 4] and test.metadata["subset"] == [4, 6]
    assert test.split(1)[1].metadata["subset"] == [5, 6]
    assert "subset" not in data.metadata
    with pytest.raises(ValueError, match="n_first"):
        data.split(6)


def test_to_changes_dtype_and_keeps_metadata(device):
    data = _dataset().to(device=device, dtype=torch.float32)
    assert data.x.dtype == data.y.dtype == data.grid[0].dtype == torch.float32
    assert data.x.device.type == device.type and data.grid[1].device.type == device.type
    assert data.metadata["problem"] == "toy"


def test_metadata_is_copied():
    meta = {"problem": "toy", "nested": {"a": 1}}
    data = OperatorDataset(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), (torch.zeros(3),), meta)
    meta["nested"]["a"] = 2
    assert data.metadata["nested"]["a"] == 1


@pytest.mark.parametrize(
    ("x", "y", "grid", "pattern"),
    [
        (torch.full((2, 1, 3), float("nan")), torch.zeros(2, 1, 3), (torch.zeros(3),), "x contains NaN"),
        (torch.zeros(2, 1, 3), torch.full((2, 1, 3), float("inf")), (torch.zeros(3),), "y contains NaN or Inf"),
        (torch.zeros(2, 3), torch.zeros(2, 3), (torch.zeros(3),), r"x must have shape \(n, channels, \*spatial\)"),
        (torch.zeros(2, 1, 3), torch.zeros(3, 1, 3), (torch.zeros(3),), "y must have shape"),
        (torch.zeros(2, 1, 3), torch.zeros(2, 1, 4), (torch.zeros(3),), "y must have shape"),
        (
            torch.zeros(2, 1, 3),
            torch.zeros(2, 1, 3, dtype=torch.float64),
            (torch.zeros(3),),
            "y must be on x's device and dtype",
        ),
        (
            torch.zeros(2, 1, 3, dtype=torch.int64),
            torch.zeros(2, 1, 3),
            (torch.zeros(3),),
            "x must be a floating tensor",
        ),
        (torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), (torch.zeros(4),), "grid must be 1 1-D tensors"),
        (torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), (torch.zeros(3), torch.zeros(3)), "grid must be"),
        (torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), (torch.tensor([0.0, float("nan"), 1.0]),), "grid contains NaN"),
        (torch.zeros(2, 1, 0), torch.zeros(2, 1, 0), (torch.zeros(0),),
         "x must have at least one channel and one point"),
        (torch.zeros(2, 0, 3), torch.zeros(2, 1, 3), (torch.zeros(3),), "x must have at least one channel"),
    ],
)
def test_invalid_construction_names_the_argument(x, y, grid, pattern):
    with pytest.raises(ValueError, match=pattern):
        OperatorDataset(x, y, grid)


def test_metadata_must_be_json():
    with pytest.raises(ValueError, match="metadata must be a JSON-serialisable dict"):
        OperatorDataset(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), (torch.zeros(3),), {"dtype": torch.float32})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 3, 4])
def test_non_finite_values_are_found_in_any_chunk_of_the_check(monkeypatch, bad, where):
    monkeypatch.setattr(dataset_module, "_FINITE_CHECK_ELEMENTS", 8)  # two samples of 4 values per chunk
    x, y = torch.randn(5, 1, 4), torch.randn(5, 1, 4)
    OperatorDataset(x, y, (torch.arange(4.0),))
    x[where, 0, 3] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        OperatorDataset(x, y, (torch.arange(4.0),))
