"""The ``data_generation`` benchmark suite: our batched torch PDE solvers against per-sample NumPy/SciPy references.

Each case solves the same inputs with both and records samples (or sample-steps) per
second, their ratio and the largest relative difference between the two solutions (the
reference must agree to the solvers' accuracy, or the comparison is void). Both the solvers
and the references compute in the dtype named by the precision policy (``fp64`` or ``fp32``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from probneural.bench.baselines import burgers as burgers_reference
from probneural.bench.baselines import darcy as darcy_reference
from probneural.bench.baselines import navier_stokes as navier_stokes_reference
from probneural.bench.suites import SUITES, Case
from probneural.bench.timing import interleaved_times
from probneural.data import burgers, darcy, fftw, navier_stokes, spectral_passes
from probneural.data.grf import grf_neumann, grf_periodic
from probneural.train.precision import resolve_device
from probneural.validation import check_float, check_int

__all__ = ["data_generation"]

_DTYPES = {"fp64": torch.float64, "fp32": torch.float32}


def _relative_difference(ours: torch.Tensor, reference: np.ndarray) -> float:
    reference_t = torch.from_numpy(reference).to(torch.float64)
    ours = ours.detach().to("cpu", torch.float64)
    return float((ours - reference_t).norm() / reference_t.norm())


def _compare(
    ours: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[np.ndarray], np.ndarray],
    inputs: torch.Tensor,
    n_reference: int,
    repeats: int,
    device: torch.device,
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Time ``ours`` on the batch ``inputs`` and ``reference`` on its first ``n_reference`` samples.

    Both first run once untimed on what they are timed on (warm-up: lazy initialisation,
    allocator, caches; these runs give the solutions compared), then are timed in ``repeats``
    interleaved rounds (:func:`~probneural.bench.timing.interleaved_times`: the calls' orders cycle
    through their permutations, so over ``n!`` rounds (2, or 6 with one variant) each call comes
    first equally often), so that all see the same machine state; rates are medians over the rounds and
    ``speedup`` is their ratio (``speedup_min`` / ``speedup_max``: the extremes of the per-round
    ratios). Ours uses ``torch.get_num_threads()`` threads; the reference runs in this one process
    and thread, as a per-sample NumPy/SciPy loop does (``reference_threads``).

    ``variants`` (name → another setting of ours) run untimed once and then in the same rounds;
    they are recorded as ``{name}_samples_per_s``, ``{name}_speedup``,
    ``{name}_max_relative_difference`` (to the reference) and ``{name}_max_relative_difference_to_ours``
    (over the whole batch).
    """
    host = inputs[:n_reference].detach().cpu().numpy()  # the reference computes in this dtype
    def run_reference() -> list[np.ndarray]:
        return [reference(sample) for sample in host]

    solvers = {"ours": ours, **(variants or {})}
    solutions = {name: solver(inputs) for name, solver in solvers.items()}
    expected = run_reference()
    timed = {name: (lambda solver=solver: solver(inputs)) for name, solver in solvers.items()}
    times = interleaved_times(timed | {"reference": run_reference}, device=device, rounds=repeats, warmup=0)
    reference_s = float(np.median(times["reference"]))
    reference_rate = n_reference / reference_s
    ratios = [(inputs.shape[0] / mine) / (n_reference / theirs)
              for mine, theirs in zip(times["ours"], times["reference"], strict=True)]
    metrics: dict[str, Any] = {}
    for name in solvers:
        prefix = "" if name == "ours" else f"{name}_"
        seconds = float(np.median(times[name]))
        metrics[f"{prefix}samples_per_s"] = inputs.shape[0] / seconds
        metrics[f"{prefix}speedup"] = metrics[f"{prefix}samples_per_s"] / reference_rate
        metrics[f"{prefix}max_relative_difference"] = max(
            _relative_difference(solutions[name][k], expected[k]) for k in range(n_reference)
        )
        if name != "ours":
            metrics[f"{name}_max_relative_difference_to_ours"] = max(
                _relative_difference(solutions["ours"][k], solutions[name][k].cpu().numpy())
                for k in range(inputs.shape[0])
            )
    return metrics | {
        "seconds": float(np.median(times["ours"])),
        "reference_seconds": reference_s,
        "reference_samples_per_s": reference_rate,
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "threads": torch.get_num_threads(),
        "reference_threads": 1,
    }


