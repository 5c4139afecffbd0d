"""The docs run as written, and the project documents itself (no pointer outside the repository)."""

import json
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


def test_llm_tasks_worked_example_runs(tmp_path, monkeypatch):
    """docs/llm_tasks.md's example as written (its files and config), on the tiny random Llama."""
    from clight.cli import main

    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```(?:jsonl|yaml) (\S+)\n(.*?)```", (ROOT / "docs" / "llm_tasks.md").read_text(), flags=re.S)
    assert [name for name, _ in blocks] == [
        "my_tasks/recipes_train.jsonl",
        "my_tasks/recipes_test.jsonl",
        "my_tasks/support.jsonl",
        "my_tasks.yaml",
    ]
    for name, text in blocks:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tiny = ["--model.init_args.model=tiny", "--data.init_args.tokenizer=char", "--data.init_args.max_length=400"]
    assert (
        main(["fit", "--config", "my_tasks.yaml", *tiny, "--model.init_args.max_new_tokens=4", "--runner.max_steps_per_task=1"])
        == 0
    )
    metrics = json.loads((tmp_path / "runs" / "my_tasks" / "metrics.json").read_text())
    assert [t["name"] for t in metrics["data"]["tasks"]] == ["recipes", "support"]
    assert [t["test"] for t in metrics["data"]["tasks"]] == [2, 2]
    assert set(metrics["scores"]) == {"exact_match", "rouge_l"}  # no labels: no label accuracy
