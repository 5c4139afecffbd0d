"""A run stopped anywhere resumes inside the running task, from its last epoch checkpoint, and
ends bit-identical to the run that was never stopped: same matrix, same weights, same log."""

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET_TRAINER, small_model, small_sequence
from kills import GeneratorStates, SimulatedKill, StepCounter, StopAt

from clight import SequenceRunner
from clight.io import load_checkpoint
from clight.runner import RunInterrupted

pytestmark = pytest.mark.xdist_group("test_resume.reference")  # its tests share the module's reference runs

EPOCHS = 3
TRAINER = dict(QUIET_TRAINER, max_epochs=EPOCHS)


def _run(run_dir, methods=(), resume=False, **settings):
    runner = SequenceRunner(
        small_model(),
        small_sequence(replay=True),
        methods=list(methods),
        trainer=TRAINER,
        run_dir=str(run_dir),
        seed=0,
        resume=resume,
        **{"epoch_checkpoint_min_s": 0.0, **settings},  # by default every epoch's checkpoint, however short
    )
    return runner, runner.run()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (and one with a step budget), with the steps each task trained and
    the global generator's state at every training batch."""
    runs = {}
    for name, settings in (("epochs", {}), ("budget", {"max_steps_per_task": 25})):
        counter, generators = StepCounter(), GeneratorStates()
        runner, result = _run(tmp_path_factory.mktemp(name) / "run", [counter, generators], **settings)
        runs[name] = (runner, result, counter.steps, generators.states)
    return runs


def _assert_same_run(runner, result, reference) -> None:
    ref_runner, ref_result = reference[:2]
    np.testing.assert_array_equal(result.accuracy_matrix, ref_result.accuracy_matrix)
    for key, value in ref_runner.model.state_dict().items():
        assert torch.equal(value, runner.model.state_dict()[key]), key
    # one row per logged step, as in the uninterrupted run: nothing from the killed attempt repeats
    assert (result.run_dir / "logs" / "metrics.csv").read_text() == (ref_result.run_dir / "logs" / "metrics.csv").read_text()


@pytest.mark.parametrize(
    "stop, epochs_kept",
    [
        (dict(task=1, epoch=2, batch=3), 2),  # inside the last epoch of a middle task
        (dict(task=0, epoch=1, batch=0), 1),  # the first batch of an epoch of the first task
        (dict(task=2, val_epoch=1), 1),  # during the validation of epoch 1: its training is lost, epoch 0 is kept
        (dict(task=1, after_training=True), EPOCHS),  # after the last epoch checkpoint, before the task boundary
    ],
    ids=["mid-epoch", "first-task", "in-validation", "after-last-epoch"],
)
def test_a_killed_task_resumes_from_its_last_epoch(tmp_path, reference, stop, epochs_kept):
    full = reference["epochs"][2]
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(**stop)])
    counter = StepCounter()
    runner, result = _run(tmp_path / "run", [counter], resume=True)
    task = stop["task"]
    per_epoch = full[task] // EPOCHS
    assert counter.steps.get(task, 0) == (EPOCHS - epochs_kept) * per_epoch < full[task]
    assert all(counter.steps[t] == full[t] for t in range(task + 1, 3))  # later tasks: whole
    _assert_same_run(runner, result, reference["epochs"])


def test_a_resumed_epoch_draws_the_same_random_numbers(tmp_path, reference):
    """Dropout, noisy gates and anything else drawn from the global generators while training
    repeat after a resume: at every batch the generator is where the uninterrupted run's was
    (the data iterator's draw of its base seed comes after the epoch's reseed in both)."""
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(task=1, epoch=1, batch=3)])
    generators = GeneratorStates()
    _run(tmp_path / "run", [generators], resume=True)
    expected = reference["epochs"][3]
    assert min(generators.states) == (1, 1, 0)  # resumed from epoch 0's checkpoint
    assert set(generators.states) == {key for key in expected if key >= (1, 1, 0)}
    for key, state in generators.states.items():
        assert torch.equal(state, expected[key]), f"task {key[0]}, epoch {key[1]}, batch {key[2]}"


def test_a_step_budget_resumes_from_its_last_epoch(tmp_path, reference):
    full = reference["budget"][2]  # 25 steps per task: two whole epochs of 12, then one step
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(task=1, epoch=1, batch=2)], max_steps_per_task=25)
    counter = StepCounter()
    runner, result = _run(tmp_path / "run", [counter], resume=True, max_steps_per_task=25)
    assert full[1] == 25 and counter.steps[1] == 25 - 12  # epoch 0 of task 1 is kept
    _assert_same_run(runner, result, reference["budget"])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path, reference):
    full = reference["epochs"][2]
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(task=1, epoch=2, batch=1)])
    folder = tmp_path / "run" / "checkpoints" / "task_1"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0.ckpt", "epoch_1.ckpt"]
    _truncate(folder / "epoch_1.ckpt")
    counter = StepCounter()
    with pytest.warns(UserWarning, match=r"epoch_1.ckpt cannot be read.*falling back"):
        runner, result = _run(tmp_path / "run", [counter], resume=True)
    assert counter.steps[1] == 2 * full[1] // EPOCHS  # epoch 0 kept, epochs 1 and 2 trained again
    _assert_same_run(runner, result, reference["epochs"])


