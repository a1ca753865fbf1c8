"""FNO: shapes in 1/2/3-D, any resolution, padding, registry and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from spectral_reference import fft_spectral_forward

from probneural.operators import FNO, OPERATORS, build, name_of, positional_grid


@pytest.mark.parametrize("modes, spatial", [((5,), (24,)), ((4, 3), (10, 12)), ((2, 2, 3), (6, 5, 7))])
def test_shapes_in_one_two_three_dimensions(modes, spatial, device):
    model = FNO(2, 3, modes, width=8, n_layers=2, projection_channels=16).to(device)
    y = model(torch.randn(2, 2, *spatial, device=device))
    assert y.shape == (2, 3, *spatial)


def test_same_weights_run_on_finer_grids_and_padding_is_cropped():
    torch.manual_seed(0)
    model = FNO(1, 1, (4, 4), width=8, n_layers=2, padding=0.25)
    for n in (8, 17, 33):
        assert model(torch.randn(3, 1, n, n)).shape == (3, 1, n, n)
    assert model.pad_widths((17, 33)) == (4, 8)


def test_padding_extends_the_domain_seen_by_the_spectral_layers():
    torch.manual_seed(0)
    plain = FNO(1, 1, (3, 3), width=6, n_layers=1)
    padded = FNO(1, 1, (3, 3), width=6, n_layers=1, padding=0.2)
    padded.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 10, 10)
    assert not torch.allclose(plain(x), padded(x))


def test_cpu_batch_chunking_gives_the_same_result():
    torch.manual_seed(0)
    whole = FNO(1, 1, (3, 3), width=6, n_layers=2, cpu_chunk_bytes=None).double()
    chunked = FNO(1, 1, (3, 3), width=6, n_layers=2, cpu_chunk_bytes=1).double()
    chunked.load_state_dict(whole.state_dict())
    x = torch.randn(5, 1, 8, 8, dtype=torch.double, requires_grad=True)
    assert chunked.chunk_size(x) == 1 and whole.chunk_size(x) == 5
    torch.testing.assert_close(chunked(x), whole(x), rtol=1e-12, atol=1e-14)
    (g_chunked,) = torch.autograd.grad(chunked(x).square().sum(), x)
    (g_whole,) = torch.autograd.grad(whole(x).square().sum(), x)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-14)


def test_positional_grid_conventions():
    x = torch.zeros(2, 1, 5, 4)
    nodes = positional_grid(x, "nodes")
    periodic = positional_grid(x, "periodic")
    assert nodes.shape == (2, 2, 5, 4)
    torch.testing.assert_close(nodes[0, 0, :, 0], torch.linspace(0, 1, 5))
    torch.testing.assert_close(nodes[0, 1, 0, :], torch.linspace(0, 1, 4))
    torch.testing.assert_close(periodic[0, 0, :, 0], torch.arange(5) / 5)


def test_config_rebuilds_the_same_architecture():
    model = FNO(1, 2, (6, 5), width=12, n_layers=3, padding=0.1, positional_grid=None)
    clone = build("fno", **model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 16, 12)
    torch.testing.assert_close(clone(x), model(x))
    assert name_of(model) == "fno" and "fno" in OPERATORS


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 1, 16), r"expected shape \(batch, 1, 2 spatial axes\)"),
        (torch.randn(2, 3, 16, 16), r"expected 1 input channels"),
        (torch.randn(2, 1, 16, 7), r"grid \(16, 7\) is too coarse for modes \(4, 4\); need at least \(8, 8\)"),
    ],
)
def test_bad_input_raises_value_error_saying_what_was_expected(x, match):
    with pytest.raises(ValueError, match=match):
        FNO(1, 1, (4, 4), width=4, n_layers=1)(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"modes": (1, 2, 3, 4)}, "modes"),
        ({"positional_grid": "cells"}, "positional_grid"),
        ({"activation": "swish"}, "activation"),
        ({"padding": 1.5}, "padding"),
        ({"width": 0}, "width"),
        ({"out_channels": 0}, "out_channels"),
        ({"cpu_chunk_bytes": 0}, "cpu_chunk_bytes"),
        ({"modes": "12"}, "modes"),  # a string is not two modes
        ({"modes": (4.7,)}, "modes"),
        ({"width": 8.0}, "width"),
        ({"in_channels": 2.5}, r"in_channels .* got 2\.5"),
        ({"n_layers": 2.5}, "n_layers"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {"in_channels": 1, "out_channels": 1, "modes": (4, 4)} | kwargs
    with pytest.raises(ValueError, match=match):
        FNO(**args)


def test_unknown_operator_name_lists_valid_names():
    with pytest.raises(KeyError, match="expected one of: fno"):
        build("fn0", in_channels=1, out_channels=1, modes=(2,))


def test_positional_grid_names_an_unknown_kind():
    from probneural.operators.fno import positional_grid

    with pytest.raises(ValueError, match=r"kind: expected one of \('nodes', 'periodic'\); got 'cell'"):
        positional_grid(torch.zeros(1, 1, 5), "cell")


def test_an_input_of_another_float_dtype_is_named():
    model = FNO(1, 1, (2, 2), width=4, n_layers=1).double()
    with pytest.raises(ValueError, match="x: expected the operator's dtype torch.float64; got torch.float32"):
        model(torch.zeros(1, 1, 8, 8))


def test_bad_layer_counts_and_channel_counts_are_named():
    from probneural.operators.pointwise import Pointwise
    from probneural.train.losses import relative_h1

    model = FNO(1, 1, (2, 2), width=4, n_layers=2)
    with pytest.raises(ValueError, match=r"n_layers: expected an int in \[0, 2\]; got 5"):
        model.hidden(torch.zeros(1, 1, 8, 8), 5)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        Pointwise(0, 3)
    with pytest.raises(ValueError, match="at least 3 points per spatial axis"):
        relative_h1(torch.zeros(1, 1, 2), torch.ones(1, 1, 2))


def test_forward_equals_the_fno_composed_by_hand():
    """Lifting of the input and its node coordinates, zero padding, Fourier layers ``K h + W h``
    with the exact GELU ``x Φ(x)`` after every layer but the last, cropping, then the two-layer
    projection: written out with einsums, the textbook FFT layer and ``erf`` in float64."""
    torch.manual_seed(3)
    model = FNO(2, 3, (3, 4), width=5, n_layers=3, projection_channels=7, positional_grid="nodes",
                padding=0.25).double()
    x = torch.randn(2, 2, 12, 10, dtype=torch.float64)

    def affine(layer, h):
        return torch.einsum("oi,bi...->bo...", layer.weight, h) + layer.bias.view(1, -1, *([1] * (h.dim() - 2)))

    def gelu(h):
        return h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))

    nodes = torch.meshgrid(torch.linspace(0, 1, 12, dtype=torch.float64),
                           torch.linspace(0, 1, 10, dtype=torch.float64), indexing="ij")
    h = affine(model.lifting, torch.cat((x, torch.stack(nodes).expand(2, 2, 12, 10)), dim=1))
    h = F.pad(h, (0, 2, 0, 3))  # round(0.25 n) zeros after each axis: 12 -> 15, 10 -> 12
    for i in range(3):
        h = fft_spectral_forward(model.spectral[i], h) + affine(model.skips[i], h)
        h = gelu(h) if i < 2 else h
    h = h[..., :12, :10]
    expected = affine(model.projection_out, gelu(affine(model.projection_hidden, h)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_inputs_that_are_not_floating_tensors_of_the_operators_dtype_are_named():
    import numpy as np

    model = FNO(1, 1, (4,), width=4, n_layers=1, projection_channels=4)
    with pytest.raises(ValueError, match="x: expected a torch.Tensor; got ndarray"):
        model(np.ones((2, 1, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="x: expected a floating-point tensor .* got torch.int64"):
        model(torch.ones(2, 1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x: expected at least one sample; got shape \(0, 1, 16\)"):
        model(torch.ones(0, 1, 16))
    with pytest.raises(ValueError, match="expected the operator's dtype torch.float32; got torch.float16"):
        model(torch.ones(2, 1, 16, dtype=torch.float16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the precision policy's autocast casts inside
        assert model(torch.ones(2, 1, 16, dtype=torch.bfloat16)).shape == (2, 1, 16)
        with pytest.raises(ValueError, match="expected the operator's dtype torch.float32; got torch.float64"):
            model(torch.ones(2, 1, 16, dtype=torch.float64))  # autocast does not excuse float64
    import numpy as np

    assert FNO(1, 1, np.array([4, 3]), width=np.int64(4)).modes == (4, 3)  # NumPy integers are integers
