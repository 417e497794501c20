"""Lazy public names for the stage packages.

A stage's ``__init__`` lists its public interface, but importing it must stay cheap: the
CLI imports the configs at start-up (their defaults are the options' defaults) and must not
pay for torch. The package imports its lazy names under ``if TYPE_CHECKING:`` (so that
pyright and editors see them) and nowhere else: ``lazy_getattr`` gives it a module
``__getattr__`` (PEP 562) that reads that block once, on the first lazy name asked for, and
imports the defining submodule of each name on first use.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_getattr(package: str) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: name -> ``package.<submodule>.<name>`` as its
    ``TYPE_CHECKING`` block imports it, cached."""
    where: dict[str, str] = {}

    def __getattr__(name: str) -> Any:
        if not where:
            where.update(type_checking_imports(package))
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    return __getattr__


def type_checking_imports(package: str) -> dict[str, str]:
    """Name -> submodule of what ``package``'s ``__init__`` imports from its own submodules
    under ``if TYPE_CHECKING:`` (read from its source: about a millisecond, once)."""
    import ast
    from pathlib import Path

    source = sys.modules[package].__file__
    assert source is not None, package
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                module = stmt.module if isinstance(stmt, ast.ImportFrom) else None
                if isinstance(stmt, ast.ImportFrom) and module and module.startswith(package + "."):
                    for alias in stmt.names:
                        found[alias.asname or alias.name] = module[len(package) + 1:]
    return found
