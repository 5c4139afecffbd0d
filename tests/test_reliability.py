"""A disk that fills up at any write of a task boundary, with and without epoch checkpoints: the run
fails in one line naming the file and the disk, its manifest counts only what was saved, and the
resume ends exactly like a run that never failed. Also: a manifest and a checkpoint that disagree
are refused, a finished run rebuilds a missing report, files get the umask's permissions, nothing
is staged in TMPDIR, and one folder takes one live run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from run_outcome import TINY_TRAINER, differences, outcome, tiny_run

import clight.io as cio
from clight.disks import disk_of
from clight.io import StorageError, save_tensors_atomic
from clight.runner import SequenceRunner
from clight.runner.lock import FolderLock
from clight.runner.run_folder import RunFolderError

#: the writes of a task boundary, in order: the log rows, the boundary checkpoint, the manifest
BOUNDARY_WRITES = ("logs/metrics.csv", "checkpoints/last_task.pt", "manifest.json")


class FailingFile:
    """A file on a disk that fails every write (``ENOSPC``: full; ``EIO``: failing)."""

    def __init__(self, f, code: int = errno.ENOSPC) -> None:
        self.f, self.code = f, code

    def write(self, data) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def fail_at_boundary(monkeypatch, boundary: int, write: int, written: list) -> None:
    """Make write ``write`` of task boundary ``boundary`` hit a full disk (``-1``: none); every
    write of a boundary is recorded in ``written`` as (boundary, file name)."""
    where = {"boundary": -1, "write": -1, "inside": False}
    commit = SequenceRunner._commit_boundary

    def counted(self):
        where.update(boundary=where["boundary"] + 1, write=-1, inside=True)
        try:
            commit(self)
        finally:
            where["inside"] = False

    def failing(open_file):
        def opened(path):
            f = open_file(path)
            if not where["inside"]:
                return f
            where["write"] += 1
            written.append((where["boundary"], path.name[1:].rsplit(".", 3)[0] if path.name.endswith(".tmp") else path.name))
            return FailingFile(f) if (where["boundary"], where["write"]) == (boundary, write) else f

        return opened

    monkeypatch.setattr(SequenceRunner, "_commit_boundary", counted)
    monkeypatch.setattr(cio, "_open_temp", failing(cio._open_temp))
    monkeypatch.setattr(cio, "_open_append", failing(cio._open_append))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    """The runs that never fail, with and without epoch checkpoints, and the writes of their boundaries."""
    runs = {}
    for every_epoch in (True, False):
        folder = tmp_path_factory.mktemp("reference") / "run"
        written: list = []
        with pytest.MonkeyPatch.context() as m:
            fail_at_boundary(m, -1, -1, written)
            tiny_run(folder, TINY_TRAINER, checkpoint_every_epoch=every_epoch).run()
        runs[every_epoch] = (folder, outcome(folder), written)
    return runs


def test_a_task_boundary_writes_the_log_then_the_checkpoint_then_the_manifest(references):
    for _, _, written in references.values():
        assert written == [(b, name.split("/")[-1]) for b in (0, 1) for name in BOUNDARY_WRITES]


@pytest.mark.parametrize("boundary, write", [(b, w) for b in (0, 1) for w in range(3)], ids=lambda v: str(v))
@pytest.mark.parametrize("every_epoch", [True, False], ids=["epoch-checkpoints", "no-epoch-checkpoints"])
def test_a_full_disk_at_a_task_boundary_fails_in_one_line_and_resumes_exactly(
    tmp_path, monkeypatch, references, every_epoch, boundary, write
):
    folder = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_at_boundary(m, boundary, write, [])
        with pytest.raises(StorageError) as failed:
            tiny_run(folder, TINY_TRAINER, checkpoint_every_epoch=every_epoch).run()
    message = str(failed.value)
    device, mount = disk_of(folder)
    assert message.startswith(
        f"no space left on {device} (mounted at {mount}), the disk holding {folder / BOUNDARY_WRITES[write]}"
    )
    assert f"keeps what was finished; once there is room, continue with: clight fit --config CONFIG --resume {folder}" in message
    assert "\n" not in message
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["finished_fits"] == boundary  # the failed boundary is not counted
    assert not list(folder.rglob("*.tmp"))  # the failed write took its temporary file away
    tiny_run(folder, TINY_TRAINER, resume=True, checkpoint_every_epoch=every_epoch).run()
    assert differences(outcome(folder), references[every_epoch][1]) == []


def test_a_failing_disk_is_named_with_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cio, "_open_temp", lambda path: FailingFile(open(path, "wb"), errno.EIO))
    with pytest.raises(StorageError, match=r"^input/output error \(errno 5\) on .* \(mounted at .*\), the disk holding .*x\.pt"):
        save_tensors_atomic(tmp_path / "x.pt", {"w": torch.zeros(1000)})  # torch reports it as "unexpected pos"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def stopped_after_one_task(tmp_path, monkeypatch) -> object:
    """A run whose second task boundary failed: manifest and checkpoint both at 1 finished fit."""
    folder = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_at_boundary(m, 1, 1, [])
        with pytest.raises(StorageError):
            tiny_run(folder, TINY_TRAINER).run()
    return folder


def test_a_manifest_ahead_of_its_checkpoint_is_refused(stopped_after_one_task):
    folder = stopped_after_one_task
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["finished_fits"] += 1  # as an older clight recorded a boundary whose checkpoint failed
    manifest["matrices"]["correct"].append(manifest["matrices"]["correct"][-1])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        RunFolderError, match=r"manifest.json counts 2 finished fit\(s\) but .*last_task.pt holds the state after 1"
    ):
        tiny_run(folder, TINY_TRAINER, resume=True).run()


def test_a_checkpoint_of_other_tasks_is_refused(stopped_after_one_task):
    path = stopped_after_one_task / "checkpoints" / "last_task.pt"
    state = torch.load(path, weights_only=True)
    state["boundary"]["fits"] = ["another task"]
    torch.save(state, path)
    with pytest.raises(RunFolderError, match=r"holds the state after training on \['another task'\].*Resume with the config"):
        tiny_run(stopped_after_one_task, TINY_TRAINER, resume=True).run()


def test_a_resumed_finished_run_rebuilds_missing_report_files(tmp_path, references):
    folder = tmp_path / "run"
    shutil.copytree(references[True][0], folder)
    matrix = (folder / "accuracy_matrix.csv").read_text()
    (folder / "accuracy_matrix.csv").unlink()
    (folder / "plots" / "task_accuracy.png").unlink()
    (folder / "plots" / ".task_accuracy.png.4242.0123abcd.tmp").write_text("half")  # what a killed write leaves
    (folder / ".notes.tmp").write_text("someone else's")
    tiny_run(folder, TINY_TRAINER, resume=True).run()
    assert (folder / "accuracy_matrix.csv").read_text() == matrix and (folder / "plots" / "task_accuracy.png").stat().st_size
    assert not (folder / "plots" / ".task_accuracy.png.4242.0123abcd.tmp").exists()
    assert (folder / ".notes.tmp").exists()  # only clight's own temporary files are removed


def test_files_get_the_umasks_permissions_and_nothing_is_staged_in_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))  # Lightning staged checkpoints there
    umask = os.umask(0o027)
    try:
        tiny_run(tmp_path / "run", dict(TINY_TRAINER, max_epochs=1)).run()
    finally:
        os.umask(umask)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"manifest.json", "last_task.pt", "metrics.csv", "hparams.yaml", "task_accuracy.png"} <= {p.name for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}


def test_one_folder_takes_one_live_run(tmp_path):
    first, second = FolderLock(tmp_path / "run"), FolderLock(tmp_path / "run")
    first.acquire()
    first.record_holder()
    with pytest.raises(RunFolderError, match=rf"run is in use by a live run \(PID {os.getpid()} on .*\)\. Wait for it"):
        second.acquire()
    assert second.live_holder() == f"PID {os.getpid()} on {os.uname().nodename}"
    first.release()
    assert second.live_holder() is None
    second.acquire()  # the lock went with its holder
    second.release()


def test_compare_refuses_a_run_folder_in_use_before_any_run_starts(tmp_path, capsys):
    from clight.cli import main

    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    configs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for config in configs:
        config.write_text(quickstart.read_text())
    busy = FolderLock(tmp_path / "runs" / "b")
    busy.acquire()
    busy.record_holder()
    try:
        code = main(["compare", *map(str, configs), "--out", str(tmp_path / "out"), "--run_root", str(tmp_path / "runs")])
    finally:
        busy.release()
    assert code == 2
    assert f"runs/b is in use by a live run (PID {os.getpid()} on " in capsys.readouterr().err
    assert not (tmp_path / "runs" / "a").exists() and not (tmp_path / "out").exists()


def test_a_disk_is_named_by_its_device_and_mount_point(tmp_path):
    device, mount = disk_of(tmp_path / "not" / "yet" / "made")
    assert os.path.ismount(mount) and str(tmp_path).startswith(mount) and device != "?"
    if os.path.isdir("/proc/self"):
        assert disk_of("/proc/self/status") == ("proc", "/proc")
