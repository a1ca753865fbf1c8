"""Readers of external data: PDEBench HDF5 layouts and neuraloperator Darcy ``.pt`` files round-trip exactly."""

import fractions
import os
import json
import sys

import numpy as np
import pytest
import torch

from probneural.data.readers import read_neuralop_darcy, read_pdebench

try:
    import h5py
except ImportError:  # the neuraloperator tests below still run
    h5py = None

needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py is not installed (pip install probneural[formats])")


def _values(*shape, offset=0.0):
    """Distinct, exactly representable float32 values of the given shape."""
    count = int(np.prod(shape))
    return ((np.arange(count, dtype=np.float32) + offset) / 8.0).reshape(shape)


def _centres(size, low=0.0, high=1.0):
    edges = np.linspace(low, high, size + 1)
    return (edges[:-1] + 0.5 * (high - low) / size).astype(np.float32)


def _write_tensor(path, n=5, t=6, x=8):
    """1-D Burgers/advection layout; ``t-coordinate`` has one entry more than the snapshots, as PDEBench writes it."""
    tensor = _values(n, t, x)
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=tensor)
        f.create_dataset("x-coordinate", data=_centres(x))
        f.create_dataset("t-coordinate", data=np.arange(t + 1, dtype=np.float32) * 0.25)
        f.attrs["Nu"] = 0.1
    return tensor


def _write_darcy(path, n=4, x=6, y=5):
    nu, u = _values(n, x, y), _values(n, 1, x, y, offset=1000.0)
    with h5py.File(path, "w") as f:
        f.create_dataset("nu", data=nu)
        f.create_dataset("tensor", data=u)
        f.create_dataset("x-coordinate", data=_centres(x))
        f.create_dataset("y-coordinate", data=_centres(y, -1.0, 1.0))
        f.attrs["beta"] = 1.0
    return nu, u


def _write_cfd(path, n=3, t=4, x=6, y=5):
    names = ["density", "pressure", "Vx", "Vy"]
    fields = {name: _values(n, t, x, y, offset=1000.0 * i) for i, name in enumerate(names)}
    with h5py.File(path, "w") as f:
        for name, value in fields.items():
            f.create_dataset(name, data=value)
        f.create_dataset("x-coordinate", data=_centres(x))
        f.create_dataset("y-coordinate", data=_centres(y))
        f.create_dataset("t-coordinate", data=np.arange(t + 1, dtype=np.float32) * 0.05)
        f.attrs.update({"eta": 0.01, "zeta": 0.01, "M": 0.1})
    return fields


def _write_groups(path, n=3, t=5, x=6, y=4, c=2):
    """2-D diffusion-reaction / shallow-water layout: one group per sample, ``data`` `(T, X, Y, C)`."""
    data = [_values(t, x, y, c, offset=1000.0 * i) for i in range(n)]
    with h5py.File(path, "w") as f:
        for i, sample in enumerate(data):
            seed = str(i).zfill(4)
            f.create_dataset(f"{seed}/data", data=sample, compression="lzf")
            f.create_dataset(f"{seed}/grid/x", data=_centres(x, -1.0, 1.0))
            f.create_dataset(f"{seed}/grid/y", data=_centres(y, -1.0, 1.0))
            f.create_dataset(f"{seed}/grid/t", data=np.linspace(0.0, 5.0, t, dtype=np.float32))
    return np.stack(data)


def _exact(tensor, array):
    assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(array)).to(tensor.dtype))


# ------------------------------------------------------------------------------------------ PDEBench


@needs_h5py
def test_tensor_layout_pairs_first_and_last_snapshot_by_default(tmp_path):
    path = tmp_path / "1D_Burgers_Sols_Nu0.1.hdf5"
    tensor = _write_tensor(path)
    data = read_pdebench(path)
    assert data.x.dtype == torch.float32 and data.x.device.type == "cpu"
    assert data.x.shape == (5, 1, 8) and data.y.shape == (5, 1, 8)
    _exact(data.x, tensor[:, :1])
    _exact(data.y, tensor[:, -1:])
    _exact(data.grid[0], _centres(8))
    meta = data.metadata
    assert meta["problem"] == "pdebench" and meta["layout"] == "tensor"
    assert meta["source_file"] == path.name and meta["source_size"] == path.stat().st_size and "source_mtime" in meta
    assert meta["input_steps"] == [0] and meta["output_steps"] == [5] and meta["n_times"] == 6
    assert meta["input_times"] == [0.0] and meta["output_times"] == [1.25]
    assert meta["attrs"] == {"Nu": 0.1} and meta["n"] == meta["n_available"] == 5
    json.dumps(meta, allow_nan=False)


