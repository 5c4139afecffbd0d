"""Two CPU processes (DDP over gloo) against one: same matrix, same replay memory on every rank,
a validation accuracy that sums correct and total over the ranks before dividing, and a DDP run
killed inside a task that resumes from its epoch checkpoint to the same weights."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clight import SplitClasses, TaskSequence

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).parent / "scripts" / "ddp_sequence.py"


def _launch(out: Path, devices: int, *extra: str, fails: bool = False) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(devices), *extra], env=env, capture_output=True, text=True, timeout=300
    )
    if fails:
        assert proc.returncode != 0 and "SimulatedKill" in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process and two, trained the same way."""
    root = tmp_path_factory.mktemp("ddp")
    _launch(root / "single", 1)
    _launch(root / "ddp", 2)
    return root


def _logged_val_acc(out: Path) -> list[tuple[int, float]]:
    """(task, val/acc) for every validation epoch in the run's metrics.csv, in order."""
    rows = list(csv.DictReader(open(out / "run" / "logs" / "metrics.csv")))
    task, found = 0, []
    for row in rows:
        if row.get("val/acc"):
            found.append((task, float(row["val/acc"])))
        if row.get("cl/tasks_finished"):
            task = int(float(row["cl/tasks_finished"]))
    return found


def _load(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


@pytest.mark.xdist_group("test_ddp.runs")
def test_two_processes_match_one_process(runs):
    single, rank0, rank1 = _load(runs / "single", 0), _load(runs / "ddp", 0), _load(runs / "ddp", 1)
    # every rank holds the same replay memory and the same parameters
    assert torch.equal(rank0["memory"], rank1["memory"])
    assert torch.equal(rank0["memory"], single["memory"])
    for key in rank0["params"]:
        assert torch.equal(rank0["params"][key], rank1["params"][key]), key
    # the global batch is split across ranks, so the optimisation is the same up to float
    # summation order: the stated tolerance is 1 percentage point per matrix entry
    assert torch.allclose(rank0["matrix"], single["matrix"], atol=0.01), (rank0["matrix"], single["matrix"])
    assert torch.equal(rank0["matrix"], rank1["matrix"])
    # the validation accuracy watched by early stopping and best-epoch selection: a fraction of
    # the whole validation split (never above 1), the single-process value up to the same tolerance
    ddp_acc, single_acc = _logged_val_acc(runs / "ddp"), _logged_val_acc(runs / "single")
    assert len(ddp_acc) == len(single_acc) == 6  # 3 tasks x 2 epochs
    assert all(0.0 <= acc <= 1.0 for _, acc in ddp_acc)
    for (t, a), (u, b) in zip(ddp_acc, single_acc):
        assert t == u and abs(a - b) <= 0.01, (ddp_acc, single_acc)


def test_validation_accuracy_sums_counts_across_ranks(tmp_path):
    # lr=0: the weights never move, so one process and two see the very same model and every
    # logged val/acc must agree (up to float32 rounding). Summing correct and total over the
    # ranks before dividing gives a multiple of 1/n for a split of n samples; averaging each
    # rank's own fraction would not (task 2's split has 43 samples: ranks hold 22 and 21).
    _launch(tmp_path / "single", 1, "--lr=0")
    _launch(tmp_path / "ddp", 2, "--lr=0")
    single, ddp = _logged_val_acc(tmp_path / "single"), _logged_val_acc(tmp_path / "ddp")
    sizes = [len(t.val) for t in TaskSequence(SplitClasses("digits", 3), batch_size=32, seed=0).tasks]
    assert sizes[2] % 2 == 1
    assert [t for t, _ in ddp] == [t for t, _ in single] == [0, 0, 1, 1, 2, 2]
    for (t, a), (_, b) in zip(ddp, single):
        assert 0.0 <= a <= 1.0 and abs(a - b) < 1e-6, (t, a, b)
        assert abs(a * sizes[t] - round(a * sizes[t])) < 1e-4, (t, a, sizes[t])


@pytest.mark.xdist_group("test_ddp.runs")
def test_a_killed_ddp_run_resumes_from_its_epoch_checkpoint(tmp_path, runs):
    # both ranks stop before batch 1 of epoch 1 of task 1; epoch 0's checkpoint is kept
    _launch(tmp_path, 2, "--stop-at=1,1,1", fails=True)
    assert [p.name for p in (tmp_path / "run" / "checkpoints" / "task_1").glob("*.ckpt")] == ["epoch_0.ckpt"]
    _launch(tmp_path, 2, "--resume")
    full = _load(runs / "ddp", 0)
    for rank in (0, 1):
        resumed = _load(tmp_path, rank)
        assert torch.equal(resumed["matrix"], full["matrix"]) and torch.equal(resumed["memory"], full["memory"])
        for key, value in full["params"].items():
            assert torch.equal(resumed["params"][key], value), (rank, key)
        assert resumed["steps"][1] == full["steps"][1] // 2 and resumed["steps"][2] == full["steps"][2]  # 1 of 2 epochs kept
    assert (tmp_path / "run" / "logs" / "metrics.csv").read_text() == (runs / "ddp" / "run" / "logs" / "metrics.csv").read_text()
