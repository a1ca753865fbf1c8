"""The data-engine study: every problem's validation error, generation cost, and a picture of each shift.

Run from the repository root (a few minutes on 2 CPU cores)::

    .venv/bin/python experiments/data_engine/run.py

Writes ``experiments/data_engine/{results.json, samples.png}``; README.md quotes them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import matplotlib
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import probneural
from probneural.config import register_schemas
from probneural.config.data import build_splits
from probneural.config.paths import CONFIG_DIR
from probneural.data import allen_cahn, burgers, darcy, exact, generate, kuramoto_sivashinsky, navier_stokes
from probneural.data.grf import grf_neumann, grf_periodic

OUT = Path(__file__).resolve().parent
PROBLEMS = ["darcy", "burgers", "navier_stokes", "kuramoto_sivashinsky", "allen_cahn"]
COST_SAMPLES = {"darcy": 8, "burgers": 16, "navier_stokes": 4, "kuramoto_sivashinsky": 64, "allen_cahn": 64}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def validate() -> dict[str, dict[str, float]]:
    """Each solver against an exact solution, a reference or a conserved quantity (float64)."""
    results = {}
    errors = {}
    for s in (33, 65, 129):
        a, f, u = exact.darcy_manufactured(s)
        errors[s] = relative(darcy.solve(a, f, rtol=1e-12), u)
    coefficient = darcy.coefficient(grf_neumann(4, 421, dim=2, alpha=2.0, tau=3.0, seed=11))
    fine = darcy.solve(coefficient, 1.0)[:, ::5, ::5]
    direct = darcy.solve(coefficient[:, ::5, ::5], 1.0)
    results["darcy"] = {
        "manufactured_rel_l2_s65": errors[65],
        "manufactured_order": math.log2(errors[65] / errors[129]),
        "direct_85_vs_subsampled_421_rel_l2": relative(direct, fine),
    }

    sine = torch.sin(2 * math.pi * torch.arange(1024, dtype=torch.float64) / 1024)
    small = torch.sin(2 * math.pi * torch.arange(64, dtype=torch.float64) / 64)[None]
    results["burgers"] = {
        "cole_hopf_rel_l2_s1024_t1": relative(burgers.solve(sine[None], 0.1, 1.0)[0], exact.burgers_sine(1024, 0.1, 1.0)),
        "cole_hopf_rel_l2_s64_t0.1": relative(burgers.solve(small, 0.1, 0.1)[0], exact.burgers_sine(64, 0.1, 0.1)),
        "torchdiffeq_vs_spectral_rel_l2_s64": relative(burgers.solve_mol(small, 0.1, 0.5, rtol=1e-10, atol=1e-12),
                                                       burgers.solve(small, 0.1, 0.5)),
    }

    w0, w1 = exact.taylor_green(64, 1e-3, 1.0)
    vorticity = grf_periodic(4, 64, dim=2, alpha=2.5, tau=7.0, sigma=7**0.75, seed=5)
    snapshots = navier_stokes.solve(vorticity, 1e-3, [0.5 * k for k in range(1, 11)])
    enstrophy = snapshots.square().mean(dim=(-2, -1))
    results["navier_stokes"] = {
        "taylor_green_rel_l2_s64_t1": relative(navier_stokes.solve(w0[None], 1e-3, 1.0)[0], w1),
        "max_abs_mean_vorticity": float(snapshots.mean(dim=(-2, -1)).abs().max()),
        "max_enstrophy_increase_unforced": float((enstrophy[:, 1:] - enstrophy[:, :-1]).max().clamp_min(0)),
    }

    u0 = grf_periodic(4, 176, alpha=4.0, tau=20.0, sigma=1e5, seed=6)
    coarse = kuramoto_sivashinsky.solve(u0, 10.0)
    reference = kuramoto_sivashinsky.solve(u0, 10.0, dt=kuramoto_sivashinsky.DEFAULT_DT / 8)
    results["kuramoto_sivashinsky"] = {
        "default_dt_vs_dt_over_8_rel_l2_t10": relative(coarse, reference),
        "max_abs_mean_drift": float((coarse.mean(-1) - u0.mean(-1)).abs().max()),
    }

    values = torch.tensor([-1.5, -0.3, 0.2, 0.9, 1.5], dtype=torch.float64)
    uniform = allen_cahn.solve(values[:, None].expand(-1, 64).contiguous(), [0.5, 1.0, 2.0])
    fields = grf_periodic(4, 512, alpha=2.0, tau=20.0, sigma=100.0, seed=7)
    energies = allen_cahn.energy(allen_cahn.solve(fields, [0.25 * k for k in range(1, 9)]))
    results["allen_cahn"] = {
        "uniform_exact_max_abs_error": float((uniform[..., 0] - exact.allen_cahn_uniform(values, [0.5, 1.0, 2.0])).abs().max()),
        "max_energy_increase": float((energies[:, 1:] - energies[:, :-1]).max().clamp_min(0)),
    }
    return results


def data_config(problem: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="generate", overrides=[f"data={problem}", *overrides]).data


def cost(problem: str) -> dict[str, float]:
    """Seconds per sample of ``generate`` at the data config's settings, without the cache."""
    cfg = data_config(problem, [])
    options = OmegaConf.to_container(cfg.options, resolve=True)
    n = COST_SAMPLES[problem]
    start = time.perf_counter()
    generate(problem, n=n, resolution=cfg.resolution, seed=99, progress=False, **options)
    seconds = time.perf_counter() - start
    return {"n": n, "resolution": cfg.resolution, "seconds_per_sample": seconds / n}


def picture(path: Path) -> None:
    """One row per problem (two for 2-D problems: input and output), one column per test split."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for problem in PROBLEMS:
        cfg = data_config(problem, ["data.n_train=1", "data.n_test=2", "data.n_shift=2", "data.cache_dir=null"])
        splits = {k: v for k, v in build_splits(cfg, progress=False).items() if k != "train"}
        rows.append((problem, splits))
    n_rows = sum(2 if len(next(iter(s.values())).spatial_shape) == 2 else 1 for _, s in rows)
    fig, axes = plt.subplots(n_rows, 3, figsize=(12, 2.6 * n_rows), squeeze=False)
    row = 0
    for problem, splits in rows:
        two_d = len(next(iter(splits.values())).spatial_shape) == 2
        for column, (name, ds) in enumerate(splits.items()):
            label = "in distribution" if name == "test" else name.removeprefix("shift_")
            if two_d:
                for offset, (field, kind) in enumerate(((ds.x[0, 0], "input"), (ds.y[0, -1], "output"))):
                    ax = axes[row + offset, column]
                    ax.imshow(field.float().T.numpy(), origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_title(f"{problem} · {label} · {kind}", fontsize=9)
            else:
                ax = axes[row, column]
                nodes = ds.grid[0].float()
                for k in range(len(ds)):
                    ax.plot(nodes, ds.x[k, 0].float(), color=f"C{k}", alpha=0.4, lw=1)
                    ax.plot(nodes, ds.y[k, 0].float(), color=f"C{k}", lw=1.6)
                ax.set_title(f"{problem} · {label} (thin: input, thick: output)", fontsize=9)
        row += 2 if two_d else 1
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    register_schemas()
    results = {
        "probneural_version": probneural.__version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "validation": validate(),
        "cost": {problem: cost(problem) for problem in PROBLEMS},
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    picture(OUT / "samples.png")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
