"""What the posterior heads (Pyro, GPyTorch) share: a frozen FNO split into trunk and head, cached per-point data.

A head replaces the end of a trained :class:`~probneural.operators.FNO` by a probabilistic model:
the trunk (lifting and the first Fourier layers) stays frozen and its output is computed once
per training sample (:class:`FrozenTrunk`); the head models the normalised targets from it.
Everything a head computes lives in the operator's normalised units (when the model is a
:class:`~probneural.train.NormalizedOperator`); :meth:`FrozenTrunk.to_data_units` maps a
normalised prediction back.

Shapes: the trunk's output is `(b, width, *grid)`. ``grid`` is the padded grid when the head
includes the last Fourier layer (``fourier_layer=True``), the output grid otherwise.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from probneural.hessian.kfac import augmented, layer_rows
from probneural.operators.fno import FNO
from probneural.uq.posterior import Batches, model_parameters, normalized_parts, switched_mode, to_data_units
from probneural.uq.prediction import Prediction

__all__ = ["FrozenTrunk", "ReadoutStatistics", "TrainingFields", "check_dtype", "without_autocast", "random_points"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtype) as a torch dtype; a ``ValueError`` otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}; got {dtype!r}")


@contextmanager
def without_autocast() -> Iterator[None]:
    """Autocast off on every device type where it is on (usable as a decorator).

    A head's fit and predictions run under it, so its posterior algebra (and the frozen trunk
    feeding it) stays in the dtypes it was asked for even when the caller runs the operator
    under mixed-precision autocast: bfloat16 kernel matrices or Cholesky factors would be useless.
    """
    with ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


@dataclass
class ReadoutStatistics:
    """Sums over every training point, in float64, that fix a Gaussian likelihood of the read-out's weights.

    Attributes:
        gram: `(i + 1, i + 1)` ``A = Σ φ̃ φ̃ᵀ`` of the read-out's augmented inputs ``φ̃ = [φ; 1]``.
        cross: `(i + 1, c)` ``Σ φ̃ rᵀ`` with ``r`` the trained head's residual (output − target).
        squares: `(c,)` ``Σ r²`` per output channel.
        count: the number of points summed over (fields × grid points).
    """

    gram: Tensor
    cross: Tensor
    squares: Tensor
    count: int


@dataclass
class TrainingFields:
    """The training set as the head sees it.

    Attributes:
        trunk: `(n, width, *grid)` trunk outputs, in the operator's dtype.
        targets: `(n, c_out, *spatial)` normalised targets, in the operator's dtype.
    """

    trunk: Tensor
    targets: Tensor

    @property
    def points(self) -> int:
        """Grid points per field."""
        return self.targets[0, 0].numel()


class FrozenTrunk:
    """A trained FNO's frozen trunk, a trainable copy of its head layers, and its normalisers.

    Args:
        model: the trained operator: an :class:`FNO` or a ``NormalizedOperator`` around one. It is
            not modified.
        fourier_layer: the head starts at the last Fourier layer (else at the projection).

    Attributes:
        operator: the FNO (shared with ``model``, used frozen).
        head_layers: deep copies of the head's layers by name: ``projection_hidden``,
            ``projection_out`` and, with ``fourier_layer``, ``spectral`` and ``skip`` (the last
            Fourier layer's), initialised at the trained weights.
    """

    def __init__(self, model: nn.Module, *, fourier_layer: bool = False) -> None:
        operator, self.x_normalizer, self.y_normalizer = normalized_parts(model)
        if not isinstance(operator, FNO):
            raise ValueError(
                f"model: posterior heads need an FNO (or a NormalizedOperator around one) to split into trunk "
                f"and head; got {type(operator).__name__}"
            )
        self.operator = operator
        self.fourier_layer = bool(fourier_layer)
        self.device, self.dtype = model_parameters(operator)
        layers = {"projection_hidden": operator.projection_hidden, "projection_out": operator.projection_out}
        if self.fourier_layer:
            layers = {"spectral": operator.spectral[-1], "skip": operator.skips[-1]} | layers
        self.head_layers = {name: copy.deepcopy(layer).requires_grad_(True) for name, layer in layers.items()}
        self.activation = operator.act

    @torch.no_grad()
    def trunk(self, x: Tensor) -> Tensor:
        """`(b, width, *grid)` trunk output of data-unit inputs ``x`` `(b, c_in, *spatial)`."""
        x = x.to(self.device, self.dtype)
        z = self.x_normalizer.encode(x) if self.x_normalizer is not None else x
        with switched_mode(self.operator, False):
            if self.fourier_layer:
                return self.operator.hidden(z, len(self.operator.spectral) - 1)
            return torch.cat([self.operator.features(chunk) for chunk in z.split(self.operator.chunk_size(z))])

    def encode_targets(self, y: Tensor) -> Tensor:
        y = y.to(self.device, self.dtype)
        return self.y_normalizer.encode(y, "y") if self.y_normalizer is not None else y

    def features(self, trunk: Tensor, spatial: tuple[int, ...], layers: dict[str, nn.Module] | None = None) -> Tensor:
        """Per-point features `(b, width, *spatial)` from a trunk output: the last Fourier layer applied if in the head.

        ``layers`` replaces :attr:`head_layers` (e.g. by modules with sampled weights).
        """
        if not self.fourier_layer:
            return trunk
        layers = self.head_layers if layers is None else layers
        return self.operator.unpad(layers["spectral"](trunk) + layers["skip"](trunk), spatial)

    def hidden_projection(self, features: Tensor, layers: dict[str, nn.Module] | None = None) -> Tensor:
        """The projection's hidden activations `(b, projection_channels, *spatial)` from per-point features."""
        layers = self.head_layers if layers is None else layers
        return self.activation(layers["projection_hidden"](features))

    def _readout_inputs(self, chunks: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Per ``(trunk, targets)`` chunk: the read-out's input `(b, i, P)` and the trained head's residual `(b, c, P)`.

        ``trunk`` `(b, width, *grid)`, ``targets`` `(b, c, *spatial)` (normalised).
        """
        for trunk, targets in chunks:
            hidden = self.hidden_projection(self.features(trunk, tuple(targets.shape[2:])))
            yield hidden.flatten(2), (self.head_layers["projection_out"](hidden) - targets).flatten(2)

    @torch.no_grad()
    def residual_variance(self, fields: TrainingFields, chunk: int = 16) -> Tensor:
        """`(c,)` mean squared residual per output channel of the trained head on ``fields`` (normalised units)."""
        total = torch.zeros(fields.targets.shape[1], dtype=torch.float64, device=self.device)
        for _, residual in self._readout_inputs(zip(fields.trunk.split(chunk), fields.targets.split(chunk))):
            total += residual.double().square().sum((0, 2))
        return total / (fields.targets[:, 0].numel())

    @torch.no_grad()
    def readout_statistics(self, loader: Batches) -> ReadoutStatistics:
        """Sufficient statistics of a Gaussian likelihood for the read-out's weights, over every point of ``loader``.

        The read-out ``projection_out`` is linear in its weights ``w_c = [W_c; b_c]`` `(i + 1,)` given its
        input ``φ`` (the projection's hidden activations, frozen unless ``fourier_layer``): the squared
        error of channel ``c`` at ``w_c = ŵ_c + d`` (``ŵ`` the trained weights) is
        ``Σ r_c² + 2 dᵀ g_c + dᵀ A d`` with ``A = Σ φ̃ φ̃ᵀ``, ``g_c = Σ φ̃ r_c``, ``φ̃ = [φ; 1]`` and
        ``r`` the trained head's residual; sums over all ``(x, y)`` batches and grid points, in
        float64, accumulated batch by batch (the trunk outputs are not kept).
        """
        readout = self.head_layers["projection_out"]
        if readout.bias is None:
            raise ValueError("model: the read-out statistics need a projection_out with a bias")
        gram = cross = squares = 0.0
        count = 0
        chunks = ((self.trunk(x), self.encode_targets(y)) for x, y in loader)
        for hidden, residual in self._readout_inputs(chunks):
            rows = augmented(layer_rows(hidden, readout).double(), bias=True)  # (b P, i + 1)
            residual = layer_rows(residual, readout).double()  # (b P, c)
            gram = gram + rows.T @ rows
            cross = cross + rows.T @ residual
            squares = squares + residual.square().sum(0)
            count += rows.shape[0]
        if count == 0:
            raise ValueError("loader: expected at least one (x, y) batch; got none")
        return ReadoutStatistics(gram, cross, squares, count)

    def collect(self, loader: Batches) -> TrainingFields:
        """Trunk outputs and normalised targets of every ``(x, y)`` batch of ``loader``, concatenated."""
        trunks, targets = [], []
        for x, y in loader:
            trunks.append(self.trunk(x))
            targets.append(self.encode_targets(y))
        if not trunks:
            raise ValueError("loader: expected at least one (x, y) batch; got none")
        return TrainingFields(torch.cat(trunks), torch.cat(targets))

    def to_data_units(self, prediction: Prediction) -> Prediction:
        """A prediction of normalised fields mapped to data units."""
        return to_data_units(prediction, self.y_normalizer)


def random_points(n_fields: int, points: int, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct random (field, point) pairs out of ``n_fields × points``, as two index tensors `(count,)`."""
    total = n_fields * points
    flat = torch.randperm(total, generator=generator)[: min(count, total)]
    return flat // points, flat % points
