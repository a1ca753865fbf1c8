"""The posterior interface, the registry of UQ methods and :func:`fit`.

A UQ method is a function ``method(model, loader, **options) -> Posterior`` registered by name in
:data:`METHODS`; :func:`fit` looks it up, runs it and records how long fitting took.

``loader`` is any re-iterable of ``(x, y)`` batches (a ``torch.utils.data.DataLoader`` over an
:class:`~probneural.data.OperatorDataset`, or a list of tensor pairs): `(b, c_in, *spatial)` inputs
and `(b, c_out, *spatial)` targets in data units. Methods iterate it as often as they need.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from probneural.data.dataset import OperatorDataset
from probneural.data.normalizer import ChannelNormalizer
from probneural.registry import Registry
from probneural.train.normalized import NormalizedOperator
from probneural.uq.prediction import Prediction, cat
from probneural.validation import check_int

__all__ = [
    "METHODS", "Batches", "Posterior", "fit", "model_parameters", "normalized_parts", "predict_in_batches",
    "switched_mode", "to_data_units",
]

Batches = Iterable[tuple[Tensor, Tensor]]

METHODS: Registry[Callable[..., "Posterior"]] = Registry("UQ method")


class Posterior(ABC):
    """A trained operator turned into a predictive distribution over output fields.

    Attributes:
        method: the registry name it was fitted with (set by :func:`fit`).
        fit_seconds: wall-clock seconds :func:`fit` took (set by :func:`fit`).
    """

    method: str = ""
    fit_seconds: float = float("nan")

    @abstractmethod
    def predict(self, x: Tensor) -> Prediction:
        """The predictive distribution of ``y`` given ``x`` `(b, c_in, *spatial)`, at ``x``'s resolution."""

    def summary(self) -> dict[str, Any]:
        """Fitted hyperparameters and sizes worth reporting (JSON-serialisable)."""
        return {}


def fit(name: str, model: nn.Module | Posterior, loader: Batches, **options: Any) -> Posterior:
    """Fit the UQ method ``name`` to a trained operator.

    Args:
        name: a registered method (``METHODS.names()``); a wrong name lists the valid ones.
        model: the trained operator mapping `(b, c_in, *spatial)` to `(b, c_out, *spatial)` in data
            units (usually a :class:`NormalizedOperator`); ``"conformal"`` also takes a :class:`Posterior`.
        loader: re-iterable ``(x, y)`` batches: the training data, or for ``"conformal"`` a
            calibration set disjoint from it.
        **options: the method's keyword options (see its docstring); every method has defaults.

    Returns:
        The fitted :class:`Posterior`, with ``method`` and ``fit_seconds`` set.

    Raises:
        ValueError: ``loader`` is a one-shot iterator (a generator): methods pass over it more than once;
            or a data set rather than batches of it.
    """
    method = METHODS.get(name)
    if isinstance(loader, OperatorDataset):  # it iterates over single (x, y) samples without a batch axis
        raise ValueError("loader: expected re-iterable (x, y) batches; got an OperatorDataset: pass "
                         "torch.utils.data.DataLoader(dataset, batch_size=32) (or a list of (x, y) batches)")
    if isinstance(loader, Iterator):  # (iter() on a DataLoader would start its workers)
        raise ValueError("loader: expected re-iterable (x, y) batches (a list or a DataLoader); got a one-shot "
                         f"iterator ({type(loader).__name__}), which a second pass would find empty")
    began = time.perf_counter()
    posterior = method(model, loader, **options)
    posterior.fit_seconds = time.perf_counter() - began
    posterior.method = name
    return posterior


def predict_in_batches(posterior: Posterior, x: Tensor, batch_size: int = 32) -> Prediction:
    """:meth:`Posterior.predict` over `(n, c_in, *spatial)` inputs, ``batch_size`` at a time, concatenated."""
    batch_size = check_int("batch_size", batch_size, 1)
    return cat([posterior.predict(chunk) for chunk in x.split(batch_size)])


def normalized_parts(model: nn.Module) -> tuple[nn.Module, ChannelNormalizer | None, ChannelNormalizer | None]:
    """``(operator, x_normalizer, y_normalizer)`` of a :class:`NormalizedOperator`; ``(model, None, None)`` otherwise.

    Posteriors that work in the operator's normalised units (Laplace) encode inputs and targets with
    these and map their predictions back with ``Prediction.affine``.
    """
    if isinstance(model, NormalizedOperator):
        return model.operator, model.x_normalizer, model.y_normalizer
    return model, None, None


def to_data_units(prediction: Prediction, y_normalizer: ChannelNormalizer | None) -> Prediction:
    """A prediction of normalised fields mapped back to data units by ``y_normalizer`` (unchanged if ``None``)."""
    if y_normalizer is None:
        return prediction
    mean = prediction.mean
    scale = y_normalizer.decode_variance(torch.ones_like(mean[:1])).sqrt()
    return prediction.affine(scale, y_normalizer.decode(torch.zeros_like(mean[:1])))


@contextmanager
def switched_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in training (``True``) or evaluation (``False``) mode within; on exit every module of it gets
    its own previous mode back (a caller's model is never left switched, even by an exception)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, previous in modes:
            module.training = previous


def model_parameters(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model's first parameter (a ``ValueError`` for a model without parameters)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"model: expected a module with parameters; {type(model).__name__} has none")
    return parameter.device, parameter.dtype
