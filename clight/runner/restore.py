"""Loading the state of a task boundary into freshly built objects: for a resumed run, and for a
finished run opened for inference (``clight.load_run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from clight.runner.errors import RunFolderError
from clight.runner.schedule import Fit


def load_boundary_state(
    model: Any, data: Any, methods: Sequence[Any], finished: Sequence[Fit], state: dict, checkpoint: Path
) -> None:
    """Rebuild what the model creates per task (heads, adapters) for the ``finished`` fits, then
    load the model's, every method's and the data module's state from ``state``."""
    for fit in finished:
        for t in fit.tasks:
            model.on_task_start(data.tasks[t])
            model.on_task_end(data.tasks[t])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunFolderError(
            f"{checkpoint} was written for another model ({str(exc).splitlines()[-1].strip()}). "
            "Use the config the run was started with, or start a new run_dir."
        ) from exc
    for method in methods:
        if method.state_key in state["methods"]:
            method.load_state_dict(state["methods"][method.state_key])
    data.load_state_dict(state["data"])
