"""Deep ensembles (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017), registered as ``"ensemble"``.

Members are copies of the trained operator re-initialised from different seeds and trained from
scratch on the same data; their spread is the epistemic part of the predictive, and a per-channel
noise variance fitted to the residuals of the ensemble mean the aleatoric part:
``y ~ (1/M) Σ_m N(f_m(x), diag(σ²_c))``.
"""

from __future__ import annotations

import copy
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from probneural.operators.registry import build, name_of
from probneural.train.losses import LOSSES
from probneural.train.normalized import NormalizedOperator
from probneural.train.trainer import load_model
from probneural.uq.posterior import METHODS, Batches, Posterior, model_parameters, normalized_parts, switched_mode
from probneural.uq.prediction import MixturePrediction
from probneural.uq.options import checked_options
from probneural.uq.training import check_training_options, residual_variance, seeded, train_operator
from probneural.validation import check_int

__all__ = ["EnsemblePosterior", "fit_ensemble", "reinitialised_copy"]


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose operator weights are freshly initialised with ``seed``.

    A :class:`NormalizedOperator` keeps (copies of) its normalisers. A registered operator is
    rebuilt from its ``config`` (``probneural.operators.build``); any other is deep-copied and every
    submodule's ``reset_parameters()`` is called. The copy has the model's device and dtype.

    Args:
        model: the trained operator, possibly a :class:`NormalizedOperator`.
        seed: seed of the initialisation.

    Raises:
        ValueError: an unregistered operator has parameters outside modules with ``reset_parameters``.
    """
    operator, x_normalizer, y_normalizer = normalized_parts(model)
    device, dtype = model_parameters(operator)
    try:
        name: str | None = name_of(operator)
    except ValueError:
        name = None
    with seeded(seed, device):
        fresh = build(name, **operator.config) if name is not None else _reset_copy(operator)
    fresh = fresh.to(device, dtype)
    if x_normalizer is None:
        return fresh
    return NormalizedOperator(fresh, copy.deepcopy(x_normalizer), copy.deepcopy(y_normalizer))


def _reset_copy(operator: nn.Module) -> nn.Module:
    """A deep copy of an unregistered operator with every submodule's ``reset_parameters()`` called."""
    fresh = copy.deepcopy(operator)
    resettable = [m for m in fresh.modules() if callable(getattr(m, "reset_parameters", None))]
    covered = {id(p) for m in resettable for p in m.parameters(recurse=False)}
    missing = [name for name, p in fresh.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(
            f"model: cannot re-initialise {type(operator).__name__}: parameters {missing} belong to modules "
            "without reset_parameters(); register the operator with a `config` dict in "
            "probneural.operators.OPERATORS or give those modules reset_parameters()"
        )
    for module in resettable:
        module.reset_parameters()
    return fresh


@torch.no_grad()
def _member_predictions(members: list[nn.Module], x: Tensor) -> Tensor:
    """`(m, b, c_out, *spatial)` predictions of the members at ``x`` `(b, c_in, *spatial)` (in evaluation mode,
    each member's own modes restored after)."""
    device, dtype = model_parameters(members[0])
    x = x.to(device, dtype)
    predictions = []
    for member in members:
        with switched_mode(member, False):
            predictions.append(member(x))
    return torch.stack(predictions)


class EnsemblePosterior(Posterior):
    """An equal-weight mixture of the members' predictions with per-channel Gaussian noise.

    Args:
        members: trained operators, all on one device and dtype.
        noise: `(1, c_out, 1, ..., 1)` aleatoric variance per output channel.
        train_losses: per member, its mean training loss per epoch (``[]`` for a member that was
            given already trained).
    """

    def __init__(self, members: list[nn.Module], noise: Tensor, train_losses: list[list[float]]) -> None:
        self.members = members
        self.noise = noise
        self.train_losses = train_losses

    def predict(self, x: Tensor) -> MixturePrediction:
        """``MixturePrediction`` of the members' predictions `(m, b, c_out, *spatial)` and the noise."""
        return MixturePrediction(_member_predictions(self.members, x), self.noise)

    def summary(self) -> dict[str, Any]:
        return {
            "members": len(self.members),
            "noise": self.noise.flatten().tolist(),
            "train_losses": self.train_losses,
        }


def _loaded_member(run: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A member trained elsewhere, from its checkpoint, on ``device`` in ``dtype``."""
    run = Path(run)
    checkpoint = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    return load_model(checkpoint, map_location=device).to(dtype)


def _train_member(job: tuple[nn.Module, Batches, dict[str, Any]]) -> tuple[dict[str, Tensor], list[float]]:
    """Train one member (in a worker process or in place); return its state dict and losses."""
    member, loader, options = job
    losses = train_operator(member, loader, **options)
    return member.state_dict(), losses


@contextmanager
def _job_map(processes: int, jobs: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """``map`` in this process, or an ordered map over spawned processes when ``processes > 1`` and jobs > 1.

    The workers are not daemonic (a ``ProcessPoolExecutor``), so a ``DataLoader`` with workers runs in them.
    """
    if processes == 1 or jobs < 2:
        yield map
        return
    threads = max(1, torch.get_num_threads() // processes)
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(processes, jobs), mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        yield pool.map


def _check_options(options: dict[str, Any], defaults: Mapping[str, Any], on_posterior: bool) -> None:
    """The option check of :func:`fit_ensemble` (see :mod:`probneural.uq.options`), before any process starts."""
    options["members"] = check_int("members", options["members"], 1)
    options["processes"] = check_int("processes", options["processes"], 1)
    options["epochs"] = check_int("epochs", options["epochs"], 1)
    if options["loss"] not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES.names()}; got {options['loss']!r}")
    _, options["lr"], options["weight_decay"], options["seed"] = check_training_options(
        options["epochs"], options["lr"], options["weight_decay"], options["seed"])


@METHODS.register("ensemble")
@checked_options(_check_options)
def fit_ensemble(
    model: nn.Module,
    loader: Batches,
    *,
    members: int = 5,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    loss: str = "rel_l2",
    include_model: bool = True,
    seed: int = 0,
    processes: int = 1,
    member_runs: Sequence[str | Path] = (),
    progress: bool = False,
) -> EnsemblePosterior:
    """Fit a deep ensemble around a trained operator.

    Member ``k`` is :func:`reinitialised_copy` ``(model, seed + k)`` trained from scratch with
    :func:`~probneural.uq.training.train_operator` (``seed + k`` also fixes its batch order when
    ``loader`` shuffles; the CLI's loaders read in order, so there members differ by initialisation).
    Member seeds follow the run seeds of ``python -m probneural.train -m seed=...``, so ensembles
    fitted with seeds closer than ``members`` share members: space them by ``members`` (``seed=0,5,10``
    for five) for independent ensembles. ``epochs``, ``lr``, ``weight_decay`` and ``loss`` should
    match the recipe that trained ``model`` (the train and evaluate commands take them from the run,
    :func:`probneural.uq.report.follow_training_recipe`). With ``include_model`` the given model
    itself (not a copy) is member 0 and ``members − 1`` are trained. Members trained elsewhere join
    through ``member_runs`` (e.g. the runs of ``python -m probneural.train -m seed=1,2``, in parallel
    on other machines) and count towards ``members``.

    The aleatoric noise is, per output channel, the mean squared residual of the ensemble mean on
    ``loader``; on the training data it underestimates the noise (members fit part of it).

    Args:
        model: the trained operator (raw fields in and out), usually a :class:`NormalizedOperator`.
        loader: re-iterable training batches ``(x, y)``, `(b, c_in, *spatial)` and `(b, c_out, *spatial)`.
        members: ensemble size ``M >= 1``.
        epochs: training epochs per new member.
        lr: initial learning rate (cosine to 0).
        weight_decay: Adam's weight decay.
        loss: training loss, a name of :data:`probneural.train.losses.LOSSES`.
        include_model: use ``model`` as member 0 instead of training a new one.
        seed: base seed of the members' initialisation and training.
        processes: train members in this many processes (spawn context; each uses
            ``torch.get_num_threads() // processes`` threads). Results equal ``processes=1`` up to
            floating-point summation order. As with any spawned process, a script calling this
            needs an ``if __name__ == "__main__":`` guard.
        member_runs: checkpoints (files or run directories, as :func:`~probneural.train.load_model`
            reads them) of members trained elsewhere with the same recipe and other seeds.
        progress: show a progress bar over trained members.

    Returns:
        An :class:`EnsemblePosterior`.
    """
    device, dtype = model_parameters(model)
    ensemble = [model] if include_model else []
    for run in member_runs:
        ensemble.append(_loaded_member(run, device, dtype))
    if len(ensemble) > members:
        raise ValueError(f"members: expected at least the {len(ensemble)} given members (model and member_runs); "
                         f"got {members}")
    first = len(ensemble)
    ensemble += [reinitialised_copy(model, seed + k) for k in range(first, members)]
    options = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, loss=LOSSES.get(loss))
    jobs = [(member, loader, options | {"seed": seed + k}) for k, member in enumerate(ensemble) if k >= first]
    losses: list[list[float]] = [[] for _ in range(first)]
    bar = tqdm(total=len(jobs), desc="ensemble", unit="member", disable=not progress)
    with _job_map(processes, len(jobs)) as mapper:
        for (member, _, _), (state, member_losses) in zip(jobs, mapper(_train_member, jobs)):
            member.load_state_dict(state)  # a no-op for a member trained in this process
            losses.append(member_losses)
            bar.update()
            bar.set_postfix(loss=f"{member_losses[-1]:.4g}")
    bar.close()
    noise = residual_variance(lambda x: _member_predictions(ensemble, x).mean(0), loader, device=device, dtype=dtype)
    return EnsemblePosterior(ensemble, noise, losses)
