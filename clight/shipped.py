"""The method and model classes clight ships: the public names of ``clight`` that are
``ContinualCallback`` or ``ContinualModule`` subclasses (``clight fit --help`` lists them)."""

from __future__ import annotations

import importlib


def shipped_classes() -> dict[str, list[str]]:
    """``{"methods": [...], "models": [...]}``: class paths (``clight.EWC``), sorted. It imports
    every public module, so only ``--help`` calls it; one that needs a missing extra is left out."""
    import clight
    from clight.methods.base import ContinualCallback
    from clight.models.module import ContinualModule

    found: dict[str, list[str]] = {"methods": [], "models": []}
    for name, module in clight._LAZY.items():
        try:
            value = getattr(importlib.import_module(module), name)
        except ImportError:
            continue
        if not isinstance(value, type) or value in (ContinualCallback, ContinualModule):
            continue
        if issubclass(value, ContinualCallback):
            found["methods"].append(f"clight.{name}")
        elif issubclass(value, ContinualModule):
            found["models"].append(f"clight.{name}")
    return {kind: sorted(names) for kind, names in found.items()}
