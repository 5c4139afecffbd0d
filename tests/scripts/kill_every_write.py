"""Kill a short run at every write into its run folder, resume it, and compare with a run never killed.

usage: python kill_every_write.py WORK_DIR OUT.json   (tests/ must be on PYTHONPATH)

One process imports everything once; every run happens in a forked child, so a kill is a real
SIGKILL (no Python clean-up, no finally blocks). The uninterrupted reference run records the
run folder's files before and after every write clight makes (an atomic commit, whose temporary
file is complete and the old file still in place before it; or an append to logs/metrics.csv).
The kill points are the distinct states in that sequence, each taken as late as it lasts: with
the next write's temporary file complete where a commit comes next. For each: a child runs until
the point and is SIGKILLed there, a second child resumes the folder and reports what it ends
with. Also the live-run check: a run paused inside its second task while a resume and a new run
of its folder are tried.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)

from run_outcome import TINY_TRAINER, outcome, tiny_run  # noqa: E402

import clight.io as cio  # noqa: E402
from clight.runner.run_folder import RunFolderError  # noqa: E402

_commit, _append = cio.commit_file, cio.append_text


def run(folder: Path, resume: bool = False) -> dict:
    tiny_run(folder, TINY_TRAINER, resume).run()
    return outcome(folder)


def snapshot(folder: Path) -> tuple:
    """The folder's files other than temporary ones: (name, size, change time)."""
    return tuple(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    )


def hook(on_event) -> None:
    """Call ``on_event(when, kind, path)`` before and after every commit and append of clight.io."""

    def commit(tmp, path):
        on_event("before", "commit", path)
        _commit(tmp, path)
        on_event("after", "commit", path)

    def append(path, text, **kwargs):
        on_event("before", "append", path)
        _append(path, text, **kwargs)
        on_event("after", "append", path)

    cio.commit_file, cio.append_text = commit, append


def in_child(task) -> tuple[int, str]:
    """Run ``task`` in a forked child; (its wait status, what it printed to its result file)."""
    result = Path(os.environ.get("TMPDIR", "/tmp")) / f".clight-kill-{os.getpid()}-{time.monotonic_ns()}.json"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            result.write_text(json.dumps(task()))
        except BaseException as exc:  # noqa: B036 - the child reports everything
            result.write_text(json.dumps({"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()}))
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    text = result.read_text() if result.exists() else "null"
    result.unlink(missing_ok=True)
    return status, text


def reference_run(folder: Path) -> tuple[dict, list[dict]]:
    """The uninterrupted run, and its kill points: every distinct state of its folder seen at a
    write (before or after it), each at the last event that shows it (so with the temporary file
    of the write that comes next, where one comes next)."""
    events: list[dict] = []

    def record(when, kind, path):
        name = f"{when} {kind} {Path(path).relative_to(folder)}"
        events.append({"event": len(events), "write": name, "state": snapshot(folder)})

    hook(record)
    result = run(folder)
    hook(lambda *a: None)
    points = [e for e, after in zip(events, events[1:] + [None]) if after is None or after["state"] != e["state"]]
    return result, [{"event": p["event"], "write": p["write"]} for p in points]


def kill_at(event: int, folder: Path):
    seen = {"n": -1}

    def count(when, kind, path):
        seen["n"] += 1
        if seen["n"] == event:
            os.kill(os.getpid(), signal.SIGKILL)

    def task():
        hook(count)
        run(folder)
        return {"error": "not killed"}

    return task


def resume_or_refusal(folder: Path):
    def task():
        try:
            return {"resumed": run(folder, resume=True)}
        except RunFolderError as exc:
            refusal = {"refused": str(exc)}
        if "there is no run to resume" in refusal["refused"]:
            refusal["restarted"] = run(folder)  # nothing was trained: the run starts afresh in the same folder
        return refusal

    return task


def live_run(work: Path) -> dict:
    """A run paused inside its second task while a resume and a new run of its folder are tried."""
    folder, paused, go = work / "live", work / "paused", work / "go"

    def pause(when, kind, path):
        if when == "before" and Path(path).name == "epoch_0.ckpt" and Path(path).parent.name == "task_1":
            paused.write_text(str(os.getpid()))
            while not go.exists():
                time.sleep(0.01)

    def live():
        hook(pause)
        return run(folder)

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            (work / "live.json").write_text(json.dumps(live()))
        except BaseException:  # noqa: B036
            (work / "live.json").write_text(json.dumps({"error": traceback.format_exc()}))
            code = 1
        os._exit(code)
    deadline = time.monotonic() + 120
    while not paused.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    before = snapshot(folder)
    attempts = {}
    for name, resume in (("resume", True), ("new run", False)):
        status, text = in_child(lambda resume=resume: run(folder, resume=resume))
        attempts[name] = json.loads(text)
    untouched = snapshot(folder) == before
    go.write_text("")
    _, status = os.waitpid(pid, 0)
    return {
        "pid": pid,
        "attempts": attempts,
        "untouched": untouched,
        "status": status,
        "result": json.loads((work / "live.json").read_text()),
    }


def main(work: Path, out: Path) -> None:
    started = time.perf_counter()
    reference, points = reference_run(work / "reference")
    results = []
    for point in points:
        folder = work / f"kill_{point['event']}"
        status, text = in_child(kill_at(point["event"], folder))
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        _, after = in_child(resume_or_refusal(folder))
        results.append({**point, "killed": killed, "child": None if killed else text, "after": json.loads(after)})
    report = {"reference": reference, "points": results, "live": live_run(work), "seconds": time.perf_counter() - started}
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
