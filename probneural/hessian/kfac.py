"""Kronecker-factored approximate curvature (K-FAC) of the GGN for ``nn.Linear``, :class:`Pointwise` and :class:`SpectralConv` layers.

For a layer ``s = W a + b`` the GGN block of its parameters is approximated by one Kronecker
product ``B ⊗ A`` (Martens & Grosse, ICML 2015), for the losses of
:mod:`probneural.hessian.ggn` (``"mse"``, ``"gaussian_nll"``, loss Hessian ``Λ``):

* ``A = (1/R) Σ ã ãᵀ``: ``ã = [a; 1]`` is the layer input with a ones row for the bias; the
  sum runs over every sample and every location at which the layer runs, ``R`` of them;
* ``B = Σ g gᵀ``: ``g`` are the rows of ``√Λ J`` backpropagated to the layer output ``s``
  (``J`` the Jacobian of the model output), summed over the same locations (see
  :class:`KFACVariant` for how ``√Λ`` is backpropagated).

**Weight sharing: K-FAC-expand.** A :class:`Pointwise` layer runs at every grid point and a
``Linear`` layer at every leading index of a `(b, ..., in)` input. Following Eschenhagen et al.,
"Kronecker-factored approximate curvature for modern neural network architectures" (NeurIPS
2023, arXiv:2311.00636), every location counts as a separate example in both factors
(*K-FAC-expand*): the loss is a sum over the output grid points, so the shared dimension reaches
the loss instead of being pooled away. For one sample at one location the block is exact:
``Σ_m (g_m ⊗ ã)(g_m ⊗ ã)ᵀ = B ⊗ ã ãᵀ``. Exactly the expand setting only holds for layers after the
last spectral layer (the projection), whose output at a point reaches the loss only at that point.
Upstream, a spectral layer mixes the points, and expand drops the cross-location terms
``Σ_{s≠s'} (ã_s ⊗ g_s)(ã_{s'} ⊗ g_{s'})ᵀ``, which are large because the spectral layer smooths the
back-propagated gradients: on a 2-layer toy FNO (width 4, 8², type-2 ``B``) the expand block of the
lifting was 85 % off the exact GGN block in Frobenius norm (trace 0.37×; reduce 31 % off), of the
first skip 68 %, of the projection 0–21 %. Laplace's ``kfac`` posterior hence overstates the
variance of the early layers' weights.
With ``A`` normalised by ``R`` and ``B`` summed, the factors follow curvlinops' ``KFACLinearOperator``
(``kfac_approx="expand"``) for a summed loss.

**Parameter layout.** Each block acts on ``[weight.flatten(); bias]`` (row-major weight
`(o, i)`, then the bias `(o,)`), the layers in the order of ``model.named_modules()``, i.e. the
order of ``model.named_parameters()`` restricted to the covered layers; other parameters are not
covered. :attr:`KroneckerOperator.names` lists what is.

**Spectral layers** (opt-in: ``kfac_operator(..., spectral=True)``; :class:`SpectralKroneckerBlock`).
A :class:`SpectralConv` computes ``y_k = W_kᵀ x_k`` at every kept mode ``k``: complex coefficients
``x_k`` `(i,)`, ``y_k`` `(o,)`, a complex `(i, o)` weight per mode stored through its real view
`(i, o, 2)`. With ``g`` the backpropagated gradient at ``y_k`` (``∂/∂Re y + i ∂/∂Im y``), the weight's
gradient is ``x̄ gᵀ``; the real rank-one curvature ``r rᵀ`` of the real view ``r`` of
``v = x̄ ⊗ g`` acts on the complex view ``u`` of a direction as ``u ↦ ½ (v v^H u + v vᵀ ū)``.

*No Kronecker product can be exact here*: a factor of ``x`` times a factor of ``g`` in any fixed
real basis fails already for ``i = o = 1``, where ``r`` is ``(Re g, Im g)`` rotated by the phase of
``x̄``. The exact structure is *widely linear*; summed over the samples and factorised like K-FAC
(expand over the samples, ``R`` of them: each mode's weight acts once per sample),

    ``G_k ≈ ½ (H_A ⊗ H_B) u + ½ (S_A ⊗ S_B) ū``,
    ``H_A = (1/R) Σ x̄ xᵀ``, ``S_A = (1/R) Σ x̄ x̄ᵀ``, ``H_B = Σ g g^H``, ``S_B = Σ g gᵀ``,

which is all that the real second moments ``A = (1/R) Σ x̃ x̃ᵀ`` `(2i, 2i)` and ``B = Σ ĝ ĝᵀ``
`(2o, 2o)` of the real views hold (:func:`complex_moments`). Its damped inverse has no closed form (a
complex-linear plus a conjugate-linear Kronecker product plus ``δ I``), so the block keeps the
complex-linear part and the conjugate-linear part on the diagonal of the eigenbasis ``q_a ⊗ p_b`` of
``H_A ⊗ H_B`` (``H_A q_a = λ_a q_a``, ``H_B p_b = μ_b p_b``): with ``α_a = q_aᴴ S_A q̄_a`` and
``β_b = p_bᴴ S_B p̄_b``, the coordinate ``c_ab`` in that basis is mapped to
``½ (λ_a μ_b c + α_a β_b c̄)``, a real 2 × 2 block with eigenvalues ``½ (λ_a μ_b ± |α_a β_b|)``:
products, the diagonal, solves and log-determinants stay closed-form. For one sample and one output
direction (``H_A``, ``H_B`` of rank one) every mode's block is ``r rᵀ``, exact; otherwise it is an
approximation, and the couplings between modes (and between layers) are dropped.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from enum import Enum
from functools import cached_property
from typing import Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import Tensor, nn

from probneural.hessian.ggn import functional_model, loss_hessian_sqrt
from probneural.hessian.operator import LinearOperator
from probneural.hessian.structure import cast
from probneural.operators.pointwise import Pointwise
from probneural.operators.spectral import SpectralConv, kept_frequencies, kept_shape, kept_shares
from probneural.validation import check_int, warn_unused

__all__ = ["KFACVariant", "KroneckerBlock", "KroneckerOperator", "SpectralKroneckerBlock", "kfac_operator"]

LAYER_TYPES = (nn.Linear, Pointwise)


class KFACVariant(str, Enum):
    """How the output factor ``B`` is formed from the loss Hessian square root ``√Λ``.

    * ``EXACT`` (``"exact"``, the "type-2" factor): backpropagates every column of ``√Λ``, one
      backward pass per output coordinate of a sample (``c · Π spatial``); ``B`` is exact.
      For small outputs.
    * ``MC`` (``"mc"``): backpropagates ``√Λ z`` with ``z ~ N(0, I)`` (the score of a label drawn
      from the Gaussian likelihood), ``n_samples`` backward passes; ``B`` is unbiased with an
      error ``O(1/√n_samples)``. For field outputs.
    """

    EXACT = "exact"
    MC = "mc"


def layer_rows(t: Tensor, module: nn.Module) -> Tensor:
    """A layer's input or output as rows `(R, features)`, one per location (K-FAC-expand).

    Args:
        t: `(b, features, *spatial)` for a :class:`Pointwise` layer, `(..., features)` for ``nn.Linear``.
        module: the layer.
    """
    if isinstance(module, Pointwise):
        return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


def augmented(rows: Tensor, bias: bool) -> Tensor:
    """Rows `(R, i)` with a ones column appended for the bias: `(R, i + 1)` (unchanged without bias)."""
    return torch.cat((rows, rows.new_ones(rows.shape[0], 1)), dim=1) if bias else rows


def layer_moment(t: Tensor, module: nn.Module, bias: bool) -> tuple[Tensor, int]:
    """``Σ r rᵀ`` over the rows ``r`` of ``augmented(layer_rows(t, module), bias)``, and their number ``R``.

    Without forming the rows where the grid is at least as long as the channels: a :class:`Pointwise`
    layer's `(b, c, N)` field is then contracted over the grid by one batched matmul with its own
    transpose (a view), and the bias row and column are the plain sums ``Σ r`` and ``R``. Transposing
    the field into `(R, c)` rows and appending a ones column took two copies of it, a third of
    K-FAC's time on an FNO. On short grids (``N < c``) the `(b, c, c)` products of the batched matmul
    would outweigh the copies, and the rows are formed.

    Args:
        t: as for :func:`layer_rows`.
        module: the layer.
        bias: append the ones entry of the bias to every row.

    Returns:
        `(f, f)` with ``f`` the features (plus one with ``bias``), and ``R``.
    """
    field = t.reshape(t.shape[0], t.shape[1], -1) if isinstance(module, Pointwise) else None
    if field is not None and field.shape[2] >= field.shape[1]:
        moment, count = torch.bmm(field, field.mT).sum(0), field.shape[0] * field.shape[2]
        sums = field.sum((0, 2)) if bias else None
    else:
        rows = layer_rows(t, module)
        moment, count = rows.mT @ rows, rows.shape[0]
        sums = rows.sum(0) if bias else None
    if sums is None:
        return moment, count
    corner = sums.new_full((1, 1), count)
    return torch.cat((torch.cat((moment, sums[:, None]), 1), torch.cat((sums[None], corner), 1))), count


def trainable_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = LAYER_TYPES) -> dict[str, nn.Module]:
    """``name → module`` of ``model``'s layers of ``types`` whose weight is trained, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, types) and m.weight.requires_grad}


