"""Precision as a policy: what autocasts and what stays in float32.

``bf16`` means: pointwise layers under autocast in bfloat16, FFTs and the spectral
contraction in float32 (torch has no bf16 complex FFT; the spectral layer promotes its
input), no grad scaler. ``fp16`` adds a grad scaler. ``fp64`` runs everything, parameters
included, in float64. Posterior methods are outside the policy: Laplace solves its posterior
algebra in float64 (its curvature products run in the model's dtype), the GP and Pyro heads in
their ``dtype`` option (float64 by default), all with autocast off.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import Enum
from typing import ContextManager

import torch

__all__ = ["Precision", "PrecisionPolicy", "resolve_device"]


class Precision(str, Enum):
    FP32 = "fp32"
    FP64 = "fp64"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes used by every layer for one precision setting.

    Attributes:
        name: the setting (``fp32``, ``fp64``, ``bf16``, ``fp16``).
        param_dtype: dtype of parameters and of the data fed to the model.
        autocast_dtype: dtype autocast uses for pointwise layers, or ``None`` for no autocast.
        fft_dtype: real dtype of FFTs and the spectral contraction.
        grad_scaler: whether training scales the loss (needed for fp16 only).
    """

    name: Precision
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    fft_dtype: torch.dtype
    grad_scaler: bool

    @classmethod
    def from_name(cls, name: str | Precision) -> "PrecisionPolicy":
        """The policy called ``name``: one of ``fp32``, ``fp64``, ``bf16``, ``fp16``."""
        try:
            precision = Precision(name)
        except ValueError:
            valid = ", ".join(p.value for p in Precision)
            raise ValueError(f"precision: expected one of {valid}; got {name!r}") from None
        f32, f64 = torch.float32, torch.float64
        table = {
            Precision.FP32: (f32, None, f32, False),
            Precision.FP64: (f64, None, f64, False),
            Precision.BF16: (f32, torch.bfloat16, f32, False),
            Precision.FP16: (f32, torch.float16, f32, True),
        }
        return cls(precision, *table[precision])

    def autocast(self, device: torch.device) -> ContextManager:
        """Autocast context for the forward pass on ``device`` (a no-op without autocast)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def make_grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A grad scaler, enabled only for fp16."""
        return torch.amp.GradScaler(device.type, enabled=self.grad_scaler)

    def cast_module(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """Move ``module`` to ``device`` with real tensors in ``param_dtype`` and complex ones in
        the complex dtype of the same precision (``Module.to(float32)`` would drop imaginary parts)."""
        complex_dtype = torch.complex128 if self.param_dtype == torch.float64 else torch.complex64

        def cast(t: torch.Tensor) -> torch.Tensor:
            if t.is_complex():
                return t.to(device=device, dtype=complex_dtype)
            if t.is_floating_point():
                return t.to(device=device, dtype=self.param_dtype)
            return t.to(device=device)

        return module._apply(cast)

    def as_dict(self) -> dict[str, str]:
        """Plain-string description, for records and reports."""
        return {
            "name": self.name.value,
            "param_dtype": str(self.param_dtype).removeprefix("torch."),
            "autocast_dtype": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "none",
            "fft_dtype": str(self.fft_dtype).removeprefix("torch."),
        }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device if available, else CPU; otherwise ``torch.device(device)``.

    Raises:
        ValueError: if a CUDA device is asked for and none is available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine")
    return resolved
