"""Side-by-side tables of every UQ method evaluated on one training run (experiments/uq_darcy).

Usage::

    python experiments/uq_darcy/summarize.py RUN_DIR [--out results.md]

reads ``RUN_DIR/metrics.jsonl`` (training time) and ``RUN_DIR/uq/*/results.json`` (one per method, written
by ``python -m probneural.evaluate``) and prints Markdown tables: in distribution, under each shift, and
the coverage change from the calibration resolution to the zero-shot one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ORDER = ("laplace", "laplace_diagonal", "laplace_kfac", "laplace_low_rank", "ensemble", "mc_dropout",
         "mc_dropout_all_layers", "pno", "pno_energy", "pyro_svi", "pyro_svi_heteroscedastic", "pyro_nuts", "gp_exact", "gp_svgp",
         "conformal", "conformal_laplace")
REFERENCE = "conformal"  # a point predictor's mean is the trained operator itself


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def summarize(run_dir: Path) -> str:
    training = sum(json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    results = {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "uq").glob("*/results.json"))}
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    base = results[REFERENCE]["splits"]["test"]["rel_l2"] if REFERENCE in results else None
    shifts = sorted({s for r in results.values() for s in r["splits"] if s.startswith("shift_")})
    lines = [f"Training time of the operator: {training:.0f} s ({run_dir / 'metrics.jsonl'}).", "",
             "## In distribution (test split)", ""]
    rows = []
    for name in names:
        test = results[name]["splits"]["test"]
        change = "–" if base is None else f"{100 * (test['rel_l2'] / base - 1):+.1f} %"
        aurocs = " / ".join(_number(results[name]["splits"][s].get("ood_auroc"), 3) for s in shifts)
        fit = results[name]["fit_seconds"]
        rows.append([name, _number(test["rel_l2"]), change, _number(test["nll"]), _number(test["crps"]),
                     _number(test["energy_score"]), _number(test["coverage"], 3), _number(test["width"]),
                     _number(test["function_coverage"], 3), _number(test["calibration_error"], 3), aurocs,
                     f"{fit:.1f} s ({100 * fit / training:.1f} %)"])
    lines += _table(rows, ["method", "rel. L2", "vs operator", "NLL", "CRPS", "energy", "90 % coverage", "width",
                           "field coverage", "calib. error", "OOD AUROC (" + " / ".join(shifts) + ")",
                           "fit time (of training)"])
    for shift in shifts:
        lines += ["", f"## {shift}", ""]
        rows = [[name, *(_number(results[name]["splits"][shift][k], 4) for k in
                         ("rel_l2", "nll", "crps", "coverage", "width", "function_coverage", "ood_auroc"))]
                for name in names if shift in results[name]["splits"]]
        lines += _table(rows, ["method", "rel. L2", "NLL", "CRPS", "90 % coverage", "width", "field coverage",
                               "OOD AUROC"])
    if any("zero_shot" in r["splits"] for r in results.values()):
        lines += ["", "## Calibrated at one resolution, tested at twice it", ""]
        rows = []
        for name in names:
            splits = results[name]["splits"]
            if "zero_shot" not in splits:
                continue
            low, high = splits["test"], splits["zero_shot"]
            grid = lambda s: "×".join(map(str, s["grid"]))  # noqa: E731
            rows.append([name, f"{_number(low['coverage'], 3)} ({grid(low)})",
                         f"{_number(high['coverage'], 3)} ({grid(high)})",
                         f"{high['coverage'] - low['coverage']:+.3f}",
                         _number(low["function_coverage"], 3), _number(high["function_coverage"], 3)])
        lines += _table(rows, ["method", "coverage", "coverage at 2× resolution", "change", "field coverage",
                               "field coverage at 2×"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = summarize(args.run_dir)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
