"""Merge benchmark records of many machines into one Markdown table and one figure.

Rows are benchmark cases (suite and case parameters); columns are where they ran
(device type, device name, precision; plus host, allocator or thread count when those
are what tells two columns apart). When one cell has several records (a case re-run on
the same machine), the newest one is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from probneural.bench.records import format_case_value
from probneural.io import atomic_write

__all__ = ["merge_table", "plot_records", "plotted_metrics"]

# metrics shown in a table cell, when a record has them: (metric, format)
_HEADLINE = (
    ("train_step_ms", "step {:.1f} ms"),
    ("inference_ms", "inference {:.1f} ms"),
    ("test_rel_l2", "rel L2 {:.4f}"),
    ("train_step_ratio_ours_theirs", "step ours/theirs {:.2f}"),
    ("inference_ratio_ours_theirs", "inference ours/theirs {:.2f}"),
    # data_generation
    ("speedup", "ours/reference {:.2f}×"),
    ("samples_per_s", "{:.3g} samples/s"),
    ("sample_steps_per_s", "{:.3g} sample-steps/s"),
    # hessian
    ("hvp_over_grad", "HVP/grad {:.2f}"),
    ("hvp_over_double_backward", "HVP/double backward {:.2f}"),
    ("hvp_over_double_backward_interleaved", "(interleaved {:.2f})"),
    # curvature_compare
    ("ratio_ours_theirs", "time ours/theirs {:.2f}"),
    ("max_rel_diff", "max rel diff {:.1e}"),
)
# metrics plotted, one panel each: (metric, axis label)
_PLOTTED = (
    ("train_step_ms", "training step [ms]"),
    ("inference_ms", "inference [ms]"),
    ("speedup", "ours / reference [×]"),
    ("hvp_over_double_backward", "HVP / double backward"),
    ("ratio_ours_theirs", "time ours / theirs"),
)
_DISAMBIGUATORS = ("host", "allocator", "threads")


def plotted_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics :func:`plot_records` draws a panel for that some of ``records`` (the newest per cell) have."""
    cells = _grid(records).cells.values() if records else []
    return [name for name, _ in _PLOTTED if any(isinstance(r["metrics"].get(name), (int, float)) for r in cells)]


@dataclass
class _Grid:
    """Records arranged by case (row) and environment (column); the newest record per cell."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    row_cases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    columns: list[tuple[Any, ...]] = field(default_factory=list)
    column_labels: dict[tuple[Any, ...], str] = field(default_factory=dict)
    cells: dict[tuple[tuple[str, str], tuple[Any, ...]], dict[str, Any]] = field(default_factory=dict)


def _column_key(environment: dict[str, Any]) -> tuple[Any, ...]:
    device = environment["device"]
    return (
        device["type"],
        device["name"],
        environment["precision"]["name"],
        environment.get("hostname"),
        environment.get("allocator", "default"),
        environment.get("torch_num_threads"),
    )


def _column_labels(columns: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """``"type · name · precision"``, extended by the fields that differ between columns sharing it."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for column in columns:
        groups.setdefault(" · ".join(str(part) for part in column[:3]), []).append(column)
    labels = {}
    for base, members in groups.items():
        varying = [i for i in range(3, 6) if len({m[i] for m in members}) > 1]
        for member in members:
            extra = [f"{_DISAMBIGUATORS[i - 3]}={member[i]}" for i in varying]
            labels[member] = " · ".join([base, *extra])
    return labels


