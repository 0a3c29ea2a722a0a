"""Public names imported on first use (PEP 562), for a package whose parts need packages installed later.

``import totalseg_engine`` must stay light (Slicer imports it at start-up, before nibabel or torch may be installed),
and so must ``totalseg_engine.imageio`` (the Slicer side imports the atomic writer and the grid mapping without
nibabel). Each package lists its names by module and gets its ``__getattr__`` and ``__dir__`` from here.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

Exports = dict[str, tuple[str, ...]]  # module (relative to the package) -> its public names


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: Exports) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package`` whose module globals are ``namespace``: a name
    is imported from its module (relative to the package) on first use and kept in the package from then on."""
    where = {name: module for module, names in exports.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no public name '{name}'")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), getattr_, dir_
