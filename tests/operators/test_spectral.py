"""SpectralConv against a dense-DFT reference, across grids, and under gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from probneural.operators import SpectralConv, kept_shape


def kept_frequencies(n: int, m: int, last: bool) -> torch.Tensor:
    """Integer frequencies kept along an axis of n points."""
    if last:
        return torch.arange(m)
    return torch.cat((torch.arange(m), torch.arange(-m, 0)))


def dense_reference(x: torch.Tensor, weight: torch.Tensor, modes: tuple[int, int]) -> torch.Tensor:
    """Truncated Fourier convolution from explicit DFT sums over a 2-D periodic grid.

    y(p) = (1/N) Re sum_k c_k (sum_i W_io(k) x̂_i(k)) e^{2πi k·p/n}, with c_k = 1 on the
    k2 = 0 (and Nyquist) column and 2 elsewhere (the conjugate half of the spectrum).
    """
    n1, n2 = x.shape[-2:]
    k1 = kept_frequencies(n1, modes[0], last=False).double()
    k2 = kept_frequencies(n2, modes[1], last=True).double()
    p1 = torch.arange(n1).double()
    p2 = torch.arange(n2).double()
    e1 = torch.exp(-2j * math.pi * torch.outer(k1, p1) / n1)  # (K1, n1)
    nyquist_share = torch.where(2 * k1 == -n1, 0.5, 1.0)  # n1 = 2m: -m is the Nyquist frequency, split with +m
    forward_e1 = e1 * nyquist_share[:, None]
    e2 = torch.exp(-2j * math.pi * torch.outer(k2, p2) / n2)  # (K2, n2)
    x_hat = torch.einsum("kp,zcpq,lq->zckl", forward_e1, x.to(torch.cdouble), e2)
    y_hat = torch.einsum("zikl,klio->zokl", x_hat, torch.view_as_complex(weight))
    c = torch.full((len(k2),), 2.0, dtype=torch.double)
    c[0] = 1.0
    y = torch.einsum("kp,zokl,lq->zopq", e1.conj(), y_hat * c, e2.conj())
    return y.real / (n1 * n2)


@pytest.mark.parametrize("shape, modes", [((16, 12), (4, 5)), ((9, 10), (3, 3)), ((8, 8), (4, 4))])
def test_matches_dense_dft_reference(shape, modes):
    torch.manual_seed(0)
    layer = SpectralConv(3, 2, modes).double()
    x = torch.randn(2, 3, *shape, dtype=torch.double)
    expected = dense_reference(x, layer.weight.detach(), modes)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_weight_shape_is_real_with_trailing_two():
    layer = SpectralConv(4, 5, (6, 7, 3))
    assert layer.weight.shape == (*kept_shape((6, 7, 3)), 4, 5, 2) == (12, 14, 3, 4, 5, 2)
    assert not layer.weight.is_complex()


def band_limited(n: int, dim: int) -> torch.Tensor:
    """A field of low Fourier modes sampled on the periodic grid j/n, shape (1, 2, n, ...)."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.double) / n] * dim, indexing="ij")
    s = sum(axes)
    first = torch.cos(2 * math.pi * s) + 0.5 * torch.sin(2 * math.pi * 2 * axes[0])
    second = 1.0 + torch.sin(2 * math.pi * (axes[-1] - 3 * axes[0])) if dim > 1 else torch.cos(6 * math.pi * axes[0])
    return torch.stack((first, second))[None]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_band_limited_input_gives_same_output_on_two_grids(dim):
    torch.manual_seed(1)
    layer = SpectralConv(2, 3, (4,) * dim).double()
    coarse = layer(band_limited(12, dim))
    fine = layer(band_limited(24, dim))
    stride = (slice(None), slice(None)) + (slice(None, None, 2),) * dim
    torch.testing.assert_close(fine[stride], coarse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("modes, coarse", [((3, 3), (6, 8)), ((2, 2, 2), (4, 4, 5))])
def test_grid_of_exactly_twice_the_modes_computes_the_operator_of_finer_grids(modes, coarse):
    """At n = 2m on a non-last axis the kept -m is the Nyquist frequency: its coefficient holds
    cos(2π m x) whole, of which finer grids keep half (at -m). Counted whole, the coarse output was
    up to 0.94 off the fine one's at the shared nodes."""
    torch.manual_seed(0)
    layer = SpectralConv(2, 2, modes).double()

    def field(shape):
        axes = torch.meshgrid(*[torch.arange(n, dtype=torch.double) / n for n in shape], indexing="ij")
        u = torch.cos(2 * math.pi * modes[0] * axes[0])  # the Nyquist component of the coarse grid
        for k in range(4):
            u = u + 0.5**k * torch.cos(sum(2 * math.pi * ((k + 1 + a) % modes[a]) * x for a, x in enumerate(axes)) + k)
        return torch.stack((u, 2 * u))[None]

    fine = layer(field(tuple(2 * n for n in coarse)))
    torch.testing.assert_close(fine[(..., *[slice(None, None, 2)] * len(modes))], layer(field(coarse)),
                               rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck_float64():
    torch.manual_seed(2)
    layer = SpectralConv(2, 2, (2, 2)).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.double, requires_grad=True)

    def f(inp, weight):
        return torch.func.functional_call(layer, {"weight": weight}, (inp,))

    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, weight))
    assert torch.autograd.gradgradcheck(f, (x, weight))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_spectral_path_stays_float32_under_autocast(dtype):
    torch.manual_seed(0)
    layer = SpectralConv(2, 2, (3, 3))
    x = torch.randn(1, 2, 8, 8)
    expected = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        y_half_input = layer(x.to(dtype))
    assert y.dtype == y_half_input.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(y_half_input, layer(x.to(dtype).float()), rtol=0, atol=0)


def test_matrices_first_built_under_inference_mode_still_train():
    from probneural.operators import spectral

    spectral._MATRICES.clear()
    layer = SpectralConv(1, 1, (2, 2))
    with torch.inference_mode():
        layer(torch.randn(1, 1, 9, 7))
    x = torch.randn(1, 1, 9, 7, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(1, 2, 8), r"expected a 4-D tensor"),
        (torch.randn(1, 3, 8, 8), r"expected 2 channels"),
        (torch.randn(1, 2, 5, 8), r"too coarse for modes \(3, 3\); need at least \(6, 6\)"),
    ],
)
def test_bad_input_raises_clear_value_error(x, match):
    with pytest.raises(ValueError, match=match):
        SpectralConv(2, 2, (3, 3))(x)


def test_bad_modes_rejected():
    with pytest.raises(ValueError, match="modes"):
        SpectralConv(1, 1, (0, 3))


def test_dft_matrices_built_inside_torch_func_transforms_do_not_leak():
    from probneural.operators import spectral

    spectral._MATRICES.clear()
    layer = SpectralConv(1, 1, (2, 2)).double()
    x = torch.randn(1, 1, 7, 5, dtype=torch.double)
    grad = torch.func.grad(lambda inp: layer(inp).pow(2).sum())(x)
    assert not spectral._MATRICES  # built under the transform: used, not kept
    eager = x.clone().requires_grad_(True)
    layer(eager).pow(2).sum().backward()
    torch.testing.assert_close(grad, eager.grad)
    assert spectral._MATRICES  # built eagerly: kept
