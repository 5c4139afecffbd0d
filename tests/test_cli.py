"""The `clight` command end to end, in subprocesses as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def clight(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "clight", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


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


def test_help_and_print_config():
    assert clight("--help").returncode == 0
    helped = clight("fit", "--help")
    assert helped.returncode == 0 and "--trainer.max_epochs" in helped.stdout and "--runner.max_steps_per_task" in helped.stdout
    printed = clight("fit", "--config", str(QUICKSTART), "--print_config")
    assert printed.returncode == 0 and "class_path: clight.MLP" in printed.stdout and "max_epochs: 10" in printed.stdout


@pytest.mark.parametrize(
    "args, field",
    [
        (["--trainer.max_epoch=3"], "max_epoch"),  # unknown key on the command line
        (["--config=TMP/unknown.yaml"], "batchsize"),  # unknown key in a YAML file
        (["--data.batch_size=many"], "batch_size"),  # wrong type
        (["--data.replay.memory=ring"], "Parser key \"memory\":\n              Expected a typing.Literal['reservoir', 'class_balanced', 'all']. Got value: ring"),  # bad value: the field and the choices
        (["--data.scenario.init_args.source.class_path=clight.Torchvision", "--data.scenario.init_args.source.init_args.root=/nonexistent",
          "--data.scenario.init_args.source.init_args.download=false"], "Torchvision"),  # missing data
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


def test_resume_flag_finishes_a_run(tmp_path):
    run = tmp_path / "r"
    first = clight("fit", "--config", str(QUICKSTART), "--trainer.max_epochs=1", f"--run_dir={run}", "--data.scenario.init_args.num_tasks=2")
    assert first.returncode == 0, first.stderr[-2000:]
    again = clight("fit", "--config", str(QUICKSTART), "--trainer.max_epochs=1", f"--run_dir={run}", "--data.scenario.init_args.num_tasks=2")
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = clight("fit", "--config", str(QUICKSTART), "--trainer.max_epochs=1", f"--resume={run}", "--data.scenario.init_args.num_tasks=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
