"""The commit point of a task boundary: one file that holds both the state and the progress.

``checkpoints/last_task.pt`` holds the state after the finished fits *and* the progress that
counts them (which fits, by name; every accuracy row; the log rows written). It is written
atomically before the manifest, which is a readable copy of the same progress: a kill between the
two leaves a checkpoint one fit ahead of the manifest, and the resume takes the checkpoint's
progress. Any other disagreement (a manifest ahead of its checkpoint, a checkpoint of other
tasks) is refused: resuming from it would train a task twice or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from clight.runner.errors import RunFolderError

#: the keys of the boundary checkpoint that say what it is the state after
SAVED = "boundary"


def committed_state(state: dict[str, Any], progress: dict[str, Any], fit_names: list[str]) -> dict[str, Any]:
    """``state`` with the progress it belongs to (``Progress`` as a dict of plain values: loads with
    ``weights_only=True``)."""
    fits = int(progress["finished_fits"])
    return {**state, SAVED: {"finished_fits": fits, "fits": list(fit_names[:fits]), "progress": progress}}


def reconcile(
    manifest_fits: int, boundary: Optional[dict[str, Any]], fit_names: list[str], manifest: Path, checkpoint: Path
) -> Optional[dict[str, Any]]:
    """The progress to resume from, checked against the manifest: the boundary checkpoint's (a dict
    of ``Progress`` fields), or ``None`` where the manifest's is the only one (no finished fit yet,
    or a checkpoint written before checkpoints held their progress)."""
    saved = boundary.get(SAVED) if boundary is not None else None
    if saved is None:
        return None
    fits, names = int(saved["finished_fits"]), list(saved["fits"])
    if names != fit_names[:fits]:
        raise RunFolderError(
            f"{checkpoint} holds the state after training on {_listed(names)}, but this run's fits begin with "
            f"{_listed(fit_names[:fits])}. Resume with the config the run was started with, or start a new run_dir."
        )
    if fits not in (manifest_fits, manifest_fits + 1):
        raise RunFolderError(
            f"{manifest} counts {manifest_fits} finished fit(s) but {checkpoint} holds the state after "
            f"{fits}: progress was recorded without its checkpoint, and resuming would train a task twice or not at all. "
            "Start a new run_dir (or restore both files from one copy)."
        )
    return saved["progress"]


def _listed(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n[:60]) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} fit(s))"