def has_trainable_bias(module: nn.Module) -> bool:
    """Whether a layer's bias exists and is trained (then it is part of the curvature)."""
    bias = getattr(module, "bias", None)
    return bias is not None and bias.requires_grad


def parameter_names(name: str, module: nn.Module) -> tuple[str, ...]:
    """The names in ``model.named_parameters()`` of a layer's weight and (trainable) bias."""
    prefix = f"{name}." if name else ""
    return (f"{prefix}weight", f"{prefix}bias") if has_trainable_bias(module) else (f"{prefix}weight",)


def batches(inputs: Tensor | Iterable[Tensor]) -> Iterable[Tensor]:
    """One batch or an iterable of batches, as an iterable of batches."""
    return (inputs,) if isinstance(inputs, Tensor) else inputs


@contextmanager
def recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[tuple[Tensor, Tensor]]]]:
    """Records ``(input, output)`` of every call of the named modules while the context is open."""
    records: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(lambda _, args, out, name=name: records[name].append((args[0], out)))
        for name, module in modules.items()
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def check_damping(damping: float) -> None:
    """A ``ValueError`` unless ``damping >= 0``."""
    if not damping >= 0:
        raise ValueError(f"damping: expected a number >= 0; got {damping}")


class KroneckerBlock:
    """One layer's curvature ``B ⊗ A`` over its parameters ``[weight.flatten(); bias]``.

    On the row-major ``vec`` of the augmented weight ``W̃ = [W | b]`` `(o, i + 1)` the block is
    ``(B ⊗ A) vec(W̃) = vec(B W̃ A)``; the parameter layout differs only by moving the bias column last.

    Args:
        names: the parameter names covered: ``(weight,)``, or ``(weight, bias)`` for a layer with a bias.
        input_factor: ``A``, `(i + 1, i + 1)` with a bias (its ones row last), else `(i, i)`; symmetric PSD.
        output_factor: ``B``, `(o, o)`; symmetric PSD.
    """

    def __init__(self, names: Sequence[str], input_factor: Tensor, output_factor: Tensor) -> None:
        if len(names) not in (1, 2):
            raise ValueError(f"names: expected (weight,) or (weight, bias); got {tuple(names)}")
        for name, factor in (("input_factor", input_factor), ("output_factor", output_factor)):
            if factor.dim() != 2 or factor.shape[0] != factor.shape[1]:
                raise ValueError(f"{name}: expected a square matrix; got shape {tuple(factor.shape)}")
        if input_factor.dtype != output_factor.dtype or input_factor.device != output_factor.device:
            raise ValueError(f"output_factor: expected the dtype and device of input_factor ({input_factor.dtype}, "
                             f"{input_factor.device}); got ({output_factor.dtype}, {output_factor.device})")
        self.names = tuple(names)
        self.input_factor = input_factor
        self.output_factor = output_factor
        self.bias = len(self.names) == 2
        self.in_features = input_factor.shape[0] - self.bias
        self.out_features = output_factor.shape[0]
        self.size = self.out_features * input_factor.shape[0]
        self.dtype, self.device = input_factor.dtype, input_factor.device

    def _matrices(self, V: Tensor) -> Tensor:
        """Columns `(size, k)` of parameter vectors → augmented weights `(k, o, i [+ 1])`."""
        o, i, k = self.out_features, self.in_features, V.shape[1]
        weight = V[: o * i].T.reshape(k, o, i)
        return torch.cat((weight, V[o * i :].T.unsqueeze(-1)), dim=-1) if self.bias else weight

    def _vectors(self, M: Tensor) -> Tensor:
        """Inverse of :meth:`_matrices`: `(k, o, i [+ 1])` → `(size, k)`."""
        k, i = M.shape[0], self.in_features
        pieces = [M[..., :i].reshape(k, -1)] + ([M[..., i]] if self.bias else [])
        return torch.cat(pieces, dim=1).T

    def matmat(self, V: Tensor) -> Tensor:
        """``(B ⊗ A) V`` for `(size, k)` ``V``."""
        return self._vectors(self.output_factor @ self._matrices(V) @ self.input_factor)

    def diagonal(self) -> Tensor:
        """The exact diagonal `(size,)` of ``B ⊗ A``."""
        outer = torch.outer(torch.diagonal(self.output_factor), torch.diagonal(self.input_factor))
        return self._vectors(outer.unsqueeze(0))[:, 0]

    @cached_property
    def _eigen(self) -> tuple[Tensor, Tensor, Tensor]:
        """Eigenvalues `(o, i [+ 1])` of ``B ⊗ A`` (factor eigenvalues clamped at 0: PSD up to
        round-off) and the eigenvectors of ``A`` and ``B``."""
        a_values, a_vectors = torch.linalg.eigh(self.input_factor)
        b_values, b_vectors = torch.linalg.eigh(self.output_factor)
        return torch.outer(b_values.clamp_min(0), a_values.clamp_min(0)), a_vectors, b_vectors

    def solve(self, V: Tensor, damping: float) -> Tensor:
        """``(B ⊗ A + δ I)⁻¹ V`` for `(size, k)` ``V``."""
        values, a_vectors, b_vectors = self._eigen
        rotated = b_vectors.T @ self._matrices(V) @ a_vectors
        return self._vectors(b_vectors @ (rotated / (values + damping)) @ a_vectors.T)

    def logdet(self, damping: float) -> Tensor:
        """``log det(B ⊗ A + δ I)``, a 0-d tensor."""
        return torch.log(self._eigen[0] + damping).sum()


