"""Straightforward per-sample NumPy/SciPy solvers: the references our batched torch solvers are benchmarked against."""
