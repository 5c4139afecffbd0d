"""The run folder: the config, the manifest (progress so far), the checkpoint at the last task
boundary, the checkpoints inside the running task, and the final metrics.

Every file is written atomically and by rank 0 only; everything is read back with
``weights_only=True`` (no arbitrary unpickling). Everything a resume needs is read and checked
(``open_for_resume``) before anything is written, so a refused resume leaves the folder as it was.
A task boundary has one commit point, the boundary checkpoint, which holds its progress
(``clight.runner.boundary``); the manifest follows it.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Optional

import yaml

from clight.distributed import is_rank_zero
from clight.io import (
    StorageError,
    UnreadableFileError,
    read_json,
    remove_leftovers,
    save_tensors_atomic,
    unwritable_reason,
    write_json_atomic,
    write_text_atomic,
)
from clight.runner.boundary import committed_state, reconcile
from clight.runner.checkpoints import ResumePoint, find_resume_point
from clight.runner.config_diff import config_changes, describe_changes
from clight.runner.errors import RunFolderError
from clight.runner.sharded_checkpoints import BOUNDARY_FOLDER, holds_dtensors, read_boundary, save_sharded_boundary
from clight.shorten import shorten

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
CONFIG_CHANGES = "config_changes.json"
BOUNDARY_CHECKPOINT = "checkpoints/last_task.pt"
MANIFEST_FORMAT = 3


@dataclass
class Progress:
    """What a run has done so far: rows of every accuracy matrix, the initial model's row,
    the wall time of every fit, the logger's step offset, how many rows of
    ``logs/metrics.csv`` belong to the finished fits, and the environments it ran in (the one it
    started in, then each different one it was resumed in: ``clight.environment``)."""

    num_tasks: int
    schedule: dict
    finished_fits: int = 0
    finished_tasks: int = 0
    matrices: dict[str, list[list[float]]] = field(default_factory=dict)
    initial: dict[str, list[float]] = field(default_factory=dict)
    wall_time_per_task: list[float] = field(default_factory=list)
    step_offset: int = 0
    log_rows: Optional[int] = None
    environments: list[dict[str, Any]] = field(default_factory=list)

    def add_row(self, row: dict[str, list[float]], seconds: float, trained_tasks: int) -> None:
        for name, values in row.items():
            self.matrices.setdefault(name, []).append(values)
        self.wall_time_per_task.append(seconds)
        self.finished_fits += 1
        self.finished_tasks += trained_tasks

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict of the progress's own values (not copies: serialise it at once).
        ``dataclasses.asdict`` copies every row element by element, a third of a short task's
        boundary once a run has a hundred rows."""
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    def snapshot(self) -> "Progress":
        """An independent copy (plain values only: a pickle round trip takes a quarter of ``copy.deepcopy``'s time)."""
        return pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def manifest(self, status: str, **extra: Any) -> dict:
        return {"format": MANIFEST_FORMAT, "status": status, **self.as_dict(), **extra}

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
            log_rows=manifest.get("log_rows"),
            environments=list(manifest.get("environments") or []),
        )


