"""Lazy public names for the stage packages.

A stage's ``__init__`` lists its public interface, but importing it must stay cheap: the
CLI imports the configs at start-up (their defaults are the options' defaults) and must not
pay for torch. ``lazy_getattr`` gives a package a module ``__getattr__`` (PEP 562) that
imports the defining submodule on first use; the package also imports the same names under
``TYPE_CHECKING`` so that pyright and editors see them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_getattr(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: name -> ``package.<where[name]>.<name>``, cached."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    return __getattr__
