"""What a training step logs and when it stops on a non-finite loss."""

import csv
import json
import math

import pytest
import torch
from conftest import small_model, small_sequence

from clight import SequenceRunner
from clight.methods import ContinualCallback
from clight.models.finite import MAX_PENDING, FiniteLossCheck, NonFiniteLossError

EVERY = 4  # trainer.log_every_n_steps in these tests


class RecordSteps(ContinualCallback):
    """Every step's loss as Lightning returns it, and the logged loss each fit ends with."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []
        self.last_batches: list[set[int]] = []
        self.final_logged: list[float] = []

    def on_train_start(self, trainer, module) -> None:
        self.losses.append([])
        self.last_batches.append(set())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses[-1].append(float(outputs["loss"]))
        if trainer.is_last_batch:
            self.last_batches[-1].add(len(self.losses[-1]) - 1)

    def on_train_end(self, trainer, module) -> None:
        self.final_logged.append(float(trainer.callback_metrics["train/loss"]))


class PoisonAt(ContinualCallback):
    """Puts a NaN into the inputs of global step ``step`` of the first fit."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if module.current_task == 0 and trainer.global_step == self.step:
            batch["input"][0].fill_(float("nan"))


def _runner(tmp_path, methods, **trainer):
    trainer = dict(accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, log_every_n_steps=EVERY, **trainer)
    return SequenceRunner(
        small_model(), small_sequence(num_tasks=2), methods=methods, trainer=trainer, run_dir=str(tmp_path / "run")
    )


def test_logged_losses_are_the_steps_lightning_writes(tmp_path, monkeypatch):
    record = RecordSteps()
    runner = _runner(tmp_path, [record])
    calls = []
    log = type(runner.model).log
    monkeypatch.setattr(type(runner.model), "log", lambda self, name, *a, **k: (calls.append(name), log(self, name, *a, **k)))
    runner.run()
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    logged = {int(r["step"]): float(r["train/loss"]) for r in rows}
    expected, offset = {}, 0
    for losses in record.losses:  # the rows per-step logging writes: every EVERY-th step of each fit
        expected.update({offset + s: losses[s] for s in range(len(losses)) if (s + 1) % EVERY == 0})
        offset += len(losses)
    assert logged.keys() == expected.keys()
    for step, value in expected.items():
        assert logged[step] == pytest.approx(value, rel=1e-6)
    # self.log ran only on those steps and on the last step of every epoch, never on the others
    handed = sum(
        len({s for s in range(len(losses)) if (s + 1) % EVERY == 0} | last)
        for losses, last in zip(record.losses, record.last_batches)
    )
    assert calls.count("train/loss") == handed < sum(len(losses) for losses in record.losses) / 2
    # callbacks reading the logged loss after a fit see the fit's last step
    assert record.final_logged == pytest.approx([losses[-1] for losses in record.losses], rel=1e-6)


def test_nan_on_the_cpu_stops_before_the_optimizer_steps(tmp_path):
    runner = _runner(tmp_path, [PoisonAt(5)])
    with pytest.raises(NonFiniteLossError, match=r"became nan at task 0, step 5\. Lower the learning rate"):
        runner.run()
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())  # checked before the update


def test_deferred_check_names_the_first_bad_step_and_saves_nothing(tmp_path):
    runner = _runner(tmp_path, [PoisonAt(5)])
    runner.model.check_finite_every_step = False  # what an accelerator does: read back at logged steps
    with pytest.raises(NonFiniteLossError, match=r"became nan at task 0, step 5\."):
        runner.run()
    # step 5 is not a logged step: the run went on to the next one (step 7) and stopped there,
    # before the end of the epoch, so no epoch checkpoint holds the poisoned weights
    assert runner.model.global_step == 2 * EVERY - 1
    assert not list((tmp_path / "run" / "checkpoints").rglob("*.ckpt"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["finished_tasks"] == 0  # says why it stopped, holds no result


def test_pending_losses_are_read_together():
    check = FiniteLossCheck()
    for step, value in enumerate([1.0, 2.0, math.inf, math.nan, 3.0]):
        check.observe(torch.tensor(value), task=1, step=step, due=False, every_step=False)
    assert len(check.pending) == 5  # nothing read back yet
    with pytest.raises(NonFiniteLossError, match="became inf at task 1, step 2"):
        check.check()
    assert check.pending == []
    check.check()  # nothing left to report


def test_pending_losses_are_bounded():
    check = FiniteLossCheck()
    for step in range(MAX_PENDING - 1):
        check.observe(torch.tensor(1.0), task=0, step=step, due=False, every_step=False)
    with pytest.raises(NonFiniteLossError, match=f"step {MAX_PENDING - 1}"):
        check.observe(torch.tensor(math.nan), task=0, step=MAX_PENDING - 1, due=False, every_step=False)


def test_cpu_losses_are_checked_at_once():
    check = FiniteLossCheck()
    check.observe(torch.tensor(1.0), task=0, step=0, due=False)
    assert check.pending == []
    with pytest.raises(NonFiniteLossError, match="step 1"):
        check.observe(torch.tensor(-math.inf, requires_grad=True) * 1, task=0, step=1, due=False)