@dataclass
class Resume:
    """What a resumed run starts from, read and checked before anything is written."""

    progress: Progress
    status: str
    boundary: Optional[dict[str, Any]]  # the state after the last finished fit
    point: Optional[ResumePoint]  # the newest good epoch checkpoint inside the next fit
    changes: dict[str, tuple[Any, Any]]  # config changes the user accepted

    @property
    def log_rows(self) -> Optional[int]:
        """The rows of ``logs/metrics.csv`` that the state resumed from had seen written."""
        return self.point.log_rows if self.point is not None else self.progress.log_rows


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

    # -- checks (read only) ---------------------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse a run_dir that cannot be created or written, before anything is written."""
        reason = unwritable_reason(self.path)
        if reason is not None and reason.endswith("is a file"):
            raise RunFolderError(f"cannot create the run folder {self.path}: {reason}. Choose another run_dir.")
        if reason is not None:
            raise RunFolderError(f"cannot write the run folder {self.path}: {reason}. Choose a run_dir you can write to.")

    def check_fresh(self) -> None:
        if self.holds_run():
            raise RunFolderError(
                f"{self.path} already holds a run. Resume it with --resume {self.path}, or choose another run_dir."
            )
        self.check_writable()

    def open_for_resume(
        self, num_tasks: int, schedule: dict, config: Optional[str], allow_config_change: bool, fit_names: list[str]
    ) -> Resume:
        if not self.holds_run():
            hint = "the folder does not exist" if not self.path.exists() else f"it has no {MANIFEST}"
            raise RunFolderError(
                f"there is no run to resume in {self.path} ({hint}). Check the path, or start a new run with --run_dir {self.path}."
            )
        manifest = self._read(MANIFEST, read_json)
        progress = self._progress(manifest, num_tasks, schedule)
        changes = self._check_config(config, allow_config_change)
        has_boundary = progress.finished_fits or any((self.path / p).exists() for p in (BOUNDARY_CHECKPOINT, BOUNDARY_FOLDER))
        boundary = self._read(BOUNDARY_CHECKPOINT, read_boundary) if has_boundary else None
        saved = reconcile(progress.finished_fits, boundary, fit_names, self.manifest_path, self.path / BOUNDARY_CHECKPOINT)
        if saved is not None:  # the commit point's progress (one fit ahead if killed before the manifest followed it)
            progress = Progress(**saved)
        point = find_resume_point(self.fit_checkpoint_dir(progress.finished_fits))
        self.check_writable()
        return Resume(progress, str(manifest.get("status", "running")), boundary, point, changes)

    def _read(self, name: str, reader) -> Any:
        try:
            return reader(self.path / name)
        except (UnreadableFileError, FileNotFoundError) as exc:
            raise RunFolderError(
                f"{exc}. The run folder is damaged and cannot be resumed: restore {name} from a copy, or start a new run_dir."
            ) from exc

    def _progress(self, manifest: dict, num_tasks: int, schedule: dict) -> Progress:
        try:
            progress = Progress.from_manifest(manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunFolderError(
                f"{self.manifest_path} is damaged (bad or missing entry {exc}). Restore it from a copy, or start a new run_dir."
            ) from exc
        if progress.num_tasks != num_tasks or progress.schedule.get("kind") != schedule.get("kind"):
            raise RunFolderError(
                f"{self.path} holds a run of {progress.num_tasks} tasks ({progress.schedule.get('kind')}); "
                f"this config has {num_tasks} ({schedule.get('kind')}). Resume with the config the run was started with."
            )
        return progress

    def current_config(self) -> Optional[str]:
        """The config the run is using: the last accepted change, else the one it was started with."""
        if (self.path / CONFIG_CHANGES).exists():
            return self._read(CONFIG_CHANGES, read_json)[-1]["config"]
        return (self.path / CONFIG).read_text() if (self.path / CONFIG).exists() else None

    def _check_config(self, config: Optional[str], allow: bool) -> dict[str, tuple[Any, Any]]:
        if config is None:  # a run driven from Python: no config file to compare
            return {}
        started = self.current_config()
        if started is None:
            if allow:
                return {"(the whole config)": (None, "recorded now")}
            raise RunFolderError(
                f"{self.path} has no {CONFIG} to compare this config with. Pass --allow_config_change to resume with "
                f"this config (it is then recorded in {CONFIG_CHANGES})."
            )
        try:
            changes = config_changes(started, config)
        except yaml.YAMLError as exc:
            raise RunFolderError(f"{self.path / CONFIG} cannot be parsed ({shorten(str(exc))}). Restore it from a copy.") from exc
        if changes and not allow:
            raise RunFolderError(
                f"this config differs from the one {self.path} was run with, in settings that change results: "
                f"{describe_changes(changes)}. Resume with the config you started the run with, or pass "
                f"--allow_config_change to continue with the new values (recorded in {CONFIG_CHANGES})."
            )
        return changes

    # -- writes (rank 0) ------------------------------------------------------------------------
    def prepare(self, config: Optional[str], progress: Progress, resume: Optional[Resume] = None) -> None:
        """Create the folder and write the config and the first manifest; on a resume, tidy the folder,
        record accepted config changes and mark the run running again."""
        if not is_rank_zero():
            return
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            if resume is not None:
                self.tidy(progress)
            if resume is None and config is not None:
                write_text_atomic(self.path / CONFIG, config)
            if resume is not None and resume.changes:
                self._record_changes(config, resume)
            write_json_atomic(self.manifest_path, progress.manifest("running"))
        except StorageError:
            raise
        except OSError as exc:
            raise RunFolderError(f"cannot write the run folder {self.path}: {exc}. Choose a run_dir you can write to.") from exc

    def _record_changes(self, config: Optional[str], resume: Resume) -> None:
        path = self.path / CONFIG_CHANGES
        history = read_json(path) if path.exists() else []
        history.append(
            {
                "after_tasks": resume.progress.finished_tasks,
                "from_epoch_checkpoint": resume.point.path.name if resume.point else None,
                "changes": {k: {"before": a, "after": b} for k, (a, b) in resume.changes.items()},
                "config": config,
            }
        )
        write_json_atomic(path, history)

    def save_progress(self, progress: Progress, status: str = "running", **extra: Any) -> None:
        if is_rank_zero():
            write_json_atomic(self.manifest_path, progress.manifest(status, **extra))

    def save_boundary(self, state: dict[str, Any], progress: Progress, fit_names: list[str]) -> None:
        """Commit a task boundary: the state after the finished fits with their progress, in one file
        (rank 0) or, for a sharded model, one folder (every rank its shards, so every rank calls it);
        then the manifest (a copy of that progress) and the finished fit's epoch checkpoints go."""
        state = committed_state(state, progress.as_dict(), fit_names)
        sharded = holds_dtensors(state["model"])
        if sharded:
            save_sharded_boundary(self.path / BOUNDARY_FOLDER, state)
        if not is_rank_zero():
            return
        if not sharded:
            save_tensors_atomic(self.path / BOUNDARY_CHECKPOINT, state)
        write_json_atomic(self.manifest_path, progress.manifest("running"))
        shutil.rmtree(self.fit_checkpoint_dir(progress.finished_fits - 1), ignore_errors=True)

    def tidy(self, progress: Progress) -> None:
        """Remove what killed writes and finished fits left behind (rank 0, holding the folder's lock)."""
        if not is_rank_zero():
            return
        remove_leftovers(self.path)
        for folder in (self.path / "checkpoints").glob("task_*"):
            if folder.is_dir() and folder != self.fit_checkpoint_dir(progress.finished_fits):
                shutil.rmtree(folder, ignore_errors=True)

    def clear_for_new_run(self) -> None:
        """A new run in a folder that holds no run (no manifest): drop checkpoints and temporary files
        an earlier attempt left, so that no resume of the new run can read them (rank 0, locked)."""
        remove_leftovers(self.path)
        (self.path / BOUNDARY_CHECKPOINT).unlink(missing_ok=True)
        for folder in (self.path / "checkpoints").glob("task_*"):
            shutil.rmtree(folder, ignore_errors=True)

    def finish(self, metrics: dict, progress: Progress) -> None:
        """metrics.json and the report, then the manifest says ``finished`` (so a finished run has both)."""
        if not is_rank_zero():
            return
        from clight.report import write_report

        write_json_atomic(self.path / "metrics.json", metrics)
        write_report(self.path)
        write_json_atomic(self.manifest_path, progress.manifest("finished"))