def spectral_coefficients(field: Tensor, modes: Sequence[int], *, shares: bool = True) -> Tensor:
    """The kept Fourier coefficients ``X_k = Σ_j x_j e^{-2πi k·j/n}`` of a field, in the order of the weight.

    Args:
        field: `(b, c, *spatial)` real field.
        modes: the :class:`SpectralConv`'s kept modes per spatial axis.
        shares: scale them by :func:`~probneural.operators.spectral.kept_shares` as the layer's
            forward transform does (a Nyquist coefficient on a non-last axis of ``2m`` points halved).

    Returns:
        `(b, c, F)` complex, ``F = prod(kept_shape(modes))`` modes in the row-major order of the
        weight's leading `(*kept)` axes (frequencies as :func:`kept_frequencies`).
    """
    coefficients = torch.fft.rfftn(field, dim=tuple(range(2, field.dim())))
    for axis, m in enumerate(modes):
        n, last = field.shape[2 + axis], axis == len(modes) - 1
        coefficients = coefficients.index_select(2 + axis, (kept_frequencies(m, last) % n).to(field.device))
        if shares:
            share = kept_shares(n, m, last).to(device=field.device, dtype=field.dtype)
            coefficients = coefficients * share.reshape(-1, *[1] * (len(modes) - 1 - axis))
    return coefficients.flatten(2)


