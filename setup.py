"""Builds the optional C library of fused solver passes (probneural/data/spectral_passes.c).

Everything else is configured in pyproject.toml. The library is loaded with ctypes, not imported;
where it cannot be built (no C compiler), installation goes on without it and the solvers use
torch operations instead (probneural.data.spectral_passes).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "probneural.data._spectral_passes",
            sources=["probneural/data/spectral_passes.c"],
            depends=["probneural/data/spectral_passes_body.h"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
