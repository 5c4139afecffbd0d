"""Opening a run folder for a run: checked (read only) and locked before anything is written into it."""

from __future__ import annotations

from typing import Optional

from clight.distributed import is_rank_zero
from clight.runner.lock import FolderLock
from clight.runner.run_folder import Resume, RunFolder


def open_run_folder(
    folder: RunFolder,
    lock: FolderLock,
    resume: bool,
    num_tasks: int,
    schedule: dict,
    config: Optional[str],
    allow_config_change: bool,
    fit_names: list[str],
) -> Optional[Resume]:
    """A new run's folder checked fresh, or a resumed run's folder read and checked (``Resume``);
    locked by rank 0 from before it is read (so nothing is read half-written by a live run) to the
    run's end; the lock's holder is recorded only once every check has passed."""
    if is_rank_zero() and folder.path.is_dir():
        lock.acquire()
    if resume:
        opened = folder.open_for_resume(num_tasks, schedule, config, allow_config_change, fit_names)
    else:
        folder.check_fresh()
        if is_rank_zero():
            if not lock.held:
                lock.acquire()  # creates the folder
                folder.check_fresh()  # a run that started and finished meanwhile
            folder.clear_for_new_run()
        opened = None
    lock.record_holder()
    return opened


def reopen_finished(folder: RunFolder, resume: Resume) -> None:
    """A resume of a finished run trains nothing: it removes leftovers and rebuilds missing report files."""
    from clight.report import missing_report_files, write_report

    if is_rank_zero():
        folder.tidy(resume.progress)
        if missing_report_files(folder.path):
            write_report(folder.path)