@SUITES.register("data_generation")
def data_generation(
    *,
    problems: Sequence[str] = ("darcy", "burgers", "navier_stokes"),
    n_samples: int = 16,
    n_reference: int = 2,
    darcy_resolution: int = 85,
    darcy_solve_resolution: int = 421,
    burgers_resolution: int = 1024,
    burgers_solve_resolution: int = 8192,
    burgers_viscosity: float = 0.1,
    navier_stokes_resolution: int = 256,
    navier_stokes_steps: int = 20,
    repeats: int = 6,
    device: str = "auto",
    precision: str = "fp64",
    seed: int = 0,
    progress: bool = True,
) -> list[Case]:
    """Samples per second of our solvers and of per-sample NumPy/SciPy references, on the same inputs.

    * ``darcy``: a batch of ``n_samples`` two-phase coefficients (FNO-paper GRF) solved at
      ``darcy_solve_resolution`` and subsampled to ``darcy_resolution``; reference: SciPy
      sparse direct solve of the same 5-point system, one sample at a time.
    * ``burgers``: ``n_samples`` FNO-paper initial conditions at ``burgers_solve_resolution``,
      ν = ``burgers_viscosity`` (the paper's 0.1; the released script's 1e-3 keeps steep fronts, where
      trimming gains nothing), solved to T = 1 and subsampled to ``burgers_resolution``; reference: the same
      ETDRK4 scheme and step in NumPy on the whole grid, one sample at a time. Ours trims the
      grid to the modes above rounding (the default, ADR 0020); ``whole_grid_*`` records ours
      on the whole grid (``trim=False``) in the same rounds, the part of the speed-up that is
      batching and threads alone.
    * ``navier_stokes``: ``navier_stokes_steps`` time steps of the FNO-paper forced flow at
      ``navier_stokes_resolution``², ν = 1e-3, a fixed step; reference: the same scheme in
      NumPy, one sample at a time. Rates are sample-steps per second; ``fused_passes`` and ``fftw``
      record whether ours ran the C library's passes (:mod:`probneural.data.spectral_passes`) and
      FFTW's line transforms (:mod:`probneural.data.fftw`).

    Args:
        problems: which of ``darcy``, ``burgers``, ``navier_stokes`` to run.
        n_samples: batch of our solvers.
        n_reference: samples solved by the reference (its rate is per sample).
        repeats: alternating timing rounds of ours and the reference (medians are reported).
        device: where our solvers run (``auto``, ``cpu``, ``cuda``).
        precision: ``fp64`` or ``fp32``: the dtype both solvers compute in.
        seed: seed of the random inputs.
        progress: show a progress bar over the problems.

    Returns:
        One case per problem.
    """
    for name, value in (
        ("n_samples", n_samples), ("n_reference", n_reference), ("navier_stokes_steps", navier_stokes_steps),
        ("repeats", repeats),
    ):
        check_int(name, value, 1)
    if n_reference > n_samples:
        raise ValueError(f"n_reference must be <= n_samples = {n_samples}, got {n_reference}")
    # the records name the kept grids: they must be what striding the solve grids gives
    if "darcy" in problems:
        check_int("darcy_solve_resolution", darcy_solve_resolution, 3)
        if check_int("darcy_resolution", darcy_resolution, 2) and (darcy_solve_resolution - 1) % (darcy_resolution - 1):
            raise ValueError(f"darcy_resolution: expected n with (darcy_solve_resolution - 1) = "
                             f"{darcy_solve_resolution - 1} a multiple of n - 1; got {darcy_resolution}")
    if "burgers" in problems:
        check_float("burgers_viscosity", burgers_viscosity, positive=True)
        check_int("burgers_solve_resolution", burgers_solve_resolution, 1)
        if burgers_solve_resolution % check_int("burgers_resolution", burgers_resolution, 1):
            raise ValueError(f"burgers_resolution: expected a divisor of burgers_solve_resolution = "
                             f"{burgers_solve_resolution}; got {burgers_resolution}")
    if "navier_stokes" in problems:
        check_int("navier_stokes_resolution", navier_stokes_resolution, 4)
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)} for the data_generation suite, got {precision!r}")
    unknown = sorted(set(problems) - {"darcy", "burgers", "navier_stokes"})
    if unknown:
        raise ValueError(f"problems: unknown {unknown}; expected some of ['burgers', 'darcy', 'navier_stokes']")
    dtype, target = _DTYPES[precision], resolve_device(device)
    results: list[Case] = []
    for problem in tqdm(problems, desc="data_generation", disable=not progress):
        if problem == "darcy":
            stride = (darcy_solve_resolution - 1) // (darcy_resolution - 1)
            field = grf_neumann(n_samples, darcy_solve_resolution, dim=2, alpha=2.0, tau=3.0, seed=seed)
            a = darcy.coefficient(field).to(device=target, dtype=dtype)
            metrics = _compare(
                lambda x: darcy.solve(x, 1.0)[:, ::stride, ::stride],
                lambda x: darcy_reference.solve_scipy(x)[::stride, ::stride],
                a, n_reference, repeats, target,
            )
            case = {"problem": problem, "resolution": darcy_resolution, "solve_resolution": darcy_solve_resolution,
                    "reference_ordering": darcy_reference.ORDERING}
        elif problem == "burgers":
            stride = burgers_solve_resolution // burgers_resolution
            u0 = grf_periodic(n_samples, burgers_solve_resolution, alpha=2.0, tau=5.0, sigma=25.0, seed=seed)
            u0 = u0.to(device=target, dtype=dtype)
            nu = burgers_viscosity
            dt = burgers.default_dt(nu)
            metrics = _compare(
                lambda x: burgers.solve(x, viscosity=nu, t=1.0, dt=dt)[:, ::stride],
                lambda x: burgers_reference.solve_numpy(x, viscosity=nu, t=1.0, dt=dt)[::stride],
                u0, n_reference, repeats, target,
                variants={
                    "whole_grid": lambda x: burgers.solve(x, viscosity=nu, t=1.0, dt=dt, trim=False)[:, ::stride]
                },
            )
            case = {"problem": problem, "resolution": burgers_resolution, "solve_resolution": burgers_solve_resolution,
                    "viscosity": nu}
        else:
            s = navier_stokes_resolution
            w0 = grf_periodic(n_samples, s, dim=2, alpha=2.5, tau=7.0, sigma=7.0**0.75, seed=seed)
            w0 = w0.to(device=target, dtype=dtype)
            nodes = torch.arange(s, dtype=dtype, device=target) / s
            forcing = navier_stokes.fno_forcing(nodes[:, None], nodes[None, :])
            dt = 1e-3
            t = navier_stokes_steps * dt
            metrics = _compare(
                lambda x: navier_stokes.solve(x, 1e-3, t, forcing=forcing, dt=dt),
                lambda x: navier_stokes_reference.solve_numpy(
                    x, 1e-3, t, forcing=forcing.cpu().numpy(), dt=dt
                ),
                w0, n_reference, repeats, target,
            )
            for key in ("samples_per_s", "reference_samples_per_s"):
                metrics[key.replace("samples", "sample_steps")] = metrics.pop(key) * navier_stokes_steps
            state = torch.zeros((), dtype=torch.promote_types(dtype, torch.complex64), device=target)
            case = {"problem": problem, "resolution": s, "steps": navier_stokes_steps, "dt": dt,
                    "fused_passes": spectral_passes.available(state), "fftw": fftw.available(state)}
        case |= {"n_samples": n_samples, "n_reference": n_reference}
        results.append((case, metrics))
    return results