@needs_h5py
def test_tensor_layout_first_k_to_next_m_on_a_subset_with_stride(tmp_path):
    path = tmp_path / "1D_Advection_Sols_beta0.4.hdf5"
    tensor = _write_tensor(path)
    data = read_pdebench(path, input_steps=slice(0, 3), output_steps=[3, -2], n=2, stride=3, dtype=torch.float64)
    assert data.x.dtype == torch.float64 and data.x.shape == (2, 3, 3) and data.y.shape == (2, 2, 3)
    _exact(data.x, tensor[:2, 0:3, ::3])
    _exact(data.y, tensor[:2, 3:5, ::3])
    _exact(data.grid[0], _centres(8)[::3])
    assert data.metadata["input_steps"] == [0, 1, 2] and data.metadata["output_steps"] == [3, 4]
    assert data.metadata["n"] == 2 and data.metadata["stride"] == [3]
    with h5py.File(path, "a") as f:  # NaN outside the selection is never read (OperatorDataset would refuse it)
        f["tensor"][2:] = np.nan
        f["tensor"][:, 5] = np.nan
        f["tensor"][:, :, 1] = np.nan
    assert torch.equal(read_pdebench(path, output_steps=4, n=2, stride=3).y, data.y[:, 1:].float())
    with pytest.raises(ValueError, match="NaN"):
        read_pdebench(path, n=3)


@needs_h5py
def test_darcy_layout_pairs_coefficient_and_solution(tmp_path):
    path = tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5"
    nu, u = _write_darcy(path)
    data = read_pdebench(path, dtype=torch.float64)
    assert data.x.shape == (4, 1, 6, 5) and data.y.shape == (4, 1, 6, 5)
    _exact(data.x, nu[:, None])
    _exact(data.y, u)
    _exact(data.grid[0], _centres(6))
    _exact(data.grid[1], _centres(5, -1.0, 1.0))
    assert data.metadata["layout"] == "darcy" and data.metadata["attrs"] == {"beta": 1.0}

    part = read_pdebench(path, n=3, stride=(2, 1))
    assert part.x.dtype == torch.float32 and part.x.shape == (3, 1, 3, 5)
    _exact(part.x, nu[:3, None, ::2])
    _exact(part.y, u[:3, :, ::2])
    _exact(part.grid[0], _centres(6)[::2])
    with pytest.raises(ValueError, match="input_steps must be None .* no time axis"):
        read_pdebench(path, input_steps=0)


@needs_h5py
def test_cfd_layout_stacks_fields_time_major(tmp_path):
    path = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_Train.hdf5"
    fields = _write_cfd(path)
    data = read_pdebench(
        path, input_steps=[0, 1], output_steps=-1, channels=["density", 3], stride=2, dtype=torch.float64
    )
    density, vy = fields["density"][:, :, ::2, ::2], fields["Vy"][:, :, ::2, ::2]
    expected_x = np.stack([density[:, 0], vy[:, 0], density[:, 1], vy[:, 1]], axis=1)
    _exact(data.x, expected_x)
    _exact(data.y, np.stack([density[:, -1], vy[:, -1]], axis=1))
    assert data.metadata["channels"] == ["density", "Vy"] and data.metadata["layout"] == "cfd"
    assert data.metadata["output_times"] == [pytest.approx(0.15)]
    assert read_pdebench(path).x.shape == (3, 4, 6, 5)  # density, pressure, Vx, Vy at t = 0


