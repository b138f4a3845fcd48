"""Which compiled kernels the scorer runs.

Each ``models.<sub-package>._*_kernel`` extension (built by ``setup.py``) is the compiled twin
of Python reference code that stays in the package, and the tests hold each pair together bit
for bit.
:func:`load_kernel` imports one, or returns None -- and the reference runs -- when it was not
built (no C compiler at install time) or when ``LOAN_RECOVERY_PURE_PYTHON=1`` asks for the
reference everywhere: to rule the kernels out while investigating an incident, or to see what
they buy (``LOAN_RECOVERY_PURE_PYTHON=1 python -m bench.processor``).

>>> # built where tests run
>>> (load_kernel("features._codec_kernel") is None) == pure_python_requested()
True
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "LOAN_RECOVERY_PURE_PYTHON"


def pure_python_requested() -> bool:
    """Is ``LOAN_RECOVERY_PURE_PYTHON`` set (to anything but empty or 0)?"""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def load_kernel(name: str) -> ModuleType | None:
    """The compiled module ``models.<name>`` (e.g. ``name="serving._forest_kernel"``), or None
    when it is not built or not wanted."""
    if pure_python_requested():
        return None
    try:
        return importlib.import_module(f"models.{name}")
    except ImportError:
        return None
