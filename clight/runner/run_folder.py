"""The run folder: the config, the manifest (progress so far), the checkpoint at the last task
boundary, the checkpoints inside the running task, and the final metrics.

Every file is written atomically and by rank 0 only; everything is read back with
``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from clight.distributed import is_rank_zero
from clight.io import load_checkpoint, read_json, save_tensors_atomic, write_json_atomic, write_text_atomic

MANIFEST = "manifest.json"
BOUNDARY_CHECKPOINT = "checkpoints/last_task.pt"
MANIFEST_FORMAT = 2


class RunFolderError(RuntimeError):
    pass


@dataclass
class Progress:
    """What a run has done so far: rows of every accuracy matrix, the initial model's row,
    the wall time of every fit, and the logger's step offset."""

    num_tasks: int
    schedule: dict
    finished_fits: int = 0
    finished_tasks: int = 0
    matrices: dict[str, list[list[float]]] = field(default_factory=dict)
    initial: dict[str, list[float]] = field(default_factory=dict)
    wall_time_per_task: list[float] = field(default_factory=list)
    step_offset: int = 0

    def add_row(self, row: dict[str, list[float]], seconds: float, trained_tasks: int) -> None:
        for name, values in row.items():
            self.matrices.setdefault(name, []).append(values)
        self.wall_time_per_task.append(seconds)
        self.finished_fits += 1
        self.finished_tasks += trained_tasks

    def manifest(self, status: str) -> dict:
        return {"format": MANIFEST_FORMAT, "status": status, **asdict(self)}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Progress":
        return cls(
            num_tasks=int(manifest["num_tasks"]),
            schedule=manifest.get("schedule") or {"kind": manifest.get("baseline", "sequential")},
            finished_fits=int(manifest.get("finished_fits", len(manifest["matrices"].get("correct", [])))),
            finished_tasks=int(manifest.get("finished_tasks", 0)),
            matrices=manifest["matrices"],
            initial=manifest["initial"],
            wall_time_per_task=manifest["wall_time_per_task"],
            step_offset=int(manifest.get("step_offset", 0)),
        )


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def holds_run(self) -> bool:
        return self.manifest_path.exists()

    def fit_checkpoint_dir(self, fit_index: int) -> Path:
        return self.path / "checkpoints" / f"task_{fit_index}"

    def prepare(self, config: Optional[str], resume: bool) -> None:
        """Refuse to overwrite a run; create the folder and write the config (rank 0)."""
        if self.holds_run() and not resume:
            raise RunFolderError(
                f"{self.path} already holds a run. Resume it with --resume {self.path}, or choose another run_dir."
            )
        if is_rank_zero():
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            if config is not None and not (resume and (self.path / "config.yaml").exists()):
                write_text_atomic(self.path / "config.yaml", config)

    def read_progress(self, num_tasks: int, schedule: dict) -> Progress:
        progress = Progress.from_manifest(read_json(self.manifest_path))
        if progress.num_tasks != num_tasks or progress.schedule.get("kind") != schedule.get("kind"):
            raise RunFolderError(
                f"{self.path} holds a run of {progress.num_tasks} tasks ({progress.schedule.get('kind')}); "
                f"this config has {num_tasks} ({schedule.get('kind')}). Resume with the config the run was started with."
            )
        return progress

    def save_boundary(self, state: dict[str, Any], progress: Progress) -> None:
        """The state after the last finished fit, then the manifest that points past it (rank 0)."""
        if not is_rank_zero():
            return
        save_tensors_atomic(self.path / BOUNDARY_CHECKPOINT, state)
        write_json_atomic(self.manifest_path, progress.manifest("running"))
        shutil.rmtree(self.fit_checkpoint_dir(progress.finished_fits - 1), ignore_errors=True)

    def load_boundary(self) -> dict[str, Any]:
        return load_checkpoint(self.path / BOUNDARY_CHECKPOINT)

    def finish(self, metrics: dict, progress: Progress) -> None:
        if not is_rank_zero():
            return
        from clight.report import write_report

        write_json_atomic(self.path / "metrics.json", metrics)
        write_json_atomic(self.manifest_path, progress.manifest("finished"))
        write_report(self.path)
