"""A run SIGKILLed at every write into its run folder resumes to exactly the run never killed, or
is refused with a clear message; and a run folder in use by a live run is refused to a second run.

tests/scripts/kill_every_write.py does the killing (real SIGKILLs, in forked children of one
process); these tests read its report. The kill points are every distinct state of the folder at
a write of a short run (2 tasks of digits, 2 epochs each, replay, epoch checkpoints): before each
atomic rename (the temporary file complete, the old file in place), after it, and after each
append to logs/metrics.csv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_outcome import differences

# about 40 s of CPU: 40 kills and resumes of a short run, in one process; its tests read one report,
# made once on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_kill_every_write.report")]

SCRIPT = Path(__file__).parent / "scripts" / "kill_every_write.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("kills")
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(work))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    out = work / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(work), str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_reference_run_is_whole(report):
    reference = report["reference"]
    assert reference["status"] == "finished" and len(reference["matrices"]["correct"]) == 2
    assert reference["missing_report"] == [] and reference["leftovers"] == [] and reference["task_folders"] == []


def test_every_write_is_a_kill_point(report):
    writes = {point["write"] for point in report["points"]}
    for name in (
        "config.yaml",
        "manifest.json",
        "logs/hparams.yaml",
        "checkpoints/task_0/epoch_0.ckpt",
        "checkpoints/task_1/epoch_1.ckpt",
        "checkpoints/last_task.pt",
        "metrics.json",
        "accuracy_matrix.csv",
        "plots/task_accuracy.png",
    ):
        assert f"before commit {name}" in writes, name
    assert "after commit checkpoints/last_task.pt" not in writes  # the same state as before the manifest's rename
    assert "before append logs/metrics.csv" in writes  # rows logged past the last checkpoint (cut on resume)
    assert "after commit manifest.json" in writes  # a boundary committed, its epoch checkpoints not yet removed
    assert len(report["points"]) >= 25


def test_a_run_killed_at_any_write_resumes_to_the_run_never_killed(report):
    reference, failures = report["reference"], []
    for point in report["points"]:
        after = point["after"]
        if not point["killed"]:
            failures.append(f"{point['write']}: the run was not killed there ({point['child']})")
        elif "resumed" in after:
            if differences(after["resumed"], reference):
                failures.append(f"{point['write']}: resumed, but differs in {differences(after['resumed'], reference)}")
        elif "refused" in after:
            # only a folder without a manifest (nothing trained yet) is refused; it starts afresh
            if "there is no run to resume" not in after["refused"] or "\n" in after["refused"]:
                failures.append(f"{point['write']}: refused: {after['refused']}")
            elif differences(after["restarted"], reference):
                failures.append(f"{point['write']}: restarted, but differs in {differences(after['restarted'], reference)}")
        else:
            failures.append(f"{point['write']}: {after}")
    assert not failures, "\n".join(failures)
    refused = [p["write"] for p in report["points"] if "refused" in p["after"]]
    assert refused == [p["write"] for p in report["points"][: len(refused)]]  # the first few, before the manifest
    assert len(refused) <= 4


def test_a_live_run_refuses_a_resume_and_a_second_run_and_ends_like_a_clean_one(report):
    live = report["live"]
    pid = live["pid"]
    for attempt in ("resume", "new run"):
        refused = live["attempts"][attempt]
        assert refused["error"] == "RunFolderError", refused
        assert f"is in use by a live run (PID {pid} on " in refused["message"] and "\n" not in refused["message"]
    assert live["untouched"]  # the refused attempts wrote nothing
    assert os.WIFEXITED(live["status"]) and os.WEXITSTATUS(live["status"]) == 0, live["result"]
    assert differences(live["result"], report["reference"]) == []