@needs_h5py
def test_group_layout_per_sample_groups(tmp_path):
    path = tmp_path / "2D_diff-react_NA_NA.h5"
    data_all = _write_groups(path)  # (N, T, X, Y, C)
    data = read_pdebench(
        path, input_steps=slice(0, 2), output_steps=[-1], channels=[1], n=2, stride=(1, 2), dtype=torch.float64
    )
    channel_first = np.moveaxis(data_all, -1, 2)[:2, :, 1:2, :, ::2]  # (n, T, 1, X, Y/2)
    _exact(data.x, channel_first[:, 0:2].reshape(2, 2, 6, 2))
    _exact(data.y, channel_first[:, -1])
    _exact(data.grid[1], _centres(4, -1.0, 1.0)[::2])
    assert data.metadata["layout"] == "groups" and data.metadata["n_available"] == 3
    assert data.metadata["input_times"] == [0.0, 1.25] and data.metadata["output_times"] == [5.0]
    both = read_pdebench(path)
    _exact(both.x, np.moveaxis(data_all[:, 0], -1, 1))
    _exact(both.y, np.moveaxis(data_all[:, -1], -1, 1))


@needs_h5py
def test_group_layout_in_one_dimension(tmp_path):
    path = tmp_path / "1D_diff-sorp_NA_NA.h5"
    data = _values(2, 7, 9, 1)  # (N, T, X, C)
    with h5py.File(path, "w") as f:
        for i in range(2):
            f.create_dataset(f"{i:04d}/data", data=data[i])
            f.create_dataset(f"{i:04d}/grid/x", data=_centres(9))
            f.create_dataset(f"{i:04d}/grid/t", data=np.arange(7, dtype=np.float32))
    read = read_pdebench(path, input_steps=[0, 1, 2], output_steps=slice(3, None), stride=2, dtype=torch.float64)
    assert read.x.shape == (2, 3, 5) and read.y.shape == (2, 4, 5)
    _exact(read.x, data[:, 0:3, ::2, 0])
    _exact(read.y, data[:, 3:, ::2, 0])
    assert read.metadata["output_times"] == [3.0, 4.0, 5.0, 6.0]


