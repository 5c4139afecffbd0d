"""What a finished run folder holds, in a form two runs can be compared by (tests only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from clight import MLP, ContinualClassifier, SequenceRunner

REPORT = ["accuracy_matrix.csv", "accuracy_matrix_task_aware.csv", "plots/accuracy_matrix.png", "plots/task_accuracy.png"]
#: what must be equal between a resumed run and the run never stopped
COMPARED = ("status", "matrices", "state", "progress", "metrics_csv", "metrics", "missing_report", "leftovers", "task_folders")
CONFIG = "seed_everything: 0  # the run's config: compared on resume\n"
#: 2 epochs of 3 batches per task; a row in logs/metrics.csv at every step
TINY_TRAINER = dict(
    accelerator="cpu",
    devices=1,
    enable_progress_bar=False,
    deterministic=True,
    max_epochs=2,
    limit_train_batches=3,
    limit_val_batches=1,
    log_every_n_steps=1,
)


def tiny_run(folder: Path, trainer: dict, resume: bool = False, **settings) -> SequenceRunner:
    """2 tasks of digits, an MLP with replay (its memory must not see a task twice)."""
    from conftest import small_sequence

    torch.manual_seed(0)
    model = ContinualClassifier(MLP([32]))
    data = small_sequence(num_tasks=2, replay=True)
    settings.setdefault("epoch_checkpoint_min_s", 0.0)  # every epoch's checkpoint, however short the epoch
    return SequenceRunner(model, data, trainer=trainer, run_dir=str(folder), seed=0, resume=resume, config=CONFIG, **settings)


def outcome(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    state = torch.load(folder / "checkpoints" / "last_task.pt", weights_only=True)
    progress = {k: v for k, v in state["boundary"]["progress"].items() if k != "wall_time_per_task"}
    digest = hashlib.sha256()
    for part in ("model", "methods", "data", "step_offset", "trainable_per_fit"):
        _feed(digest, state[part])
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        "status": manifest["status"],
        "matrices": manifest["matrices"],
        "state": digest.hexdigest(),
        "progress": json.dumps(progress, sort_keys=True),
        "metrics_csv": (folder / "logs" / "metrics.csv").read_text(),
        "metrics": json.dumps({k: v for k, v in metrics.items() if "wall_time" not in k}, sort_keys=True),
        "missing_report": [f for f in REPORT if not (folder / f).is_file()],
        "leftovers": sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp")),
        "task_folders": sorted(p.name for p in (folder / "checkpoints").glob("task_*")),
    }


def differences(result: dict, reference: dict) -> list[str]:
    return [key for key in COMPARED if result.get(key) != reference[key]]


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(str((value.dtype, tuple(value.shape))).encode() + value.contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed(digest, item)
    else:
        digest.update(repr(value).encode())