def spectral_output_gradient(grad: Tensor, modes: Sequence[int]) -> Tensor:
    """The gradient ``g_k = ∂/∂Re y_k + i ∂/∂Im y_k`` at the output coefficients from that at the output field.

    The layer's output is ``s = irfftn(y)`` over the kept modes (zero elsewhere), real-linear in ``y``;
    its adjoint is ``g_k = w_k / N · rfftn(∂/∂s)_k`` with ``N = Π spatial`` and ``w_k = 2`` for a
    positive last-axis frequency (it stands for ``±k``), else 1.

    Args:
        grad: `(b, o, *spatial)` gradient at the layer's output field.
        modes: the layer's kept modes.

    Returns:
        `(b, o, F)` complex, in the order of :func:`spectral_coefficients`.
    """
    last = torch.full((modes[-1],), 2.0, dtype=grad.dtype, device=grad.device)
    last[0] = 1.0
    return spectral_coefficients(grad, modes, shares=False) * (last / math.prod(grad.shape[2:])).repeat(
        math.prod(kept_shape(modes)[:-1])
    )


def real_rows(coefficients: Tensor) -> Tensor:
    """Complex coefficients `(b, c, F)` as real rows per mode `(F, b, 2c)`: ``(Re, Im)`` of each channel in turn."""
    b, c, f = coefficients.shape
    return torch.view_as_real(coefficients).permute(2, 0, 1, 3).reshape(f, b, 2 * c)


def complex_moments(factor: Tensor) -> tuple[Tensor, Tensor]:
    """``(E[v v^H], E[v vᵀ])`` `(F, n, n)` of a complex ``v`` from ``E[ṽ ṽᵀ]`` `(F, 2n, 2n)` of its real view
    ``ṽ = (Re v_1, Im v_1, ..., Re v_n, Im v_n)``."""
    f, n = factor.shape[0], factor.shape[1] // 2
    parts = factor.reshape(f, n, 2, n, 2)
    rr, ri, ir, ii = parts[:, :, 0, :, 0], parts[:, :, 0, :, 1], parts[:, :, 1, :, 0], parts[:, :, 1, :, 1]
    return torch.complex(rr + ii, ir - ri), torch.complex(rr - ii, ir + ri)


