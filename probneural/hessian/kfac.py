"""Kronecker-factored approximate curvature (K-FAC) of the GGN for ``nn.Linear`` and :class:`Pointwise` layers.

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
(*K-FAC-expand*). Expand, not reduce, is the setting of a neural operator: the loss is a sum
over the output grid points, so the shared dimension reaches the loss instead of being pooled
away. For one sample at one location the block is exact: ``Σ_m (g_m ⊗ ã)(g_m ⊗ ã)ᵀ = B ⊗ ã ãᵀ``.
With ``A`` normalised by ``R`` and ``B`` summed, the factors follow curvlinops' ``KFACLinearOperator``
(``kfac_approx="expand"``) for a summed loss.

**Parameter layout.** Each block acts on ``[weight.flatten(); bias]`` (row-major weight
`(o, i)`, then the bias `(o,)`), the layers in the order of ``model.named_modules()``, i.e. the
order of ``model.named_parameters()`` restricted to the covered layers; other parameters (e.g.
spectral weights) are not covered. :attr:`KroneckerOperator.names` lists what is.
"""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from functools import cached_property
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from probneural.hessian.ggn import functional_model, loss_hessian_sqrt
from probneural.hessian.operator import LinearOperator
from probneural.hessian.structure import cast
from probneural.operators.pointwise import Pointwise

__all__ = ["KFACVariant", "KroneckerBlock", "KroneckerOperator", "kfac_operator"]

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


def has_trainable_bias(module: nn.Module) -> bool:
    """Whether a layer's bias exists and is trained (then it is part of the curvature)."""
    return module.bias is not None and module.bias.requires_grad


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


class KroneckerOperator(LinearOperator):
    """Block-diagonal `(P, P)` curvature with one Kronecker product ``B ⊗ A`` per layer.

    Products, the diagonal and ``to_dense`` are exact for the Kronecker-factored matrix ``K``.
    :meth:`solve` and :meth:`logdet` treat ``K + δ I`` exactly (no factor-wise damping
    heuristic) through the eigendecompositions ``A = Q_A Λ_A Q_Aᵀ``, ``B = Q_B Λ_B Q_Bᵀ``, computed
    once and reused for every ``δ``: ``(B ⊗ A + δ I)⁻¹ = (Q_B ⊗ Q_A)(Λ_B ⊗ Λ_A + δ I)⁻¹(Q_B ⊗ Q_A)ᵀ``.

    Args:
        blocks: the per-layer blocks, in parameter order.

    Attributes:
        blocks: the :class:`KroneckerBlock` of every layer.
        names: the parameter names covered, in the order of the flattened vector.
    """

    def __init__(self, blocks: Sequence[KroneckerBlock]) -> None:
        self.blocks = tuple(blocks)
        if not self.blocks:
            raise ValueError("blocks: expected at least one KroneckerBlock; got none")
        kinds = {(block.input_factor.dtype, block.input_factor.device) for block in self.blocks}
        if len(kinds) > 1:
            raise ValueError(f"blocks: expected factors of one dtype on one device; got {sorted(map(str, kinds))}")
        self.names = tuple(name for block in self.blocks for name in block.names)
        factor = self.blocks[0].input_factor
        super().__init__(
            sum(block.size for block in self.blocks),
            lambda v: self._blockwise(KroneckerBlock.matmat, v.unsqueeze(1))[:, 0],
            dtype=factor.dtype,
            device=factor.device,
            diagonal=lambda: torch.cat([block.diagonal() for block in self.blocks]),
            matmat=lambda V: self._blockwise(KroneckerBlock.matmat, V),
        )

    def _blockwise(self, method: Callable[..., Tensor], V: Tensor, *args: float) -> Tensor:
        pieces = V.split([block.size for block in self.blocks])
        return torch.cat([method(block, piece, *args) for block, piece in zip(self.blocks, pieces)])

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
        result = self._blockwise(KroneckerBlock.solve, V if v.dim() == 2 else V.unsqueeze(1), damping)
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
) -> KroneckerOperator:
    """K-FAC (expand) of the GGN of ``loss`` summed over ``inputs``: one ``B ⊗ A`` per layer.

    Args:
        model: the network; its ``nn.Linear`` and :class:`Pointwise` layers with a trainable
            weight are covered. Samples must not interact (no batch statistics); it runs in
            its current train/eval mode.
        inputs: one `(b, ...)` input batch or an iterable of them (e.g. ``(x for x, _ in loader)``);
            the factors are accumulated over all batches.
        loss: ``"mse"`` or ``"gaussian_nll"`` (see :mod:`probneural.hessian.ggn`).
        noise_variance: ``σ²`` for ``gaussian_nll``: a number or one value per output channel
            (axis 1 of the `(b, c, ...)` output).
        variant: ``"exact"`` or ``"mc"`` (see :class:`KFACVariant`).
        n_samples: Monte-Carlo vectors per batch (``"mc"`` only).
        seed: seed of the Monte-Carlo vectors.
        dtype: ``None`` for the model's dtype; ``torch.float64`` builds the factors from a
            float64 copy of the parameters, inputs and buffers (forward, backward and sums in
            float64, also for a float32 model).

    Returns:
        A :class:`KroneckerOperator` over the covered parameters.

    Raises:
        ValueError: no covered layer, an unknown ``loss`` or ``variant``, a bad ``n_samples``,
            no input batch, an unbatched output, or a covered layer that never ran.
    """
    variant = _variant(variant)
    if variant is KFACVariant.MC and n_samples < 1:
        raise ValueError(f"n_samples: expected at least 1 Monte-Carlo sample; got {n_samples}")
    if variant is KFACVariant.EXACT and n_samples != 1:
        raise ValueError(f"n_samples: only variant 'mc' draws samples; got n_samples={n_samples} with 'exact'")
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LAYER_TYPES) and module.weight.requires_grad
    }
    if not layers:
        raise ValueError(f"model: expected a trainable nn.Linear or Pointwise layer; {type(model).__name__} has none")
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
        for name, a, _ in calls:
            rows = augmented(layer_rows(a.detach(), layers[name]), has_trainable_bias(layers[name]))
            input_sums[name] = input_sums.get(name, 0) + rows.T @ rows
            counts[name] += rows.shape[0]
        for direction, weight in _output_directions(variant, sqrt_lambda, n_samples, generator):
            grads = torch.autograd.grad(
                output, [s for *_, s in calls], direction, retain_graph=True, materialize_grads=True
            )
            for (name, _, _), g in zip(calls, grads):
                rows = layer_rows(g, layers[name])
                output_sums[name] = output_sums.get(name, 0) + weight * (rows.T @ rows)
    if not any(counts.values()):
        raise ValueError("inputs: expected at least one input batch; got none")
    idle = [name for name, count in counts.items() if count == 0]
    if idle:
        raise ValueError(f"model: layers {idle} did not run on the inputs; K-FAC covers only layers that run")
    return KroneckerOperator(
        [
            KroneckerBlock(parameter_names(name, module), input_sums[name] / counts[name], output_sums[name])
            for name, module in layers.items()
        ]
    )
