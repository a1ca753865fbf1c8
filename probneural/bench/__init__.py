"""Benchmarks: suites, timing and FLOP counting, environment capture, JSON records and merged reports.

>>> from probneural import bench
>>> env = bench.capture_environment("fp32", "cpu")                          # doctest: +SKIP
>>> paths = bench.run_suite("throughput", "out/", env, resolutions=(32,))   # doctest: +SKIP
>>> print(bench.merge_table(bench.read_records(["out/"])))                  # doctest: +SKIP
"""

from probneural.bench.environment import capture_environment
from probneural.bench.merge import merge_table, plot_records
from probneural.bench.records import RECORD_FORMAT, RecordError, read_records, write_record
from probneural.bench.suites import (
    SUITES,
    compare_neuralop,
    neuralop_fno,
    run_suite,
    throughput,
)
from probneural.bench.timing import fno_forward_flops, matmul_peak_gflops, measure

# suites defined outside suites.py register themselves on import
from probneural.bench import curvature_suite, data_generation, hessian_suite  # noqa: E402,F401  isort: skip

__all__ = [
    "RECORD_FORMAT",
    "RecordError",
    "SUITES",
    "capture_environment",
    "compare_neuralop",
    "fno_forward_flops",
    "matmul_peak_gflops",
    "measure",
    "merge_table",
    "neuralop_fno",
    "plot_records",
    "read_records",
    "run_suite",
    "throughput",
    "write_record",
]
