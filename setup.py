"""Builds the optional C library of fused solver passes (probneural/data/spectral_passes.c).

Everything else is configured in pyproject.toml. The library is loaded with ctypes, not imported;
where it cannot be built (no C compiler; Windows, where setuptools expects a Python module), the
installation goes on without it and the solvers use torch operations instead
(probneural.data.spectral_passes, which also compares the SHA-256 of its sources, compiled in
here, with the sources next to it: the same digest as its source_digest()).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCES = [Path("probneural/data/spectral_passes.c"), Path("probneural/data/spectral_passes_body.h")]
digest = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES)).hexdigest()

setup(
    ext_modules=[
        Extension(
            "probneural.data._spectral_passes",
            sources=[str(SOURCES[0])],
            depends=[str(SOURCES[1])],
            define_macros=[("SPECTRAL_PASSES_SOURCE", f'"{digest}"')],
            # no FMA contraction: products round as torch's CPU kernels round them
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
