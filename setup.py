"""Build script: the metadata is in pyproject.toml; this adds the compiled data path.

The hot modules of the HTTP/1.1 data path (``HOT``) can be compiled with mypyc (from mypy, our
type checker) into C extensions; the same sources run interpreted without it, with the same
behaviour (CI runs the whole suite both ways).  ``FASTINGRESS_MYPYC`` decides:

- ``1``: compile, and fail the build if that is impossible (CI's compiled stage, the Dockerfile);
- ``auto``: compile when a C compiler and Python's headers are there, else say so on stderr and
  build the interpreted package (``pip install .``: ``_build/backend.py`` sets this for wheels);
- ``0`` or unset: interpreted (editable installs: an extension beside its source would shadow
  every later edit of that source).

At run time each worker logs which data path it runs (``workers/build.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

# The modules a proxied HTTP/1.1 request runs through (workers/loop.py explains the core), and
# the modules whose classes derive from theirs (an interpreted class cannot derive from a
# compiled one).
HOT = (
    "accept", "balance", "decide", "h1conn", "h1forward", "h1pool", "h1read", "h1write", "heads",
    "llhttp", "loop", "metrics", "pathnorm", "policy", "routing", "splice", "transport",
)


def _missing_toolchain() -> str | None:
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} is not on PATH)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers} is missing; install python3-dev)"
    return None


def ext_modules() -> list[Extension]:
    mode = os.environ.get("FASTINGRESS_MYPYC", "0")
    if mode not in ("1", "auto"):
        return []
    missing = _missing_toolchain()
    if missing is not None:
        if mode == "1":
            raise SystemExit(f"FASTINGRESS_MYPYC=1: cannot compile the data path: {missing}")
        print(
            f"WARNING: fastingress: building the interpreted data path (about 1.5x the CPU per "
            f"request of the compiled one): {missing}; set FASTINGRESS_MYPYC=0 to silence this",
            file=sys.stderr,
        )
        return []
    from mypyc.build import mypycify

    return mypycify([f"workers/{name}.py" for name in HOT], opt_level="3", strict_dunder_typing=False)


if __name__ == "__main__":  # (setuptools runs it so; tests import ext_modules)
    setup(ext_modules=ext_modules())
