"""The README's test commands are what CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_commands_word_for_word():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Run the tests**") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert len(commands) == 2 and "pip install -e" in commands[1] and "dataset-fashion-mnist" in commands[0]
    for command in commands:
        assert command in ci, f".ci/run does not run the README's test command:\n{command}"


def test_ci_runs_lint_format_and_type_checks():
    ci = (ROOT / ".ci" / "run").read_text()
    for check in ("ruff check clight tests benchmarks", "ruff format --check clight tests benchmarks", "mypy"):
        assert check in ci, f".ci/run does not run {check!r}"
    assert 'files = ["clight"]' in (ROOT / "pyproject.toml").read_text()  # what a bare `mypy` checks


def test_ci_builds_the_documentation_site_strictly_and_it_builds(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    text = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in text and "mkdocs build --strict --quiet" not in text  # --quiet hides what strict counts
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")]
    done = subprocess.run(build, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "own_data" / "index.html").exists()
