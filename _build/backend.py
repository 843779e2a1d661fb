"""In-tree PEP 517 backend: setuptools, plus the compiled data path for wheel builds.

``pip install .`` (the README's quick start and the Dockerfile) builds a wheel.  For wheels this
backend sets ``FASTINGRESS_MYPYC=auto`` unless it is set already (``0``: interpreted; ``1``:
compiled or fail; see ``setup.py``), and asks for the exact mypy whose mypyc compiles the hot
modules, plus what that type check reads (the runtime dependencies and type stubs); a compiled
wheel needs a C compiler at build time and nothing extra at run time.  Editable installs (``pip install -e``, what the tests
and CI's first stage use) stay interpreted: a compiled module beside its source would shadow
every later edit of that source.  ``FASTINGRESS_MYPYC=0 pip install .`` builds the pure wheel.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (re-exported hooks)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

# mypyc's output is tied to its version: pin it so every wheel compiles the same way.
MYPYC_REQUIREMENT = "mypy==2.4.1"


def _compiled() -> bool:
    return os.environ.get("FASTINGRESS_MYPYC", "1") != "0"


def _type_requirements() -> list[str]:
    """What mypyc needs to type-check the sources it compiles, as CI's mypy does: the runtime
    dependencies (their inline types) and the stub packages of the ``dev`` extra."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    stubs = [r for r in project["optional-dependencies"]["dev"] if r.startswith("types-")]
    return [*project["dependencies"], *stubs]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return [*requires, MYPYC_REQUIREMENT, *_type_requirements()] if _compiled() else requires


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    os.environ.setdefault("FASTINGRESS_MYPYC", "auto")
    name: str = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return name
