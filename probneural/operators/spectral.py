"""The n-D spectral convolution at the heart of the Fourier neural operator.

Frequency convention (real transform): along the last spatial axis the lowest ``modes[-1]``
non-negative frequencies are kept; along every other axis the lowest ``modes[i]``
non-negative *and* the ``modes[i]`` most negative frequencies are kept, i.e. ``2 * modes[i]``
in all. This is the FNO paper's convention (``modes=12`` keeps a 24 × 12 block in 2-D).

Only what is kept is ever computed: the truncated Fourier transform along each axis is a
product with a small DFT matrix, so the whole layer is a chain of real matrix
products (no FFT, no zero padding, no complex tensors). The result equals
``irfftn(truncate(W · truncate(rfftn(x))))``, except that on a non-last axis of exactly
``2 * modes[i]`` points the Nyquist coefficient is halved (:func:`kept_shares`: split with the
``+modes[i]`` that is not kept, as on every finer grid); see ADR 0002 for the measurements that led here.

Complex numbers are carried in *pair layout*: a real tensor whose last axis holds the real
parts of the kept last-axis frequencies followed by their imaginary parts (``2 * modes[-1]``).
Along the other axes the complex DFT is one real matrix acting on (index, real/imaginary)
pairs, so no step slices or concatenates.

Derivatives of every order, reverse and forward mode, go through the custom Functions of
:mod:`probneural.operators.spectral_autograd`: the contraction and, under ``torch.func``
transforms, the constant DFT products, each differentiated by hand into the same kind of
matrix products (cheap Hessian-vector products through the layer).

The weights are stored frequency-major as a real tensor `(*kept, in, out, 2)` whose trailing
dimension holds (real, imaginary): distributed all-reduce and compilers handle real
parameters correctly, while complex parameters lose their imaginary gradients under NCCL;
frequency-major storage lets the contraction use the weight without rearranging it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch._C._functorch import is_functorch_wrapped_tensor

from probneural.operators.spectral_autograd import (
    constant_matmul, contract_rows, pair_layout, spectral_contract, spectral_rows,
)
from probneural.validation import check_int, check_positive_ints

__all__ = ["SpectralConv", "analysis", "kept_frequencies", "kept_shape", "kept_shares", "spectral_contract", "synthesis"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def kept_shape(modes: Sequence[int]) -> tuple[int, ...]:
    """Shape of the kept frequency block: ``2 * m`` on every axis but the last, ``m`` on the last."""
    return tuple(2 * m for m in modes[:-1]) + (modes[-1],)


def kept_frequencies(m: int, last: bool) -> Tensor:
    """Integer frequencies kept along an axis: ``0..m-1`` on the last axis, else also ``-m..-1``."""
    if last:
        return torch.arange(m)
    return torch.cat((torch.arange(m), torch.arange(-m, 0)))


def kept_shares(n: int, m: int, last: bool) -> Tensor:
    """The share of each kept frequency's DFT coefficient that the forward transform takes, float64.

    1, except ½ for ``-m`` on a non-last axis of exactly ``n = 2m`` points: there ``-m`` is the
    Nyquist frequency, whose coefficient holds ``cos(2π m x)`` whole, while every finer grid keeps
    only its half at ``-m`` (the other half is at ``+m``, not kept). Split evenly, the layer computes
    the same operator at ``n = 2m`` as at finer grids.
    """
    return torch.where(2 * kept_frequencies(m, last) == -n, 0.5, 1.0).double()


_MATRICES: dict[tuple, tuple[Tensor, Tensor]] = {}


def _cached(build: Callable[..., tuple[Tensor, Tensor]], *key: object) -> tuple[Tensor, Tensor]:
    """Memoised DFT matrices. Tensors created inside a ``torch.func`` transform are wrapped for
    that transform and must not outlive it, so such results are returned but not stored."""
    found = _MATRICES.get((build, *key))
    if found is not None:
        return found
    with torch.inference_mode(False), torch.no_grad():  # never cache inference tensors
        matrices = build(*key)
    if not any(is_functorch_wrapped_tensor(m) for m in matrices):
        if len(_MATRICES) >= 256:
            _MATRICES.clear()
        _MATRICES[(build, *key)] = matrices
    return matrices


def _last_axis_matrices(n: int, m: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Truncated real DFT along the last axis and its inverse, in pair layout.

    Returns:
        forward `(n, 2m)`: ``x @ forward = [Re X_k | Im X_k]`` with ``X_k = sum_j x_j e^{-2πi jk/n}``;
        inverse `(2m, n)`: ``[Re Y | Im Y] @ inverse`` equals ``irfft(Y, n)`` of the zero-padded spectrum.
    """
    angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), kept_frequencies(m, True).double()) / n
    forward = torch.cat((torch.cos(angle), -torch.sin(angle)), dim=1)
    weight = torch.full((m,), 2.0, dtype=torch.float64)  # each kept k > 0 stands for k and -k
    weight[0] = 1.0  # (n >= 2m, so the Nyquist frequency is never kept)
    inverse = torch.cat(((weight * torch.cos(angle)).T, (-weight * torch.sin(angle)).T), dim=0) / n
    return forward.to(dtype=dtype, device=device), inverse.to(dtype=dtype, device=device)