@needs_h5py
def test_group_layout_refuses_samples_on_different_grids(tmp_path):
    path = tmp_path / "2D_rdb_NA_NA.h5"
    _write_groups(path)
    with h5py.File(path, "a") as f:
        f["0002/grid/x"][0] = -5.0
    assert len(read_pdebench(path, n=2)) == 2
    with pytest.raises(ValueError, match=r"0002/grid/x differs .* one grid"):
        read_pdebench(path)
    with h5py.File(path, "a") as f:
        del f["0001/data"]
        f.create_dataset("0001/data", data=np.zeros((5, 6, 3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"0001/data must have the shape \(5, 6, 4, 2\)"):
        read_pdebench(path)


@needs_h5py
def test_pdebench_wrong_layout_and_missing_keys(tmp_path):
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("u", data=np.zeros((2, 3, 4), dtype=np.float32))
    message = r"wrong.h5 is not in a PDEBench layout: found top-level keys \['u'\]; expected 'tensor'"
    with pytest.raises(ValueError, match=message):
        read_pdebench(wrong)

    missing = tmp_path / "1D_Burgers_missing.hdf5"
    _write_tensor(missing)
    with h5py.File(missing, "a") as f:
        del f["x-coordinate"]
    with pytest.raises(ValueError, match=r"1D_Burgers_missing.hdf5: expected data set '/x-coordinate' of shape \(8,\)"):
        read_pdebench(missing)

    darcy = tmp_path / "2D_DarcyFlow_bad.hdf5"
    _write_darcy(darcy)
    with h5py.File(darcy, "a") as f:
        del f["tensor"]
        f.create_dataset("tensor", data=np.zeros((4, 2, 6, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"/tensor must have shape \(4, 1, 6, 5\) to match /nu"):
        read_pdebench(darcy)

    cfd = tmp_path / "1D_CFD_bad.hdf5"
    with h5py.File(cfd, "w") as f:
        f.create_dataset("density", data=np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"missing \['pressure', 'Vx'\]"):
        read_pdebench(cfd)

    times = tmp_path / "1D_bad_times.hdf5"
    _write_tensor(times)
    with h5py.File(times, "a") as f:
        del f["t-coordinate"]
        f.create_dataset("t-coordinate", data=np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"t-coordinate must have shape \(6,\) or \(7,\)"):
        read_pdebench(times)

    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not an HDF5 file")
    with pytest.raises(ValueError, match="notes.h5 is not a readable HDF5 file"):
        read_pdebench(not_hdf5)
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        read_pdebench(tmp_path / "absent.h5")


@needs_h5py
def test_pdebench_argument_errors_name_the_argument(tmp_path):
    path = tmp_path / "1D_Burgers.hdf5"
    _write_tensor(path)
    with pytest.raises(ValueError, match=r"input_steps must index the 6 snapshots .* got \[6\]"):
        read_pdebench(path, input_steps=[0, 6])
    with pytest.raises(ValueError, match="output_steps must select at least one"):
        read_pdebench(path, output_steps=slice(4, 2))
    with pytest.raises(ValueError, match="input_steps must be an int, a slice or a sequence of ints"):
        read_pdebench(path, input_steps=0.5)
    with pytest.raises(ValueError, match="n must be <= the 5 samples"):
        read_pdebench(path, n=6)
    with pytest.raises(ValueError, match="stride must be an int >= 1 or a sequence of 1 such ints"):
        read_pdebench(path, stride=(2, 2))
    with pytest.raises(ValueError, match="channels must hold indices in"):
        read_pdebench(path, channels=[1])
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        read_pdebench(path, dtype=torch.int32)


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install probneural\[formats\]"):
        read_pdebench(tmp_path / "any.h5")


# ------------------------------------------------------------------------------------- neuraloperator


def _darcy_pt(n=4, s=8, channels=False):
    x = torch.sin(torch.arange(n * s * s, dtype=torch.float64)).reshape(n, s, s)
    y = torch.cos(torch.arange(n * s * s, dtype=torch.float32)).reshape(n, s, s)
    return (x[:, None], y[:, None]) if channels else (x, y)


def test_neuralop_darcy_round_trip(tmp_path):
    x, y = _darcy_pt()
    path = tmp_path / "darcy_train_16.pt"
    torch.save({"x": x, "y": y}, path)
    data = read_neuralop_darcy(path)
    assert data.x.dtype == torch.float32 and data.x.shape == (4, 1, 8, 8) and data.y.shape == (4, 1, 8, 8)
    assert torch.equal(data.x, x.float()[:, None]) and torch.equal(data.y, y[:, None])
    assert torch.equal(data.grid[0], torch.arange(8, dtype=torch.float32) / 8)
    meta = data.metadata
    assert meta["problem"] == "neuralop_darcy" and meta["source_file"] == "darcy_train_16.pt"
    assert meta["grid"] == "neuralop"
    assert meta["channels_in_file"] is False and meta["n_available"] == 4

    part = read_neuralop_darcy(path, n=3, stride=(2, 4), grid="nodes", dtype=torch.float64)
    assert torch.equal(part.x, x[:3, None, ::2, ::4]) and torch.equal(part.y, y[:3, None, ::2, ::4].double())
    assert torch.equal(part.grid[0], torch.linspace(0, 1, 8, dtype=torch.float64)[::2])
    assert torch.equal(part.grid[1], torch.linspace(0, 1, 8, dtype=torch.float64)[::4])

    xc, yc = _darcy_pt(channels=True)
    legacy = tmp_path / "darcy_legacy.pt"  # pre-zip serialisation: read without memory mapping
    torch.save({"x": xc, "y": yc, "info": torch.tensor(1)}, legacy, _use_new_zipfile_serialization=False)
    old = read_neuralop_darcy(legacy, dtype=torch.float64)
    assert torch.equal(old.x, xc) and old.metadata["channels_in_file"] is True


def test_neuralop_darcy_refuses_other_layouts(tmp_path):
    x, y = _darcy_pt()
    missing = tmp_path / "no_y.pt"
    torch.save({"x": x, "a": y}, missing)
    message = (
        r"no_y.pt: expected key 'y' holding a tensor of shape \(N, s1, s2\) or \(N, C, s1, s2\), "
        r"found keys \['a', 'x'\]"
    )
    with pytest.raises(ValueError, match=message):
        read_neuralop_darcy(missing)
    shapes = tmp_path / "shapes.pt"
    torch.save({"x": x, "y": y[:, :4]}, shapes)
    with pytest.raises(ValueError, match="'y' must have the sample count and spatial shape of 'x'"):
        read_neuralop_darcy(shapes)
    flat = tmp_path / "flat.pt"
    torch.save({"x": x.flatten(1), "y": y}, flat)
    with pytest.raises(ValueError, match=r"'x' must be a real tensor of shape .* got torch.float64 \(4, 64\)"):
        read_neuralop_darcy(flat)
    bare = tmp_path / "bare.pt"
    torch.save(x, bare)
    with pytest.raises(ValueError, match="bare.pt must hold a dict with keys 'x' and 'y', got Tensor"):
        read_neuralop_darcy(bare)
    with pytest.raises(ValueError, match="grid must be one of"):
        read_neuralop_darcy(bare, grid="cells")


def test_neuralop_darcy_never_unpickles_objects(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"x": fractions.Fraction(1, 2), "y": torch.zeros(1, 2, 2)}, pickled)
    message = r"pickled.pt could not be loaded .*weights_only=True\): Unsupported global: GLOBAL fractions.Fraction"
    with pytest.raises(ValueError, match=message):
        read_neuralop_darcy(pickled)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="garbage.pt could not be loaded as a dict of tensors"):
        read_neuralop_darcy(garbage)
    with pytest.raises(FileNotFoundError, match="path must name an existing file"):
        read_neuralop_darcy(tmp_path / "absent.pt")
    system = tmp_path / "system.pt"
    torch.save({"x": _Reducer(), "y": torch.zeros(1, 2, 2)}, system)  # os.system on unpickling: never run
    message = r"system.pt could not .* unsupported GLOBAL posix.system\. ProbNeural"
    with pytest.raises(ValueError, match=message) as error:
        read_neuralop_darcy(system)
    assert "weights_only` set to `False`" not in str(error.value)
    whole = tmp_path / "whole.pt"
    torch.save({"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, 4, 4)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:-100])  # an interrupted download
    with pytest.raises(ValueError, match="cut.pt could not be loaded as a dict of tensors"):
        read_neuralop_darcy(cut)


class _Reducer:
    def __reduce__(self):
        return os.system, ("true",)


def test_neuralop_darcy_agrees_with_neuraloperator(tmp_path):
    darcy = pytest.importorskip("neuralop.data.datasets.darcy", reason="the compare extra (neuraloperator 2.0.0); make test installs it")
    embeddings = pytest.importorskip("neuralop.layers.embeddings", reason="the compare extra (neuraloperator 2.0.0)")
    s = 16  # DarcyDataset accepts only the published resolutions 16, 32, 64, 128, 421
    train, test = _darcy_pt(n=5, s=s), _darcy_pt(n=3, s=s)
    torch.save({"x": train[0].float(), "y": train[1]}, tmp_path / f"darcy_train_{s}.pt")
    torch.save({"x": test[0].float(), "y": test[1]}, tmp_path / f"darcy_test_{s}.pt")
    theirs = darcy.DarcyDataset(
        root_dir=tmp_path, n_train=4, n_tests=[2], batch_size=2, test_batch_sizes=[2], train_resolution=s,
        test_resolutions=[s], encode_input=False, encode_output=False, download=False,
    )
    ours = read_neuralop_darcy(tmp_path / f"darcy_train_{s}.pt", n=4)
    assert torch.equal(ours.x, theirs.train_db.x) and torch.equal(ours.y, theirs.train_db.y)
    ours_test = read_neuralop_darcy(tmp_path / f"darcy_test_{s}.pt", n=2)
    assert torch.equal(ours_test.x, theirs.test_dbs[s].x) and torch.equal(ours_test.y, theirs.test_dbs[s].y)
    grid_x, grid_y = embeddings.regular_grid_nd([s, s], grid_boundaries=[[0, 1], [0, 1]])
    torch.testing.assert_close(ours.grid[0], grid_x[:, 0])
    torch.testing.assert_close(ours.grid[1], grid_y[0, :])