def _natural(case: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of a case: numbers in numeric order, everything else as text."""
    key: list[Any] = []
    for name, value in case.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        key.append((name, 0 if number else 1, value if number else 0, "" if number else format_case_value(value)))
    return tuple(key)


def _grid(records: Sequence[dict[str, Any]]) -> _Grid:
    if not records:
        raise ValueError("records: nothing to merge; expected at least one benchmark record")
    grid = _Grid()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    columns: dict[tuple[Any, ...], None] = {}
    for record in records:
        row = (record["suite"], json.dumps(record["case"], sort_keys=True))
        column = _column_key(record["environment"])
        rows.setdefault(row, record["case"])
        columns.setdefault(column, None)
        held = grid.cells.get((row, column))
        if held is None or held["environment"].get("timestamp", "") <= record["environment"].get("timestamp", ""):
            grid.cells[(row, column)] = record
    grid.rows = sorted(rows, key=lambda row: (row[0], _natural(rows[row])))
    grid.row_cases = rows
    grid.column_labels = _column_labels(list(columns))
    grid.columns = sorted(columns, key=lambda column: grid.column_labels[column])
    return grid


def _case_label(case: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{key}={format_case_value(case[key])}" for key in keys)


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "–"
    metrics = record["metrics"]
    parts = [fmt.format(metrics[name]) for name, fmt in _HEADLINE if isinstance(metrics.get(name), (int, float))]
    return "; ".join(parts) or "(no headline metric)"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def merge_table(records: Sequence[dict[str, Any]]) -> str:
    """One Markdown table of benchmark records: rows = cases, columns = machine · device · precision.

    Cells hold the headline metrics a record has: training-step and inference time (ms),
    test relative L2, and time ratios ours/theirs (from the ``compare_neuralop`` suite).

    Args:
        records: records as returned by :func:`probneural.bench.read_records`.

    Returns:
        The table as Markdown text (no trailing newline), followed by a note counting the
        records not shown when several share a case and an environment column (the newest is).

    Raises:
        ValueError: ``records`` is empty.
    """
    grid = _grid(records)
    header = ["case", *(grid.column_labels[c] for c in grid.columns)]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in grid.rows:
        case = grid.row_cases[row]
        label = f"{row[0]} · {_case_label(case, list(case))}" if case else row[0]
        cells = [_cell(grid.cells.get((row, column))) for column in grid.columns]
        lines.append("| " + " | ".join(_escape(text) for text in [label, *cells]) + " |")
    hidden = len(records) - len(grid.cells)
    if hidden:
        lines += ["", f"{hidden} older record(s) not shown: each cell holds the newest record of its case and "
                      "environment (device, precision, host, allocator, threads)."]
    return "\n".join(lines)


def _short_row_labels(grid: _Grid) -> list[str]:
    """Row labels naming only the case parameters that vary within each suite."""
    suites = {suite for suite, _ in grid.rows}
    labels = []
    for row in grid.rows:
        suite, case = row[0], grid.row_cases[row]
        peers = [grid.row_cases[r] for r in grid.rows if r[0] == suite]
        varying = [k for k in case if len({json.dumps(p.get(k), sort_keys=True) for p in peers}) > 1]
        text = _case_label(case, varying) or suite
        labels.append(f"{suite}: {text}" if len(suites) > 1 and text != suite else text)
    return labels


def plot_records(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bar charts comparing the same cases across machines, saved as a PNG.

    One panel per timing metric present (training step, inference); in each, one group of
    bars per case and one bar per machine · device · precision. The time axis is
    logarithmic when the times span more than a factor of 20.

    Args:
        records: records as returned by :func:`probneural.bench.read_records`.
        path: the PNG file to write (atomically; parent directories are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``records`` is empty or none has a timing metric to plot.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import; Agg, no pyplot state

    grid = _grid(records)
    plotted = plotted_metrics(records)
    panels = [(name, label) for name, label in _PLOTTED if name in plotted]
    if not panels:
        raise ValueError(f"records: none has a metric to plot; expected one of {[name for name, _ in _PLOTTED]}")
    row_labels = _short_row_labels(grid)
    n_rows, n_columns = len(grid.rows), len(grid.columns)
    width = 0.8 / n_columns
    figure = Figure(figsize=(max(6.0, 0.9 * n_rows * max(1, n_columns) ** 0.5 + 2.0), 3.2 * len(panels) + 1.0))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, label) in zip(axes, panels):
        values = []
        for j, column in enumerate(grid.columns):
            xs, heights = [], []
            for i, row in enumerate(grid.rows):
                record = grid.cells.get((row, column))
                value = record["metrics"].get(name) if record else None
                if isinstance(value, (int, float)) and value > 0:
                    xs.append(i + (j - (n_columns - 1) / 2) * width)
                    heights.append(value)
            ax.bar(xs, heights, width=width, label=grid.column_labels[column])
            values.extend(heights)
        if values and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xticks(range(n_rows))
        ax.set_xticklabels(row_labels, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("benchmark: " + ", ".join(sorted({suite for suite, _ in grid.rows})))
    figure.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return path
