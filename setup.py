"""Compiled hot-path kernels (Cython). Everything else is configured in pyproject.toml.

Each kernel is a faster twin of a pure-Python reference that stays in the package and defines
the behaviour; tests require the two to agree bit for bit. The extensions are *optional*: where
no C compiler exists the build still succeeds and the scorer runs on the reference code
(slower, same results).

Floating-point contraction is switched off so a compiled ``a * b + c`` rounds twice, exactly as
Python does (an FMA would round once and break bit-for-bit parity on CPUs that have one).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

KERNELS = [
    "models.serving._segmenter_kernel",
    "models.serving._forest_kernel",
    "models.features._event_kernel",
    "models.features._codec_kernel",
]
COMPILE_ARGS = ["-O2", "-ffp-contract=off", "-fno-fast-math"]


def extension(name: str) -> Extension:
    return Extension(
        name, [name.replace(".", "/") + ".pyx"], optional=True, extra_compile_args=COMPILE_ARGS
    )


setup(
    ext_modules=cythonize(
        [extension(name) for name in KERNELS],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
        },
        quiet=True,
    )
)
