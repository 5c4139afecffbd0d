"""Every notebook runs top to bottom (each is a short version of a README experiment).

A notebook whose experiment is long for a test runs with the arguments in ``SHORTER`` replaced
(same code, fewer tasks or epochs); every replaced text must be found, so the two cannot drift apart.
"""

import re
from pathlib import Path

import nbformat
import pytest
from conftest import needs_fashion_mnist
from nbclient import NotebookClient

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHORTER = {
    # 5 tasks of EfficientNet-Lite0 training and scoring: 2 tasks run the same cells
    "clr": [("SplitClasses(FashionMNIST(), num_tasks=5,", "SplitClasses(FashionMNIST(), num_tasks=2,")],
    # four methods x 15 tasks x 3 epochs is 60 fits: 2 tasks of 1 epoch run the same cells
    "plasticity": [
        ('"--data.scenario.init_args.num_tasks=15"', '"--data.scenario.init_args.num_tasks=2", "--trainer.max_epochs=1"'),
        ("window=3", "window=1"),
    ],
}


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
    for old, new in SHORTER.get(path.stem, []):
        cells = [cell for cell in nb.cells if cell.cell_type == "code" and old in cell.source]
        assert len(cells) == 1, f"{path.name}: {old!r} is not in exactly one code cell; update SHORTER"
        cells[0].source = cells[0].source.replace(old, new)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    assert any(cell.outputs for cell in nb.cells if cell.cell_type == "code")