def _pair_matrix(real: Tensor, imag: Tensor) -> Tensor:
    """The real matrix applying the complex `(q, n)` matrix ``M = real + i imag`` to rows of pairs.

    Returns:
        `(2n, 2q)`: for ``z`` `(r, 2n)` whose columns are (index ``j``, part) pairs, part 0
        the real and 1 the imaginary part, ``z @ result`` holds ``M`` applied to each row,
        its columns (index ``k``, part) pairs in the same way.
    """
    real_t, imag_t = real.T, imag.T
    parts = torch.stack((torch.stack((real_t, imag_t), dim=-1), torch.stack((-imag_t, real_t), dim=-1)), dim=1)
    return parts.reshape(2 * real.shape[1], 2 * real.shape[0])  # (n, 2, q, 2) -> (2n, 2q)


def _axis_matrices(n: int, m: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Truncated complex DFT along a non-last axis and its inverse, as :func:`_pair_matrix` forms.

    The forward rows are scaled by :func:`kept_shares` (the Nyquist row halved when ``n = 2m``,
    so that zero-shot super-resolution computes the same operator; ``sin(2π m x)`` vanishes at the
    nodes of such a grid and cannot be seen there at all).

    Returns:
        forward `(2n, 4m)`: ``E[k, j] = share_k e^{-2πi f_k j/n}`` over the kept frequencies ``f``;
        inverse `(4m, 2n)`: ``D = conj(E_full)^T / n`` of the unscaled ``E_full``.
    """
    angle = 2 * math.pi * torch.outer(kept_frequencies(m, False).double(), torch.arange(n, dtype=torch.float64)) / n
    share = kept_shares(n, m, False)[:, None]
    forward = _pair_matrix(share * torch.cos(angle), -share * torch.sin(angle))
    inverse = _pair_matrix(torch.cos(angle).T / n, torch.sin(angle).T / n)
    return forward.to(dtype=dtype, device=device), inverse.to(dtype=dtype, device=device)


def _complex_matmul_along(z: Tensor, matrix: Tensor, axis: int) -> Tensor:
    """Apply a complex matrix ``M`` along ``axis`` of ``z``, given as its :func:`_pair_matrix`.

    With the axis next to the pair axis (a view when it is the second to last), the axis
    index and the real/imaginary half of the pair axis together index the columns of one
    real `(p, 2n)` matrix per remaining index (a transposed view), multiplied by ``matrix``:
    no slicing or concatenation, which would each cost a zero-filled buffer in every
    derivative. (Multiplying the untransposed `(2n, p)` matrices from the left is twice as
    slow on CPU for the narrow ``p`` of typical mode counts.)

    Args:
        z: real tensor in pair layout `(..., n (at axis), ..., 2p)`.
        matrix: `(2n, 2q)` real form of ``M`` (:func:`_pair_matrix`), a constant.
        axis: the axis of length ``n`` (not the last).

    Returns:
        ``M z`` in pair layout, with ``axis`` now of length ``q``.
    """
    moved = z.movedim(axis, -2)
    *lead, n, two_p = moved.shape
    pairs = moved.reshape(*lead, 2 * n, two_p // 2).transpose(-1, -2)  # (..., p, 2n)
    product = constant_matmul(pairs, matrix).transpose(-1, -2)  # (..., 2q, p)
    return product.reshape(*lead, matrix.shape[1] // 2, two_p).movedim(-2, axis)


def analysis(x: Tensor, last: Tensor, axes: Sequence[Tensor]) -> tuple[Tensor, tuple]:
    """The kept Fourier coefficients of ``x`` in the contraction's frequency-major layout.

    Args:
        x: `(b, c, *spatial)` real field.
        last: `(n_last, 2p)` forward matrix of the last axis (:func:`_last_axis_matrices`), or
            any real matrix acting there (the transposed inverse, for an adjoint).
        axes: `(2 n_a, 2 q_a)` pair matrices of the other axes (:func:`_axis_matrices`).

    Returns:
        ``(rows, layout)``: `(F, 2, b, c)` coefficients (:func:`spectral_rows`) and the layout
        :func:`synthesis` needs to undo the rearrangement.
    """
    z = constant_matmul(x, last)
    for axis, matrix in enumerate(axes):
        z = _complex_matmul_along(z, matrix, 2 + axis)
    return spectral_rows(z)


def synthesis(rows: Tensor, layout: tuple, last: Tensor, axes: Sequence[Tensor]) -> Tensor:
    """The real field of frequency-major coefficients: the inverse of :func:`analysis`'s steps.

    Args:
        rows: `(F, 2, b, o)` coefficients.
        layout: as returned by :func:`analysis`.
        last: `(2p, n_last)` inverse matrix of the last axis (or the transposed forward one).
        axes: `(2 q_a, 2 n_a)` pair matrices of the other axes.

    Returns:
        `(b, o, *spatial)`.
    """
    z = pair_layout(rows, layout)
    for axis, matrix in enumerate(axes):
        z = _complex_matmul_along(z, matrix, 2 + axis)
    return constant_matmul(z, last)


class SpectralConv(nn.Module):
    """Fourier integral operator ``K(v) = IDFT(R · DFT(v))`` truncated to the lowest modes.

    Args:
        in_channels: channels of the input field.
        out_channels: channels of the output field.
        modes: kept frequencies per spatial axis (see the module docstring); ``len(modes)``
            is the number of spatial axes.

    Shapes:
        input `(b, in_channels, *spatial)` with ``spatial[i] >= 2 * modes[i]``;
        output `(b, out_channels, *spatial)`.

    The layer computes in its input's dtype when that is float32 or float64 (the weights are
    cast to it), also under autocast: half-precision inputs are promoted to the weights' dtype
    and autocast is disabled inside, as the precision policy prescribes for the spectral path
    (its ``fft_dtype``).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: Sequence[int]) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        modes = check_positive_ints("modes", modes)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        # complex Glorot-style initialisation: E|w|^2 = 2 / (in + out), split over Re and Im
        std = (1.0 / (in_channels + out_channels)) ** 0.5
        self.weight = nn.Parameter(std * torch.randn(*kept_shape(modes), in_channels, out_channels, 2))

    @property
    def dim(self) -> int:
        return len(self.modes)

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is `(b, in_channels, *spatial)` fine enough for the modes."""
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"x: expected a {self.dim + 2}-D tensor (batch, {self.in_channels} channels, "
                f"{self.dim} spatial axes); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: expected {self.in_channels} channels in axis 1; got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        needed = tuple(2 * m for m in self.modes)
        if any(n < r for n, r in zip(spatial, needed)):
            raise ValueError(
                f"x: grid {spatial} is too coarse for modes {self.modes}; "
                f"need at least {needed} points per axis"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.convolve(x.to(self.weight.dtype) if x.dtype in _HALF_DTYPES else x, self.weight)

    def convolve(self, x: Tensor, weight: Tensor) -> Tensor:
        """The convolution of ``x`` `(b, in, *spatial)` with ``weight`` `(*kept, in, out, 2)` (cast to
        ``x``'s dtype) in place of the layer's own: :func:`analysis`, contraction, :func:`synthesis`."""
        forward, inverse = self.dft_matrices(x)
        rows, layout = analysis(x, *forward)
        return synthesis(contract_rows(rows, weight.to(x.dtype)), layout, *inverse)

    def dft_matrices(self, x: Tensor) -> tuple[tuple[Tensor, list[Tensor]], tuple[Tensor, list[Tensor]]]:
        """The truncated DFT matrices for fields shaped like ``x``, in ``x``'s dtype and device (memoised).

        Returns:
            ``(forward, inverse)``, each ``(last-axis matrix, [matrix per other axis])``: the
            arguments of :func:`analysis` and :func:`synthesis` after the field.
        """
        spatial = x.shape[2:]
        dtype, device = x.dtype, x.device
        last_forward, last_inverse = _cached(_last_axis_matrices, spatial[-1], self.modes[-1], dtype, device)
        axes = [_cached(_axis_matrices, spatial[a], self.modes[a], dtype, device) for a in range(self.dim - 1)]
        return (last_forward, [f for f, _ in axes]), (last_inverse, [i for _, i in axes])

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}"
