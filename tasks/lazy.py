"""Package names that import their module on first use (PEP 562), so importing a package for one
light name (status, sql, a plan) never pays for Prefect or the openai SDK behind another."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def names_from(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that finds each name of `homes` (name -> module) in its module."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(homes[name]), name)

    return __getattr__