def _eigenbasis(hermitian: Tensor, symmetric: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvalues ``λ`` `(F, n)` (clamped at 0) and eigenvectors ``Q`` `(F, n, n)` of the Hermitian
    moment `(F, n, n)`, and the diagonal ``α_a = q_aᴴ S q̄_a`` `(F, n)` of the symmetric moment ``S`` in
    that basis, clamped to ``|α_a| <= λ_a`` (true in exact arithmetic by Cauchy–Schwarz) so that the
    block stays PSD."""
    values, vectors = torch.linalg.eigh(hermitian)
    values = values.clamp_min(0)
    pseudo = torch.einsum("fia,fij,fja->fa", vectors.conj(), symmetric, vectors.conj())
    magnitude = pseudo.abs()
    return values, vectors, pseudo * torch.where(magnitude > values, values / magnitude, 1.0)


class SpectralKroneckerBlock:
    """K-FAC of one :class:`SpectralConv` weight: a widely linear Kronecker structure per kept mode.

    Per mode ``½ (H_A ⊗ H_B) u + ½ (S_A ⊗ S_B) ū``, the conjugate-linear part kept on the diagonal of
    the eigenbasis of ``H_A ⊗ H_B`` (see the module docstring).

    Acts on the weight's flattened real view `(*kept, i, o, 2)`: block-diagonal over the ``F`` modes,
    each block over `(i, o, 2)` (real, imaginary) row-major. In the basis ``q_a ⊗ p_b`` the coordinate
    ``c_ab`` is rotated by ``ω̄_ab = e^{-i arg(α_a β_b) / 2}``; then the real part is scaled by
    ``e₊ = ½ (λ_a μ_b + |α_a β_b|)`` and the imaginary part by ``e₋ = ½ (λ_a μ_b − |α_a β_b|)``, the
    eigenvalues of the block.

    Args:
        names: ``(weight,)``, the weight's name in ``model.named_parameters()``.
        input_factor: ``A`` `(F, 2i, 2i)`: per mode ``(1/R) Σ x̃ x̃ᵀ`` of the real views ``x̃`` of the
            input coefficients (``Re``, ``Im`` of each channel in turn); symmetric PSD.
        output_factor: ``B`` `(F, 2o, 2o)`: per mode ``Σ ĝ ĝᵀ`` of the real views of the gradients at
            the output coefficients; symmetric PSD.
    """

    def __init__(self, names: Sequence[str], input_factor: Tensor, output_factor: Tensor) -> None:
        if len(names) != 1:
            raise ValueError(f"names: expected (weight,); got {tuple(names)}")
        for label, factor in (("input_factor", input_factor), ("output_factor", output_factor)):
            if factor.dim() != 3 or factor.shape[1] != factor.shape[2] or factor.shape[1] % 2:
                raise ValueError(f"{label}: expected a stack of square matrices of even size (F, 2n, 2n); "
                                 f"got shape {tuple(factor.shape)}")
        if input_factor.shape[0] != output_factor.shape[0]:
            raise ValueError(f"output_factor: expected {input_factor.shape[0]} modes like input_factor; "
                             f"got {output_factor.shape[0]}")
        if input_factor.dtype != output_factor.dtype or input_factor.device != output_factor.device:
            raise ValueError(f"output_factor: expected the dtype and device of input_factor ({input_factor.dtype}, "
                             f"{input_factor.device}); got ({output_factor.dtype}, {output_factor.device})")
        self.names = tuple(names)
        self.input_factor = input_factor
        self.output_factor = output_factor
        self.modes = input_factor.shape[0]
        self.in_features = input_factor.shape[1] // 2
        self.out_features = output_factor.shape[1] // 2
        self.size = 2 * self.modes * self.in_features * self.out_features
        self.dtype, self.device = input_factor.dtype, input_factor.device

    @cached_property
    def _bases(self) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """``(λ, Q_A, α)`` of the input side (the moments of ``x̄``) and ``(μ, Q_B, β)`` of the output side."""
        hermitian, symmetric = complex_moments(self.input_factor)
        return _eigenbasis(hermitian.conj(), symmetric.conj()), _eigenbasis(*complex_moments(self.output_factor))

    @cached_property
    def _spectrum(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``Q_A`` `(F, i, i)`, ``Q_B`` `(F, o, o)`, and `(F, i, o)`: the phases ``ω``, the eigenvalues ``e₊``, ``e₋``."""
        (a_values, a_vectors, a_pseudo), (b_values, b_vectors, b_pseudo) = self._bases
        circular = a_values[:, :, None] * b_values[:, None, :]
        pseudo = a_pseudo[:, :, None] * b_pseudo[:, None, :]
        phase = torch.polar(torch.ones_like(circular), pseudo.angle() / 2)
        return a_vectors, b_vectors, phase, (circular + pseudo.abs()) / 2, (circular - pseudo.abs()) / 2

    def _coordinates(self, V: Tensor) -> Tensor:
        """Columns `(size, k)` → rotated complex coordinates ``ω̄ ⊙ Q_Aᴴ U Q̄_B`` `(k, F, i, o)`."""
        a_vectors, b_vectors, phase, *_ = self._spectrum
        k = V.shape[1]
        U = torch.view_as_complex(V.T.reshape(k, self.modes, self.in_features, self.out_features, 2).contiguous())
        return phase.conj() * (a_vectors.mH @ U @ b_vectors.conj())

    def _vectors(self, C: Tensor) -> Tensor:
        """Inverse of :meth:`_coordinates`: `(k, F, i, o)` → `(size, k)`."""
        a_vectors, b_vectors, phase, *_ = self._spectrum
        U = a_vectors @ (phase * C) @ b_vectors.mT
        return torch.view_as_real(U).reshape(C.shape[0], -1).T

    def _scaled(self, V: Tensor, plus: Tensor, minus: Tensor) -> Tensor:
        """``V`` with the real parts of its coordinates scaled by ``plus``, the imaginary parts by ``minus``."""
        C = self._coordinates(V)
        return self._vectors(torch.complex(C.real * plus, C.imag * minus))

    def eigenvalues(self) -> Tensor:
        """The block's `(size,)` eigenvalues: ``e₊`` of every (mode, a, b), then ``e₋`` of every one."""
        *_, plus, minus = self._spectrum
        return torch.cat((plus.reshape(-1), minus.reshape(-1)))

    def apply_function(self, function: Callable[[Tensor], Tensor], V: Tensor) -> Tensor:
        """``f(G) V`` for `(size, k)` ``V``, ``function`` applied elementwise to the eigenvalues (block's dtype)."""
        *_, plus, minus = self._spectrum
        return self._scaled(V, function(plus), function(minus))

    def matmat(self, V: Tensor) -> Tensor:
        """The block times `(size, k)` ``V``."""
        return self.apply_function(lambda values: values, V)

    def diagonal(self) -> Tensor:
        """The exact diagonal `(size,)`: ``½ (h_i m_o ± Re(s_i n_o))`` for the (real, imaginary) part of
        ``W_io``, with ``h = Σ_a λ_a |q_a|²``, ``s = Σ_a α_a q_a²`` and ``m``, ``n`` alike from ``(μ, p, β)``."""
        (a_values, a_vectors, a_pseudo), (b_values, b_vectors, b_pseudo) = self._bases
        circular = torch.einsum("fia,fa->fi", a_vectors.abs().square(), a_values)[:, :, None] * torch.einsum(
            "fob,fb->fo", b_vectors.abs().square(), b_values)[:, None, :]
        pseudo = (torch.einsum("fia,fa->fi", a_vectors.square(), a_pseudo)[:, :, None] * torch.einsum(
            "fob,fb->fo", b_vectors.square(), b_pseudo)[:, None, :]).real
        return (torch.stack((circular + pseudo, circular - pseudo), dim=-1) / 2).reshape(-1)

    def solve(self, V: Tensor, damping: float) -> Tensor:
        """``(G + δ I)⁻¹ V`` for `(size, k)` ``V``."""
        return self.apply_function(lambda values: 1 / (values + damping), V)

    def logdet(self, damping: float) -> Tensor:
        """``log det(G + δ I)``, a 0-d tensor."""
        return torch.log(self.eigenvalues() + damping).sum()


Block = Union[KroneckerBlock, SpectralKroneckerBlock]


class KroneckerOperator(LinearOperator):
    """Block-diagonal `(P, P)` curvature with one Kronecker-factored block per layer.

    The blocks are :class:`KroneckerBlock` ``B ⊗ A`` (linear and pointwise layers) and
    :class:`SpectralKroneckerBlock` (spectral layers). Products, the diagonal and ``to_dense`` are
    exact for the Kronecker-factored matrix ``K``. :meth:`solve` and :meth:`logdet` treat
    ``K + δ I`` exactly (no factor-wise damping heuristic) through eigendecompositions of the
    factors, computed once and reused for every ``δ``; for ``B ⊗ A`` with ``A = Q_A Λ_A Q_Aᵀ``,
    ``B = Q_B Λ_B Q_Bᵀ``: ``(B ⊗ A + δ I)⁻¹ = (Q_B ⊗ Q_A)(Λ_B ⊗ Λ_A + δ I)⁻¹(Q_B ⊗ Q_A)ᵀ``.

    Args:
        blocks: the per-layer blocks, in parameter order.

    Attributes:
        blocks: the block of every layer.
        names: the parameter names covered, in the order of the flattened vector.
    """

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.blocks = tuple(blocks)
        if not self.blocks:
            raise ValueError("blocks: expected at least one KroneckerBlock; got none")
        kinds = {(block.dtype, block.device) for block in self.blocks}
        if len(kinds) > 1:
            raise ValueError(f"blocks: expected factors of one dtype on one device; got {sorted(map(str, kinds))}")
        self.names = tuple(name for block in self.blocks for name in block.names)
        super().__init__(
            sum(block.size for block in self.blocks),
            lambda v: self._blockwise("matmat", v.unsqueeze(1))[:, 0],
            dtype=self.blocks[0].dtype,
            device=self.blocks[0].device,
            diagonal=lambda: torch.cat([block.diagonal() for block in self.blocks]),
            matmat=lambda V: self._blockwise("matmat", V),
        )

    def _blockwise(self, method: str, V: Tensor, *args: float) -> Tensor:
        """Each block's ``method`` on its rows of `(P, k)` ``V``, stacked."""
        pieces = V.split([block.size for block in self.blocks])
        return torch.cat([getattr(block, method)(piece, *args) for block, piece in zip(self.blocks, pieces)])

    def solve(self, v: Tensor, damping: float) -> Tensor:
        """``(K + δ I)⁻¹ v``.

        Args:
            v: `(P,)` or `(P, k)`.
            damping: ``δ >= 0`` (``δ = 0`` only for nonsingular factors), e.g. a prior precision.

        Returns:
            A tensor shaped like ``v``, in the operator's dtype.
        """
        check_damping(damping)
        if v.dim() not in (1, 2) or v.shape[0] != self.size:
            raise ValueError(f"v: expected shape ({self.size},) or ({self.size}, k); got {tuple(v.shape)}")
        V = v.to(self.dtype)
        result = self._blockwise("solve", V if v.dim() == 2 else V.unsqueeze(1), damping)
        return result if v.dim() == 2 else result[:, 0]

    def logdet(self, damping: float) -> Tensor:
        """``log det(K + δ I)``, a 0-d tensor (``δ >= 0``; ``-inf`` for a singular ``K`` at ``δ = 0``)."""
        check_damping(damping)
        return torch.stack([block.logdet(damping) for block in self.blocks]).sum()


def _variant(variant: KFACVariant | str) -> KFACVariant:
    try:
        return KFACVariant(variant)
    except ValueError:
        raise ValueError(f"variant: expected one of {[v.value for v in KFACVariant]}; got {variant!r}") from None


def _output_directions(
    variant: KFACVariant, sqrt_lambda: Tensor, n_samples: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, float]]:
    """Vectors to backpropagate from the output `(b, ...)` and the weight of each in ``B``.

    Every sample's columns are backpropagated together: samples do not interact, so the
    gradient at a sample's locations comes from its own output only.
    """
    if variant is KFACVariant.EXACT:
        flat = sqrt_lambda.reshape(sqrt_lambda.shape[0], -1)
        for m in range(flat.shape[1]):
            column = torch.zeros_like(flat)
            column[:, m] = flat[:, m]
            yield column.view(sqrt_lambda.shape), 1.0
    else:
        for _ in range(n_samples):
            z = torch.randn(sqrt_lambda.shape, generator=generator, dtype=torch.float64)
            yield z.to(sqrt_lambda) * sqrt_lambda, 1.0 / n_samples


