"""The `clight` command end to end, in subprocesses as a user runs it."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def clight(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "clight", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_quickstart_end_to_end_and_report(tmp_path):
    run = tmp_path / "quick"
    proc = clight("fit", "--config", str(QUICKSTART), "--trainer.max_epochs=3", f"--run_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Task 5/5" in proc.stderr and "average_accuracy" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tasks_finished"] == 5
    assert metrics["average_accuracy"] > 0.5  # replay keeps most of the 10 digits
    assert (run / "config.yaml").read_text().count("SplitClasses") == 1
    (run / "plots" / "accuracy_matrix.png").unlink()
    report = clight("report", str(run))
    assert report.returncode == 0, report.stderr
    assert "backward_transfer" in report.stdout and (run / "plots" / "accuracy_matrix.png").exists()
    # reading a run folder needs neither Lightning nor a training process (its import alone takes seconds)
    probe = f"import sys, clight.cli as c; assert c.main(['report', {str(run)!r}]) == 0; assert 'lightning' not in sys.modules"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]


def test_help_and_print_config(capsys):
    assert clight("--help").returncode == 0  # a process: it must start without importing Lightning (cheap)
    from clight.cli import main

    # in-process (a process would spend its seconds importing Lightning): the same output and exit status
    for args, expected in (
        (["fit", "--help"], ["--trainer.max_epochs", "--runner.max_steps_per_task"]),
        (["fit", "--config", str(QUICKSTART), "--print_config"], ["class_path: clight.MLP", "max_epochs: 10"]),
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        out = capsys.readouterr().out
        assert exited.value.code == 0 and all(e in out for e in expected), out[-2000:]


@pytest.mark.parametrize(
    "args, field",
    [
        (["--trainer.max_epoch=3"], "max_epoch"),  # unknown key on the command line
        (["--config=TMP/unknown.yaml"], "batchsize"),  # unknown key in a YAML file
        (["--data.batch_size=many"], "batch_size"),  # wrong type
        (
            ["--data.replay.memory=ring"],
            "data.init_args.replay.init_args.memory (clight.Replay) on the command line (--data.replay.memory): "
            "Expected a typing.Literal['reservoir', 'class_balanced', 'all', 'greedy']. Got value: ring",
        ),  # bad value: the field and the choices
        (
            [
                "--data.scenario.init_args.source.class_path=clight.Torchvision",
                "--data.scenario.init_args.source.init_args.root=/nonexistent",
                "--data.scenario.init_args.source.init_args.download=false",
            ],
            "Torchvision",
        ),  # missing data
    ],
)
def test_bad_configs_name_the_field(tmp_path, capsys, args, field):
    # In-process: a bad config must fail in parsing or set-up, before any training.
    from clight.cli import main

    run = tmp_path / "bad"
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    (tmp_path / "unknown.yaml").write_text("data:\n  batchsize: 3\n")
    try:
        code = main(["fit", "--config", str(QUICKSTART), f"--run_dir={run}", *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code != 0
    stderr = capsys.readouterr().err
    assert field.lower() in stderr.lower(), stderr[-2000:]
    assert "Traceback" not in stderr
    assert not run.exists()


@pytest.mark.slow
def test_resume_flag_finishes_a_run(tmp_path, capsys):
    from clight.cli import main

    run = tmp_path / "r"
    first = clight(
        "fit", "--config", str(QUICKSTART), "--trainer.max_epochs=1", f"--run_dir={run}", "--data.scenario.init_args.num_tasks=2"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    # refused before anything runs: in-process saves a process start
    again = main(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=1",
            f"--run_dir={run}",
            "--data.scenario.init_args.num_tasks=2",
        ]
    )
    assert again != 0 and "--resume" in capsys.readouterr().err
    resumed = clight(
        "fit", "--config", str(QUICKSTART), "--trainer.max_epochs=1", f"--resume={run}", "--data.scenario.init_args.num_tasks=2"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def _stop_method(marker: Path, **where) -> str:
    """A `--methods` value: tests/kills.py's StopAt, armed once (the marker file disarms it)."""
    args = ", ".join(f'"{k}": {v}' for k, v in {**where, "marker": f'"{marker}"'}.items())
    return f'--methods=[{{"class_path": "kills.StopAt", "init_args": {{{args}}}}}]'


def _with_tests_on_path() -> dict:
    tests = str(Path(__file__).parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}


@pytest.mark.slow
def test_sigterm_stops_with_a_resume_hint_and_the_hint_finishes_the_run(tmp_path):
    from clight.cli import runner_from_config

    run, marker = tmp_path / "run", tmp_path / "stopped"
    args = [
        "--trainer.max_epochs=2",
        "--data.scenario.init_args.num_tasks=2",
        "--trainer.enable_progress_bar=false",
        "--runner.epoch_checkpoint_min_s=0",
        _stop_method(marker, task=1, epoch=1, batch=2, signum=15),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", **_with_tests_on_path())
    stopped = subprocess.run(
        [sys.executable, "-m", "clight", "fit", "--config", str(QUICKSTART), *args, f"--run_dir={run}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    # the command the user typed (their own config, never the run folder's copy), resuming
    hint = f"Continue with: clight fit --config {QUICKSTART} {shlex.join(args)} --resume {run}"
    assert "interrupted by SIGTERM in fit 2/2" in stopped.stderr and hint in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert (run / "checkpoints" / "task_1" / "epoch_0.ckpt").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", *shlex.split(hint.split(": ", 1)[1])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the same as a run never stopped (the marker exists now: StopAt stays disarmed)
    reference = runner_from_config(QUICKSTART, *args, f"--run_dir={tmp_path / 'reference'}").run()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["matrices"]["correct"] == reference.accuracy_matrix.tolist()


def test_an_accepted_config_change_is_recorded(tmp_path, capsys):
    from kills import SimulatedKill, StopAt

    from clight.cli import main, runner_from_config

    run = tmp_path / "run"
    small = ["--data.scenario.init_args.num_tasks=2", "--trainer.enable_progress_bar=false"]
    runner = runner_from_config(QUICKSTART, *small, "--trainer.max_epochs=1", f"--run_dir={run}")
    runner.methods.append(StopAt(task=1, epoch=0, batch=1))
    with pytest.raises(SimulatedKill):
        runner.run()
    more = [*small, "--trainer.max_epochs=2", f"--resume={run}"]
    assert main(["fit", "--config", str(QUICKSTART), *more]) == 2
    assert "trainer.max_epochs: 1 -> 2" in capsys.readouterr().err
    assert main(["fit", "--config", str(QUICKSTART), *more, "--allow_config_change"]) == 0
    changes = json.loads((run / "config_changes.json").read_text())
    assert len(changes) == 1 and changes[0]["changes"] == {"trainer.max_epochs": {"before": 1, "after": 2}}
    assert changes[0]["after_tasks"] == 1 and changes[0]["from_epoch_checkpoint"] is None
    assert "max_epochs: 1" in (run / "config.yaml").read_text()  # the config the run was started with stays
    # from now on the run's config is the changed one: the first config is the one that differs
    assert main(["fit", "--config", str(QUICKSTART), *small, "--trainer.max_epochs=1", f"--resume={run}"]) == 2
    assert "trainer.max_epochs: 2 -> 1" in capsys.readouterr().err
    assert main(["fit", "--config", str(QUICKSTART), *more]) == 0  # finished: nothing to do, the report again
