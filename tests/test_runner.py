import json

import numpy as np
import pytest
from conftest import small_model, small_sequence

from clight import SequenceRunner
from clight.io import load_checkpoint
from clight.methods import ContinualCallback
from clight.metrics import average_accuracy, backward_transfer, forgetting
from clight.runner import RunFolderError


class SimulatedKill(RuntimeError):
    pass


class KillAt(ContinualCallback):
    """Raises inside task ``task`` at (epoch, batch), or at that task's end, like a killed process."""

    def __init__(self, task: int, epoch: int = -1, batch: int = -1, at_task_end: bool = False) -> None:
        self.task, self.epoch, self.batch, self.at_task_end = task, epoch, batch, at_task_end

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.current_task == self.task and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedKill("killed")

    def on_task_end(self, module, task):
        if self.at_task_end and task.index == self.task:
            raise SimulatedKill("killed at the task boundary")


def _run(tmp_path, name, trainer, methods=(), resume=False, **kwargs):
    runner = SequenceRunner(
        small_model(),
        small_sequence(replay=True),
        methods=list(methods),
        trainer=trainer,
        run_dir=str(tmp_path / name),
        seed=0,
        resume=resume,
        **kwargs,
    )
    return runner.run()


def test_run_fills_the_matrix_and_the_run_folder(tmp_path, quiet_trainer):
    result = _run(tmp_path, "run", quiet_trainer)
    a = result.accuracy_matrix
    assert a.shape == (3, 3)
    assert np.all(np.triu(a, 1) == 0)  # class-incremental: unseen classes are masked
    assert result.metrics["average_accuracy"] == pytest.approx(average_accuracy(a))
    assert result.metrics["backward_transfer"] == pytest.approx(backward_transfer(a))
    assert result.metrics["forgetting"] == pytest.approx(forgetting(a))
    run = result.run_dir
    for name in (
        "manifest.json",
        "metrics.json",
        "accuracy_matrix.csv",
        "accuracy_matrix_task_aware.csv",
        "plots/accuracy_matrix.png",
        "plots/task_accuracy.png",
        "checkpoints/last_task.pt",
        "logs/metrics.csv",
    ):
        assert (run / name).exists(), name
    rows = (run / "accuracy_matrix.csv").read_text().strip().splitlines()
    assert rows[0] == "after_task,task_0,task_1,task_2" and len(rows) == 4
    assert float(rows[3].split(",")[1]) == pytest.approx(a[2, 0], abs=1e-6)


def test_logger_steps_continue_across_tasks(tmp_path, quiet_trainer):
    result = _run(tmp_path, "run", quiet_trainer)
    lines = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    steps = [int(float(r.split(",")[header.index("step")])) for r in lines[1:]]
    finished = [r for r in lines[1:] if r.split(",")[header.index("cl/tasks_finished")]]
    assert len(finished) == 3
    cl_steps = [int(float(r.split(",")[header.index("step")])) for r in finished]
    assert cl_steps == sorted(cl_steps) and len(set(cl_steps)) == 3 and cl_steps[0] > 0
    assert max(steps) == cl_steps[-1]


def test_checkpoints_load_without_unpickling(tmp_path, quiet_trainer):
    result = _run(tmp_path, "run", quiet_trainer)
    state = load_checkpoint(result.run_dir / "checkpoints" / "last_task.pt")  # weights_only=True
    assert "model" in state and len(state["data"]["memory"]["entries"]) == 60


@pytest.mark.parametrize("kill", [dict(task=1, epoch=1, batch=3), dict(task=2, at_task_end=True), dict(task=0, epoch=0, batch=2)])
def test_killed_run_resumes_to_the_same_matrix(tmp_path, quiet_trainer, kill):
    reference = _run(tmp_path, "reference", quiet_trainer)
    with pytest.raises(SimulatedKill):
        _run(tmp_path, "killed", quiet_trainer, methods=[KillAt(**kill)])
    resumed = _run(tmp_path, "killed", quiet_trainer, resume=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, reference.accuracy_matrix)
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["finished_tasks"] == 3
    log = (tmp_path / "killed" / "logs" / "metrics.csv").read_text().splitlines()
    column = log[0].split(",").index("cl/tasks_finished")
    assert [r.split(",")[column] for r in log[1:] if r.split(",")[column]] == ["1", "2", "3"]


