"""What a run prints is what a user can act on: no dependency's deprecation warnings, no progress
bar redrawn into a log file (a line per task instead), metrics with their units, FWT's
class-incremental zero explained; notebooks saved without this machine's paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from clight.dependency_warnings import FILTERED, filter_dependency_warnings

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/)")


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_dependency_warnings()
        warnings.warn_explicit(message, category, "x.py", 1, module=module)
    return bool(caught)


@pytest.mark.parametrize("message, category, module", FILTERED)
def test_each_filter_hides_its_warning_and_nothing_else(message, category, module):
    text = message.replace("\\", "")  # the regex's literal text
    origin = module.replace("\\", "")
    assert not _shown(text + " and more", category, origin)
    assert _shown(text, category, "clight.models.module")  # the same words from anywhere else
    assert _shown("another deprecation", category, origin)  # anything else from that module
    assert _shown(text, DeprecationWarning if category is FutureWarning else FutureWarning, origin)


@pytest.mark.slow
def test_a_piped_run_prints_no_warnings_no_redraws_and_a_line_per_task(tmp_path):
    run = tmp_path / "run"
    args = ["--trainer.max_epochs=1", f"--run_dir={run}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "clight", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *args],
        cwd=ROOT,
        env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not re.search(r"Warning|\.py:\d+:", proc.stderr), proc.stderr  # Lightning prints warnings as path:line: text
    assert "\r" not in proc.stdout + proc.stderr and "it/s" not in proc.stdout  # no progress bar
    rows = re.findall(
        r"^after task (\d)/5 \([\d.]+ s\): accuracy \(%\) on tasks 1-5: [\d.]+( [\d.]+){4}; AA [\d.]+$", proc.stderr, re.M
    )
    assert [task for task, _ in rows] == ["1", "2", "3", "4", "5"], proc.stderr  # each on one line, however long
    # the report: every metric with its unit, FWT's zero in class-incremental runs explained
    report = " ".join(proc.stdout.split())
    for key, unit in (("average_accuracy", "%"), ("backward_transfer", "pp"), ("forward_transfer", "pp")):
        assert re.search(rf"{key} │ -?[\d.]+ {unit} ", report), key
    assert "0.00 by construction in class-incremental runs" in " ".join(proc.stdout.replace("│", " ").split())
    from clight import compare_runs

    compare_runs([run], tmp_path / "compared")
    notes = (tmp_path / "compared" / "comparison.md").read_text()
    assert "0.00 by construction in class-incremental runs" in notes and "in percentage points" in notes


def test_notebooks_are_saved_without_machine_paths():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for output in cell.get("outputs", []):
                found = MACHINE_PATH.search(json.dumps(output))
                assert found is None, f"{path.name}: an output names {found.group(0)}..."