def _input_moment(module: nn.Module, a: Tensor, s: Tensor) -> tuple[Tensor, int]:
    """``Σ ã ãᵀ`` over a layer's input rows (the sum behind ``A``) and their number: `(i [+ 1], i [+ 1])`,
    or `(F, 2i, 2i)` for a spectral layer (which computes in the dtype of its output ``s``)."""
    if isinstance(module, SpectralConv):
        rows = real_rows(spectral_coefficients(a.to(s.dtype), module.modes))  # (F, R, 2i)
        return rows.mT @ rows, rows.shape[-2]
    return layer_moment(a, module, has_trainable_bias(module))


def _output_moment(module: nn.Module, g: Tensor) -> Tensor:
    """``Σ g gᵀ`` over the rows of the gradient at a layer's output (the sum behind ``B``): `(o, o)`, or `(F, 2o, 2o)`."""
    if isinstance(module, SpectralConv):
        rows = real_rows(spectral_output_gradient(g, module.modes))
        return rows.mT @ rows
    return layer_moment(g, module, bias=False)[0]


def kfac_operator(
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    *,
    loss: str = "mse",
    noise_variance: float | Sequence[float] | Tensor = 1.0,
    variant: KFACVariant | str = KFACVariant.EXACT,
    n_samples: int = 1,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    spectral: bool = False,
) -> KroneckerOperator:
    """K-FAC (expand) of the GGN of ``loss`` summed over ``inputs``: one Kronecker-factored block per layer.

    Args:
        model: the network; its ``nn.Linear`` and :class:`Pointwise` layers with a trainable
            weight are covered (one :class:`KroneckerBlock` each), with ``spectral`` also its
            :class:`SpectralConv` layers (one :class:`SpectralKroneckerBlock` each). Samples must not
            interact; it runs in its current train/eval mode, and dropout or batch norm in train
            mode is refused (:func:`~probneural.hessian.functional_model`).
        inputs: one `(b, ...)` input batch or an iterable of them (e.g. ``(x for x, _ in loader)``);
            the factors are accumulated over all batches.
        loss: ``"mse"`` (``½ Σ (f − y)²``, summed) or ``"gaussian_nll"`` (see :mod:`probneural.hessian.ggn`).
        noise_variance: ``σ²`` for ``gaussian_nll``: a number or one value per output channel
            (axis 1 of the `(b, c, ...)` output).
        variant: ``"exact"`` or ``"mc"`` (see :class:`KFACVariant`).
        n_samples: Monte-Carlo vectors per batch (``"mc"`` only).
        seed: seed of the Monte-Carlo vectors.
        dtype: ``None`` for the model's dtype; ``torch.float64`` builds the factors from a
            float64 copy of the parameters, inputs and buffers (forward, backward and sums in
            float64, also for a float32 model).
        spectral: also cover the spectral weights (opt-in: their blocks are not of the form
            ``B ⊗ A``, see the module docstring, so code that reads ``input_factor`` and
            ``output_factor`` as such asks for them explicitly).

    Returns:
        A :class:`KroneckerOperator` over the covered parameters, in the order of
        ``model.named_parameters()``.

    Raises:
        ValueError: no covered layer, an unknown ``loss`` or ``variant``, a bad ``n_samples``,
            no input batch, an unbatched output, or a covered layer that never ran.
    """
    variant = _variant(variant)
    check_int("n_samples", n_samples)
    check_int("seed", seed, 0)
    if variant is KFACVariant.MC and n_samples < 1:
        raise ValueError(f"n_samples: expected at least 1 Monte-Carlo sample; got {n_samples}")
    if variant is KFACVariant.EXACT and n_samples != 1:
        raise ValueError(f"n_samples: only variant 'mc' draws samples; got n_samples={n_samples} with 'exact'")
    warn_unused({"seed": seed}, {"seed": 0}, ["seed"], used=variant is KFACVariant.MC, because="with variant='mc'")
    types = LAYER_TYPES + ((SpectralConv,) if spectral else ())
    layers = trainable_layers(model, types)
    if not layers:
        kinds = "nn.Linear, Pointwise or SpectralConv" if spectral else "nn.Linear or Pointwise"
        raise ValueError(f"model: expected a trainable {kinds} layer; {type(model).__name__} has none")
    generator = torch.Generator().manual_seed(seed)
    input_sums: dict[str, Tensor] = {}
    output_sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(layers, 0)
    for x in batches(inputs):
        model_fn, params = functional_model(model, x)
        params = tuple(p.requires_grad_() for p in cast(params, dtype))
        with recording(layers) as records, torch.enable_grad():
            output = model_fn(params)
        if output.dim() < 2:
            raise ValueError(f"model: expected a batched output (b, c, ...); got shape {tuple(output.shape)}")
        sqrt_lambda = loss_hessian_sqrt(loss, output, noise_variance).expand_as(output)
        calls = [(name, a, s) for name, recorded in records.items() for a, s in recorded]
        for name, a, s in calls:
            moment, count = _input_moment(layers[name], a.detach(), s)
            input_sums[name] = input_sums.get(name, 0) + moment
            counts[name] += count
        for direction, weight in _output_directions(variant, sqrt_lambda, n_samples, generator):
            grads = torch.autograd.grad(
                output, [s for *_, s in calls], direction, retain_graph=True, materialize_grads=True
            )
            for (name, _, _), g in zip(calls, grads):
                output_sums[name] = output_sums.get(name, 0) + weight * _output_moment(layers[name], g)
    if not any(counts.values()):
        raise ValueError("inputs: expected at least one input batch; got none")
    idle = [name for name, count in counts.items() if count == 0]
    if idle:
        raise ValueError(f"model: layers {idle} did not run on the inputs; K-FAC covers only layers that run")
    return KroneckerOperator(
        [
            (SpectralKroneckerBlock if isinstance(module, SpectralConv) else KroneckerBlock)(
                parameter_names(name, module), input_sums[name] / counts[name], output_sums[name]
            )
            for name, module in layers.items()
        ]
    )
