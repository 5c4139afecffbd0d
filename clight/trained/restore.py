"""A finished (or stopped) run opened for inference: the model with every finished task's
parameters, the task sequence and the methods, rebuilt as the runner built them and loaded
from the run folder's boundary checkpoint (``checkpoints/last_task.pt``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from clight.contract import RunContext
from clight.io import read_json
from clight.runner.boundary import SAVED
from clight.runner.errors import RunFolderError
from clight.runner.run_folder import BOUNDARY_CHECKPOINT, MANIFEST, Progress, RunFolder
from clight.runner.sharded_checkpoints import BOUNDARY_FOLDER, read_boundary

PathLike = Union[str, Path]


@dataclass
class TrainedRun:
    """What ``open_run`` rebuilds: the model (in eval mode), the data module, the methods, and the
    progress the checkpoint counts (``progress.matrices["correct"][-1]`` is the final accuracy row)."""

    run_dir: Path
    model: Any
    data: Any
    methods: list
    progress: Progress

    @property
    def finished_tasks(self) -> list[int]:
        return sorted({t for fit in self.fits for t in fit.tasks})

    @property
    def fits(self) -> list:
        from clight.runner.schedule import schedule_from_manifest

        schedule = schedule_from_manifest({"schedule": self.progress.schedule})
        return schedule.fits([t.name for t in self.data.tasks])[: self.progress.finished_fits]


def open_run(
    run_dir: PathLike,
    config: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    *,
    model: Any = None,
    data: Any = None,
    methods: Sequence[Any] = (),
) -> TrainedRun:
    """Rebuild a run from its config and load its last task boundary.

    The model, data module and methods are built from ``config`` (default: the config the run
    used, from its folder: a config is code, so open only runs you trust) with ``overrides``
    (``--key=value``, as for ``clight fit``); or pass them built (``model``, ``data``, ``methods``:
    fresh, configured as for the run) for a run driven from Python without a config.
    """
    folder = RunFolder(Path(run_dir))
    if not folder.holds_run():
        raise RunFolderError(f"{folder.path} holds no clight run (no {MANIFEST}). Give the folder a run wrote (its run_dir).")
    manifest = read_json(folder.manifest_path)
    if model is None:
        model, data, methods, seed = _built_from_config(folder, config, overrides)
    else:
        if data is None:
            raise ValueError("open_run(model=...) needs the data module too (data=...), configured as for the run")
        seed = int(getattr(data, "seed", 0))
    checkpoint = folder.path / BOUNDARY_CHECKPOINT
    if not checkpoint.exists() and not (folder.path / BOUNDARY_FOLDER).exists():
        raise RunFolderError(f"{folder.path} has no finished task yet ({BOUNDARY_CHECKPOINT} is missing): nothing to load.")
    state = read_boundary(checkpoint)
    progress = Progress(**state[SAVED]["progress"]) if SAVED in state else Progress.from_manifest(manifest)
    return _restored(folder.path, model, data, list(methods), progress, state, seed)


def _built_from_config(folder: RunFolder, config: Optional[PathLike], overrides: Sequence[str]) -> tuple:
    from clight.fit_config import runner_from_args

    if config is None:
        text = folder.current_config()
        if text is None:
            raise RunFolderError(
                f"{folder.path} has no config.yaml (a run driven from Python): pass config=... or the built "
                "model=..., data=..., methods=... to open it."
            )
        config = text  # the parser takes the YAML text as well as a path
    runner = runner_from_args(["--config", str(config), *overrides, "--run_dir", str(folder.path)])
    return runner.model, runner.data, runner.methods, runner.seed


def _restored(run_dir: Path, model: Any, data: Any, methods: list, progress: Progress, state: dict, seed: int) -> TrainedRun:
    from clight.methods.base import assign_state_keys
    from clight.progress import quiet_lightning_banners
    from clight.runner.restore import load_boundary_state

    quiet_lightning_banners()
    info = data.info
    assign_state_keys(methods)
    model.setup_sequence(info)
    context = RunContext(None, seed, 1, 0, resumed=True)  # no run folder: nothing is written
    for method in methods:
        method.setup_sequence(model, data, context)
    run = TrainedRun(run_dir, model, data, methods, progress)
    load_boundary_state(model, data, methods, run.fits, state, run_dir / BOUNDARY_CHECKPOINT)
    finished = [data.tasks[t] for t in run.finished_tasks]
    for method in methods:
        method.on_restored(model, finished)
    model.eval()
    return run


def load_run(run_dir: PathLike, config: Optional[PathLike] = None, overrides: Sequence[str] = (), **built: Any) -> Any:
    """The model of a run with every finished task's parameters, in eval mode, ready for inference
    (see ``open_run`` for the arguments)."""
    return open_run(run_dir, config, overrides, **built).model
