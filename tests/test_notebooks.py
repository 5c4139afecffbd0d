"""Every notebook runs top to bottom (each is a short version of a README experiment)."""

import re
from pathlib import Path

import nbformat
import pytest
from conftest import needs_fashion_mnist
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _uses_fashion_mnist(path: Path) -> bool:
    """Whether the notebook's code, or a config it loads (``configs/NAME...``), reads Fashion-MNIST."""
    code = "".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    configs = [c for prefix in re.findall(r"configs/(\w+)", code) for c in (ROOT / "configs").glob(f"{prefix}*.yaml")]
    return any("FashionMNIST" in text or "fashion_mnist" in text for text in [code, *(c.read_text() for c in configs)])


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=needs_fashion_mnist if _uses_fashion_mnist(p) else ()) for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    assert any(cell.outputs for cell in nb.cells if cell.cell_type == "code")
