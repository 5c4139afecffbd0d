"""The docs run as written, and the project documents itself (no pointer outside the repository)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_contract_worked_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _python_blocks(ROOT / "docs" / "contract.md"):
        exec(compile(block, "docs/contract.md", "exec"), namespace)
    metrics = namespace["result"].metrics
    assert 0 < metrics["average_accuracy"] <= 1 and metrics["tasks_finished"] == 3
    method = namespace["L2Anchor"](strength=10.0)
    assert method.describe() == {"class": "L2Anchor", "strength": 10.0}
    assert (tmp_path / "runs" / "l2_anchor" / "metrics.json").is_file()


def test_the_repository_does_not_point_outside_itself():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".ipynb", ".toml"} and path.is_file() and name != "tests/test_docs.py":
            text = path.read_text(errors="replace")
            if "../shared" in text or "METHODS.md" in text or "DESIGN.md" in text:
                offenders.append(name)
    assert not offenders, f"these files point to documents outside the repository: {offenders}"
