"""The Fourier neural operator (Li et al., ICLR 2021) in 1, 2 and 3 spatial dimensions."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probneural.operators.activations import ACTIVATIONS, gelu
from probneural.operators.dropout import ChannelDropout
from probneural.operators.pointwise import Pointwise
from probneural.operators.second_order import fourier_layer_product, fuses, projection_fuses, projection_product
from probneural.operators.spectral import SpectralConv
from probneural.validation import check_int, check_positive_ints

__all__ = ["DROPOUT_LAYERS", "FNO", "positional_grid"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = ACTIVATIONS  # F.gelu etc.; see activations.py
_GRIDS = ("nodes", "periodic")
DROPOUT_LAYERS = ("all", "projection")


def positional_grid(x: Tensor, kind: str) -> Tensor:
    """Coordinate channels for a field ``x`` of shape `(b, c, *spatial)`.

    Args:
        x: `(b, c, *spatial)` field; only its shape, dtype and device are used.
        kind: ``"nodes"`` for ``x_i = i / (n - 1)`` (both ends of [0, 1], e.g. Darcy) or
            ``"periodic"`` for ``x_j = j / n`` on the periodic unit interval.

    Returns:
        `(b, d, *spatial)` coordinates, channel ``k`` varying along spatial axis ``k``.
    """
    if kind not in _GRIDS:
        raise ValueError(f"kind: expected one of {_GRIDS}; got {kind!r}")
    b, _, *spatial = x.shape
    axes = []
    for n in spatial:
        if kind == "nodes":
            axes.append(torch.linspace(0.0, 1.0, n, dtype=x.dtype, device=x.device))
        else:
            axes.append(torch.arange(n, dtype=x.dtype, device=x.device) / n)
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return mesh.unsqueeze(0).expand(b, *mesh.shape)


class FNO(nn.Module):
    """Fourier neural operator: lifting, Fourier layers, projection.

    Each Fourier layer computes ``act(K(h) + W h)`` with ``K`` a :class:`SpectralConv` and
    ``W`` a pointwise skip path (no activation after the last layer), as in the paper.
    With ``dropout > 0`` a :class:`~probneural.operators.dropout.ChannelDropout` follows the hidden
    activations (those of the Fourier layers and the projection's, or only the projection's), the
    stochastic operator of MC dropout and probabilistic neural operators (``probneural.uq.dropout``):
    it drops whole channels of each field, one draw of the next layer's weights per function, so
    stochastic passes are coherent function draws (a mask per grid point would add spatially
    white noise).

    Args:
        in_channels: channels of the input function.
        out_channels: channels of the output function.
        modes: kept Fourier modes per spatial axis; ``len(modes)`` sets the dimension (1-3).
        width: channels of the hidden representation.
        n_layers: number of Fourier layers.
        projection_channels: hidden channels of the two-layer pointwise projection.
        positional_grid: append coordinate channels to the input: ``"nodes"``
            (``x_i = i/(n-1)``), ``"periodic"`` (``x_j = j/n``) or ``None``.
        padding: domain padding for non-periodic problems, as a fraction of each axis
            (zeros appended after the lifting, cropped before the projection). Rounded to whole
            points per grid (as neuraloperator does), so the padded period differs slightly between
            resolutions (70/64 against 141/128 at 0.1): zero-shot outputs carry that mismatch.
        activation: ``"gelu"``, ``"relu"``, ``"silu"`` or ``"tanh"``.
        cpu_chunk_bytes: on CPU, the batch is processed in chunks whose widest activation
            stays below this many bytes (``None``: never chunk). glibc hands buffers above
            32 MB back to the OS after every use, so larger temporaries cost a page fault per
            4 KB on each touch; chunking keeps them in the heap (a training step at batch 16,
            64², projection 128 runs 1.6-2× faster). The result agrees to rounding (1e-7 in
            float32: the matrix products block differently), dropout draws included (drawn for
            the whole batch first, :meth:`dropout_masks`); CUDA is never chunked.
        dropout: probability of dropping a channel of a field after every hidden activation (one
            draw per sample and channel), in [0, 1); at ``0`` it is an
            identity (outputs are exactly those of an FNO without the option). Dropout has no
            weights, so state dicts do not depend on it.
        dropout_layers: where dropout acts: ``"all"`` hidden activations, or only the
            ``"projection"``'s (before the linear read-out, so the mean over dropout masks is
            exactly the dropout-free output given the features).

    Shapes:
        input `(b, in_channels, *spatial)` with at least ``2 * modes[i]`` points on axis ``i``;
        output `(b, out_channels, *spatial)`. The same weights run on any such grid.
    """

    EXECUTION_OPTIONS = ("cpu_chunk_bytes",)
    """Options that change how the operator runs, not what it computes (up to rounding): a checkpoint
    resumes across them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: Sequence[int],
        width: int = 32,
        n_layers: int = 4,
        *,
        projection_channels: int = 128,
        positional_grid: str | None = "nodes",
        padding: float = 0.0,
        activation: str = "gelu",
        cpu_chunk_bytes: int | None = 16 * 2**20,
        dropout: float = 0.0,
        dropout_layers: str = "all",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                            ("n_layers", n_layers), ("projection_channels", projection_channels)):
            check_int(name, value, 1)
        modes = check_positive_ints("modes", modes)
        if not 1 <= len(modes) <= 3:
            raise ValueError(f"modes: expected 1 to 3 spatial axes; got {modes}")
        if positional_grid not in (*_GRIDS, None):
            raise ValueError(f"positional_grid: expected one of {_GRIDS} or None; got {positional_grid!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}; got {activation!r}")
        if not 0.0 <= padding < 1.0:
            raise ValueError(f"padding: expected a fraction in [0, 1); got {padding}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1); got {dropout}")
        if dropout_layers not in DROPOUT_LAYERS:
            raise ValueError(f"dropout_layers: expected one of {DROPOUT_LAYERS}; got {dropout_layers!r}")
        if cpu_chunk_bytes is not None and cpu_chunk_bytes < 1:
            raise ValueError(f"cpu_chunk_bytes: expected a positive number of bytes or None; got {cpu_chunk_bytes}")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            modes=list(modes),
            width=width,
            n_layers=n_layers,
            projection_channels=projection_channels,
            positional_grid=positional_grid,
            padding=padding,
            activation=activation,
            cpu_chunk_bytes=cpu_chunk_bytes,
            dropout=dropout,
            dropout_layers=dropout_layers,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        self.grid = positional_grid
        self.padding = padding
        self.act = _ACTIVATIONS[activation]
        self.dropout = ChannelDropout(dropout) if dropout > 0 else nn.Identity()
        self.hidden_dropout = self.dropout if dropout_layers == "all" else nn.Identity()
        self.cpu_chunk_bytes = cpu_chunk_bytes
        grid_channels = len(modes) if positional_grid else 0
        self.lifting = Pointwise(in_channels + grid_channels, width)
        self.spectral = nn.ModuleList(SpectralConv(width, width, modes) for _ in range(n_layers))
        self.skips = nn.ModuleList(Pointwise(width, width) for _ in range(n_layers))
        self.projection_hidden = Pointwise(width, projection_channels)
        self.projection_out = Pointwise(projection_channels, out_channels)

    @property
    def dim(self) -> int:
        return len(self.modes)

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` naming what was expected unless ``x`` fits this operator."""
        if not isinstance(x, Tensor):
            raise ValueError(f"x: expected a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point tensor (the operator's {self.lifting.weight.dtype}); "
                             f"got {x.dtype}")
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"x: expected shape (batch, {self.in_channels}, {self.dim} spatial axes) for a "
                f"{self.dim}-D FNO; got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} input channels; got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"x: expected at least one sample; got shape {tuple(x.shape)}")
        dtype = self.lifting.weight.dtype
        half = x.dtype in (torch.float16, torch.bfloat16)
        if x.dtype != dtype and not (half and torch.is_autocast_enabled(x.device.type)):
            raise ValueError(f"x: expected the operator's dtype {dtype}; got {x.dtype} (cast one to the other, "
                             "or, for half precision, run under the precision policy's autocast)")
        spatial = tuple(x.shape[2:])
        needed = tuple(2 * m for m in self.modes)
        if any(n < r for n, r in zip(spatial, needed)):
            raise ValueError(
                f"x: grid {spatial} is too coarse for modes {self.modes}; need at least {needed} points per axis"
            )

    def pad_widths(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Points appended to each spatial axis by the domain padding."""
        return tuple(int(round(self.padding * n)) for n in spatial)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden representation, before the projection.

        Args:
            x: `(b, in_channels, *spatial)` input function.

        Returns:
            `(b, width, *spatial)` per-point features (posterior heads build on these).
        """
        last = len(self.spectral) - 1
        return self.unpad(self.fourier_layer(last, self.hidden(x, last)), x.shape[2:])

    def hidden(self, x: Tensor, n_layers: int) -> Tensor:
        """The representation after the lifting and the first ``n_layers`` Fourier layers, on the padded grid.

        Args:
            x: `(b, in_channels, *spatial)` input function.
            n_layers: Fourier layers to apply, ``0 <= n_layers <= len(self.spectral)``.

        Returns:
            `(b, width, *padded)`; :meth:`unpad` crops it back to ``spatial``.
        """
        self.check_input(x)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 0 <= n_layers <= len(self.spectral):
            raise ValueError(f"n_layers: expected an int in [0, {len(self.spectral)}]; got {n_layers!r}")
        if self.grid is not None:
            x = torch.cat((x, positional_grid(x, self.grid)), dim=1)
        h = self.lifting(x)
        pads = self.pad_widths(x.shape[2:])
        if any(pads):
            h = F.pad(h, [p for n in reversed(pads) for p in (0, n)])
        for i in range(n_layers):
            h = self.fourier_layer(i, h)
        return h

    def fourier_layer(self, i: int, h: Tensor) -> Tensor:
        """Fourier layer ``i`` on `(b, width, *padded)`: ``K_i(h) + W_i h``, then activation and dropout unless last.

        Inside a forward-over-reverse Hessian-vector product the layer runs as one
        :class:`~probneural.operators.second_order.FourierLayerProduct` when its activation is GELU or
        it has none (the last layer; see :func:`~probneural.operators.second_order.fuses`).
        """
        last = i == len(self.spectral) - 1
        conv, skip = self.spectral[i], self.skips[i]
        if (last or self.act is gelu) and fuses(h, conv, skip):
            h = fourier_layer_product(h, conv, skip, activate=not last)
        else:
            h = conv(h) + skip(h)
            h = h if last else self.act(h)
        return h if last else self.hidden_dropout(h)

    def unpad(self, h: Tensor, spatial: Sequence[int]) -> Tensor:
        """Crop `(b, c, *padded)` to the unpadded grid `(b, c, *spatial)` (a no-op without padding)."""
        pads = self.pad_widths(spatial)
        if not any(pads):
            return h
        return h[(..., *(slice(0, n) for n in spatial))]

    def project(self, h: Tensor) -> Tensor:
        """Pointwise projection of features `(b, width, *spatial)` to `(b, out_channels, *spatial)`.

        Inside a forward-over-reverse Hessian-vector product with GELU and no active dropout it runs
        as one :class:`~probneural.operators.second_order.ProjectionProduct`.
        """
        dropping = isinstance(self.dropout, ChannelDropout) and self.dropout.training
        if self.act is gelu and not dropping and projection_fuses(h, self.projection_hidden, self.projection_out):
            return projection_product(h, self.projection_hidden, self.projection_out)
        return self.projection_out(self.dropout(self.readout_input(h)))

    def readout_input(self, h: Tensor) -> Tensor:
        """The projection's hidden activations `(b, projection_channels, *spatial)` of features `(b, width, *spatial)`.

        What the linear read-out ``projection_out`` sees, before the projection's dropout.
        """
        return self.act(self.projection_hidden(h))

    def chunk_size(self, x: Tensor) -> int:
        """Samples per chunk for input ``x`` `(b, c, *spatial)` (see ``cpu_chunk_bytes``)."""
        if x.device.type != "cpu" or self.cpu_chunk_bytes is None:
            return x.shape[0]
        padded = 1
        for n, p in zip(x.shape[2:], self.pad_widths(x.shape[2:])):
            padded *= n + p
        widest = max(self.config["width"], self.config["projection_channels"]) * padded * x.element_size()
        return max(1, min(x.shape[0], self.cpu_chunk_bytes // widest))

    def dropout_masks(self, x: Tensor) -> list[Tensor]:
        """The dropout masks of one pass over the batch ``x``, in the order the pass applies them.

        One :meth:`ChannelDropout.draw` per dropout site (each hidden activation's, with
        ``dropout_layers="all"``, then the projection's), `(b, channels, 1, ..., 1)` in the
        parameter dtype; empty when dropout is off or in evaluation mode. :meth:`forward` draws
        them before it splits the batch into chunks, so the draws do not depend on the chunking.
        """
        if not (isinstance(self.dropout, ChannelDropout) and self.dropout.training):
            return []
        hidden = len(self.spectral) - 1 if self.hidden_dropout is self.dropout else 0
        channels = [self.config["width"]] * hidden + [self.config["projection_channels"]]
        dtype = self.lifting.weight.dtype
        return [self.dropout.draw(x.shape[0], c, x.dim() - 2, dtype, x.device) for c in channels]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        size, masks = self.chunk_size(x), self.dropout_masks(x)
        parts = []
        for start in range(0, x.shape[0], size):
            rows = slice(start, start + size)
            with self.dropout.using(masks, rows) if masks else nullcontext():
                parts.append(self.project(self.features(x[rows])))
        return parts[0] if len(parts) == 1 else torch.cat(parts)