def test_existing_run_folder_is_never_overwritten(tmp_path, quiet_trainer):
    _run(tmp_path, "run", quiet_trainer)
    before = (tmp_path / "run" / "manifest.json").read_bytes()
    with pytest.raises(RunFolderError, match="--resume"):
        _run(tmp_path, "run", quiet_trainer)
    assert (tmp_path / "run" / "manifest.json").read_bytes() == before


def test_joint_training_is_one_fit_on_all_tasks(tmp_path, quiet_trainer):
    joint = _run(tmp_path, "joint", quiet_trainer, baseline="joint")
    finetune = SequenceRunner(small_model(), small_sequence(), trainer=quiet_trainer, run_dir=str(tmp_path / "ft")).run()
    assert joint.accuracy_matrix.shape == (1, 3)
    assert joint.metrics["backward_transfer"] is None
    # the upper bound: all classes learned together, nothing to forget
    assert joint.metrics["average_accuracy"] > finetune.metrics["average_accuracy"] + 0.2


def test_compute_budget_fixes_the_optimizer_steps_per_task(tmp_path, quiet_trainer):
    result = _run(tmp_path, "budget", quiet_trainer, max_steps_per_task=7)
    lines = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    finished = [r.split(",") for r in lines[1:] if r.split(",")[header.index("cl/tasks_finished")]]
    assert [int(float(r[header.index("step")])) for r in finished] == [7, 14, 21]


def test_task_incremental_heads_and_unseen_tasks(tmp_path, quiet_trainer):
    model = small_model()
    runner = SequenceRunner(
        model, small_sequence(setting="task_incremental"), trainer=quiet_trainer, run_dir=str(tmp_path / "til")
    )
    result = runner.run()
    a = result.accuracy_matrix
    assert np.isnan(a[0, 1]) and np.isnan(a[1, 2])  # no head yet for unseen tasks
    assert sorted(model.heads) == ["0", "1", "2"]
    assert np.all(np.diag(a) > 0.85)  # two epochs of a 64-unit MLP on 2-class digit tasks
    assert result.metrics["forward_transfer"] is None


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, quiet_trainer):
    class PoisonInputs(ContinualCallback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batch["input"][0, 0, 0, 0] = float("nan")

    with pytest.raises(FloatingPointError, match="learning rate"):
        _run(tmp_path, "nan", quiet_trainer, methods=[PoisonInputs()])
    manifest = json.loads((tmp_path / "nan" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "learning rate" in manifest["error"] and manifest["finished_fits"] == 0


def test_trainer_callbacks_that_are_not_lightning_callbacks_are_rejected_with_a_hint(tmp_path):
    with pytest.raises(ValueError, match="trainer.callbacks holds object, not a Lightning Callback"):
        SequenceRunner(small_model(), small_sequence(), trainer={"callbacks": [object()]}, run_dir=str(tmp_path / "x"))


@pytest.mark.slow
def test_ewc_and_lwf_reduce_forgetting_and_resume_exactly(tmp_path, quiet_trainer):
    from clight import PermutedInputs, TaskSequence
    from clight.methods.regularization import EWC, LwF

    def run(name, methods, resume=False):
        return SequenceRunner(
            small_model(),
            TaskSequence(PermutedInputs("digits", 3), batch_size=32),
            methods=methods,
            trainer=dict(quiet_trainer, max_epochs=3),
            run_dir=str(tmp_path / name),
            resume=resume,
        ).run()

    finetune = run("ft", [])  # forgets about a quarter of what it learned on permuted digits
    for make in (lambda: EWC(lambda_=100.0, fisher_samples=100), lambda: LwF(alpha=2.0)):
        method = run(type(make()).__name__, [make()])
        assert method.metrics["forgetting"] < finetune.metrics["forgetting"], type(make()).__name__
        with pytest.raises(SimulatedKill):
            run("killed" + type(make()).__name__, [make(), KillAt(task=2, epoch=1, batch=2)])
        resumed = run("killed" + type(make()).__name__, [make()], resume=True)
        np.testing.assert_array_equal(resumed.accuracy_matrix, method.accuracy_matrix)


def test_resume_with_best_epoch_selection_restores_the_same_weights(tmp_path, quiet_trainer):
    trainer = dict(quiet_trainer, max_epochs=3)
    reference = _run(tmp_path, "reference", trainer, select_best=True)
    with pytest.raises(SimulatedKill):
        _run(tmp_path, "killed", trainer, methods=[KillAt(task=1, epoch=2, batch=1)], select_best=True)
    resumed = _run(tmp_path, "killed", trainer, resume=True, select_best=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, reference.accuracy_matrix)
