"""The user's Lightning loggers and callbacks from the config (trainer.logger, trainer.callbacks),
beside clight's own CSV record: a real TensorBoard logger's event files are read back."""

import csv
import json

import pytest

from clight.cli import main

STEPS = 6  # optimizer steps per task


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_tensorboard_logger_receives_per_step_and_per_task_scalars_across_tasks(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir, tb = tmp_path / "run", tmp_path / "tb"
    argv = ["fit", "--config", "configs/quickstart.yaml", "--run_dir", str(run_dir), "--trainer.max_epochs=1"]
    argv += [f"--runner.max_steps_per_task={STEPS}", "--trainer.log_every_n_steps=2", "--trainer.enable_progress_bar=false"]
    argv += ["--data.scenario.init_args.num_tasks=3", "--model.init_args.backbone.init_args.hidden_sizes=[16]"]
    argv += ["--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={tb}"]
    argv += ["--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"]
    assert main(argv) == 0
    scalars = _scalars(tb / "lightning_logs" / "version_0")
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    csv_loss = [(int(r["step"]), float(r["train/loss"])) for r in rows if r["train/loss"]]
    tb_steps = [step for step, _ in scalars["train/loss"]]
    assert tb_steps == [step for step, _ in csv_loss]  # the run folder's record stays, with the same steps
    assert tb_steps == sorted(set(tb_steps)) and tb_steps[-1] >= 2 * STEPS  # continuing across the 3 tasks
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in csv_loss], rel=1e-6)
    matrix = json.loads((run_dir / "manifest.json").read_text())["matrices"]["correct"]
    for j in range(3):  # every task's row, at the global step where its fit ended
        assert scalars[f"cl/acc_task_{j}"] == [((k + 1) * STEPS, pytest.approx(matrix[k][j])) for k in range(3)]
    assert scalars["cl/tasks_finished"] == [((k + 1) * STEPS, k + 1) for k in range(3)]
    assert "lr-Adam" in scalars  # the user's LearningRateMonitor ran in every fit
    assert {step for step, _ in scalars["lr-Adam"]} >= {0, STEPS, 2 * STEPS}


def test_a_method_among_the_trainer_callbacks_is_refused_in_one_line(tmp_path, capsys):
    argv = ["fit", "--config", "configs/quickstart.yaml", "--run_dir", str(tmp_path / "run")]
    assert main([*argv, "--trainer.callbacks+=clight.EWC"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EWC is a continual-learning method: list it under methods" in err
    assert not (tmp_path / "run").exists()
