"""Merge benchmark records of many runs and machines into one table and one figure.

Usage::

    python -m probneural.report DIR [DIR ...] [--out OUT]

reads every benchmark record (``*.json``, searched recursively) under the given
directories, writes ``OUT/benchmark_report.md`` (a Markdown table: rows = cases,
columns = machine · device · precision) and ``OUT/benchmark_report.png`` (grouped bars),
and prints the table. ``OUT`` defaults to the first directory. No Hydra: plain argparse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probneural.bench.merge import merge_table, plot_records, plotted_metrics
from probneural.bench.records import RecordError, read_records
from probneural.io import atomic_write

__all__ = ["main"]

TABLE_NAME = "benchmark_report.md"
FIGURE_NAME = "benchmark_report.png"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m probneural.report",
        description="Merge benchmark records (JSON) from one or more directories into a Markdown table and a PNG.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories holding benchmark records")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the first DIR)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the process exit status (0 on success)."""
    parser = _parser()
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"DIR: not a directory: {', '.join(missing)}")
    try:
        records = read_records(args.dirs)
    except RecordError as error:
        parser.error(str(error))
    if not records:
        parser.error(f"DIR: no benchmark records found under {', '.join(str(d) for d in args.dirs)}")
    out = args.out if args.out is not None else args.dirs[0]
    table = merge_table(records)
    atomic_write(out / TABLE_NAME, lambda tmp: tmp.write_text(table + "\n"))
    print(table)
    if plotted_metrics(records):
        plot_records(records, out / FIGURE_NAME)
        print(f"\n{len(records)} records -> {out / TABLE_NAME}, {out / FIGURE_NAME}", file=sys.stderr)
    else:
        print(f"\n{len(records)} records -> {out / TABLE_NAME} (no figure: none has a plotted metric)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