def test_epochs_shorter_than_epoch_checkpoint_min_s_write_none_and_a_killed_task_restarts_to_the_same_end(tmp_path, reference):
    full = reference["epochs"][2]
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(task=1, epoch=2, batch=1)], epoch_checkpoint_min_s=1e9)
    folder = tmp_path / "run" / "checkpoints" / "task_1"
    assert not folder.exists() or not list(folder.glob("*.ckpt"))  # no epoch ended 1e9 s into the fit
    counter = StepCounter()
    runner, result = _run(tmp_path / "run", [counter], resume=True, epoch_checkpoint_min_s=1e9)
    assert counter.steps[1] == full[1]  # the whole task again, from its boundary
    _assert_same_run(runner, result, reference["epochs"])


def test_an_epoch_checkpoint_is_due_after_min_seconds_of_training_on_rank_zero_s_clock(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from clight.runner import checkpoints

    now = [100.0]
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    asked = []

    def broadcast(obj, src=0):
        asked.append((obj, src))
        return rank_zero_says

    trainer = SimpleNamespace(strategy=SimpleNamespace(broadcast=broadcast))
    callback = checkpoints.EpochCheckpoint(tmp_path, min_seconds=10.0)
    callback.on_fit_start(trainer, None)
    now[0] += 9.0
    rank_zero_says = False
    assert callback._due(trainer) is False and asked == [(False, 0)]
    now[0] += 2.0
    assert callback._due(trainer) is False and asked[-1] == (True, 0)  # due here, but rank 0 says not yet
    rank_zero_says = True
    assert callback._due(trainer) is True
    assert checkpoints.EpochCheckpoint(tmp_path)._due(None) is True  # 0 s: every epoch, no collective


def test_with_every_epoch_checkpoint_damaged_the_task_restarts_from_its_boundary(tmp_path, reference):
    full = reference["epochs"][2]
    with pytest.raises(SimulatedKill):
        _run(tmp_path / "run", [StopAt(task=1, epoch=2, batch=1)])
    for path in (tmp_path / "run" / "checkpoints" / "task_1").glob("*.ckpt"):
        _truncate(path)
    counter = StepCounter()
    with pytest.warns(UserWarning, match="falling back"):
        runner, result = _run(tmp_path / "run", [counter], resume=True)
    assert counter.steps[1] == full[1]
    _assert_same_run(runner, result, reference["epochs"])


@pytest.mark.parametrize(
    "signum, after_batch",
    [(signal.SIGTERM, True), (signal.SIGINT, False)],
    ids=["SIGTERM-after-a-batch", "SIGINT-before-a-batch"],  # after a batch: where Lightning's own SIGTERM handling acts
)
def test_a_signal_stops_at_the_next_batch_and_the_run_resumes(tmp_path, reference, signum, after_batch):
    full = reference["epochs"][2]
    handler = signal.getsignal(signum)
    with pytest.raises(RunInterrupted) as stopped:
        _run(tmp_path / "run", [StopAt(task=1, epoch=1, batch=4, signum=signum, after_batch=after_batch)])
    assert stopped.value.exit_code == 128 + signum and "--resume" not in str(stopped.value)  # Python: resume=True
    assert "resume=True" in str(stopped.value)
    manifest = load_manifest(tmp_path / "run")
    assert manifest["status"] == "interrupted" and manifest["finished_fits"] == 1
    assert signal.getsignal(signum) is handler  # the run's handler is gone
    counter = StepCounter()
    runner, result = _run(tmp_path / "run", [counter], resume=True)
    assert counter.steps[1] == 2 * full[1] // EPOCHS
    _assert_same_run(runner, result, reference["epochs"])


def load_manifest(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "manifest.json").read_text())


def test_an_epoch_checkpoint_holds_only_what_a_fit_changes(tmp_path):
    from clight import MLP, ContinualClassifier

    torch.manual_seed(0)
    model = ContinualClassifier(MLP([64]), train_backbone=False)  # a frozen backbone: only the head trains
    runner = SequenceRunner(
        model,
        small_sequence(),
        methods=[StopAt(task=1, epoch=1, batch=0)],
        trainer=TRAINER,
        run_dir=str(tmp_path / "run"),
        early_stopping_patience=5,
        select_best=True,
        epoch_checkpoint_min_s=0.0,
    )
    with pytest.raises(SimulatedKill):
        runner.run()
    folder = tmp_path / "run" / "checkpoints" / "task_1"
    assert [p.name for p in folder.iterdir()] == ["epoch_0.ckpt"]  # renamed into place: no temporary file left
    checkpoint = load_checkpoint(folder / "epoch_0.ckpt")  # weights_only=True
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k for k, _ in model.named_buffers()} & set(model.state_dict())
    assert set(checkpoint["state_dict"]) == trainable | buffers
    assert not any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    assert {"EarlyStopping", "KeepBestWeights", "EpochCheckpoint"} <= {k.split("{")[0] for k in checkpoint["callbacks"]}
    assert len(checkpoint["optimizer_states"]) == 1 and "hyper_parameters" not in checkpoint
    assert checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
