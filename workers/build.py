"""Which build of the data path this process runs: compiled by mypyc (``setup.py``) or interpreted.

Both run the same sources; the compiled one needs about two thirds of the CPU per request.  The
answer is in ``fastingress --version``, each worker's start line and ``/status``, so a slow
deployment can tell at a glance whether its wheel was built without a C compiler.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util


def data_path() -> str:
    """``"compiled"`` when the core's modules are C extensions, else ``"interpreted"`` (found
    without importing the core, so ``--version`` stays instant)."""
    spec = importlib.util.find_spec("workers.loop")
    origin = (spec.origin if spec else None) or ""
    return "compiled" if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "interpreted"
