"""The method contract, checked on every method and model class of clight (present and future).

For each class: a two-task run with two instances of the method (or the model alone) keeps
each instance's state under its own key in the checkpoint; a run killed inside the second task
and resumed ends with the same accuracy matrix and the same method state, bit for bit, as the
uninterrupted run; ``describe()`` is JSON as it stands. Mismatches are refused before anything
runs.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

import numpy as np
import pytest
import torch
from contract_examples import KILL_AT, METHOD_EXAMPLES, MODEL_EXAMPLES, TRAINER, classifier, digits, text, tiny_lm

import clight
from clight import ConfigError, ContinualCallback, ContinualModule, SequenceRunner
from clight.io import load_checkpoint
from clight.methods.base import assign_state_keys
from clight.methods.lora_family import TaskLoRAMethod
from clight.methods.plasticity.hooked import UnitCallback
from clight.methods.prompts import PromptClassifier
from clight.methods.prototypes import ClassStatisticsMethod

BASES = {ContinualCallback, ContinualModule, UnitCallback, TaskLoRAMethod, ClassStatisticsMethod, PromptClassifier}


def _clight_classes(base: type) -> set[type]:
    for info in pkgutil.walk_packages(clight.__path__, "clight."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("clight.") and sub not in BASES and not sub.__name__.startswith("_"):
                found.add(sub)
    return found


class SimulatedKill(RuntimeError):
    pass


class KillAt(ContinualCallback):
    """Kills the run at a batch of a task, or, in a task that trains nothing (gradient-free methods
    learn in ``on_task_end``), after the methods before it have learned the task and before its
    checkpoint is written."""

    def __init__(self, task: int, epoch: int, batch: int) -> None:
        self.task, self.epoch, self.batch = task, epoch, batch
        self.batches = 0

    def on_task_start(self, module, task) -> None:
        self.batches = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches += 1
        if module.current_task == self.task and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedKill("killed")

    def on_task_end(self, module, task) -> None:
        if task.index == self.task and self.batches == 0:
            raise SimulatedKill("killed after a task without training")


def assert_same(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _run(example, run_dir, extra=(), resume=False):
    model, data, methods = example()
    runner = SequenceRunner(model, data, methods=[*methods, *extra], trainer=TRAINER, run_dir=str(run_dir), seed=0, resume=resume)
    return runner, runner.run()


def test_every_class_has_a_contract_example():
    missing_methods = _clight_classes(ContinualCallback) - set(METHOD_EXAMPLES)
    missing_models = _clight_classes(ContinualModule) - set(MODEL_EXAMPLES)
    assert not missing_methods and not missing_models, (
        f"add examples to tests/contract_examples.py for {missing_methods | missing_models}"
    )


@pytest.mark.parametrize("cls", list(METHOD_EXAMPLES) + list(MODEL_EXAMPLES), ids=lambda c: c.__name__)
def test_state_resume_and_description(tmp_path, cls):
    example = METHOD_EXAMPLES.get(cls) or MODEL_EXAMPLES[cls]
    reference, result = _run(example, tmp_path / "reference")
    methods = reference.methods
    keys = [m.state_key for m in methods]
    assert len(set(keys)) == len(keys), keys
    saved = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last_task.pt")  # weights_only=True
    assert set(saved["methods"]) == set(keys)
    for method in methods:
        assert_same(saved["methods"][method.state_key], method.state_dict(), method.state_key)
        json.dumps(method.describe())
        assert set(method.state_dict()) <= set(type(method).state_layout), f"declare {method.state_key}'s state_layout"
    json.dumps(reference.model.describe())

    with pytest.raises(SimulatedKill):
        _run(example, tmp_path / "killed", extra=[KillAt(**KILL_AT)])
    resumed, again = _run(example, tmp_path / "killed", resume=True)
    np.testing.assert_array_equal(again.accuracy_matrix, result.accuracy_matrix)
    for before, after in zip(methods, resumed.methods):
        assert before.state_key == after.state_key
        assert_same(before.state_dict(), after.state_dict(), before.state_key)
    assert_same(reference.model.state_dict(), resumed.model.state_dict(), "model")


@pytest.mark.parametrize("cls", list(MODEL_EXAMPLES), ids=lambda c: c.__name__)
def test_frozen_copy_is_independent_and_equal(cls):
    model, data, _ = MODEL_EXAMPLES[cls]()
    model.setup_sequence(data.info)
    model.on_task_start(data.tasks[0])
    copy = model.frozen_copy()
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training
    assert copy.loss_terms == {} and copy._trainer is None
    batch = next(iter(data.evaluation_loader(0)))
    model.eval()
    assert_same(model.evaluation_counts(batch), copy.evaluation_counts(batch), "counts")
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(model.parameters()))


def test_identical_instances_get_distinct_keys_in_config_order():
    from clight.methods.regularization import EWC

    methods = [EWC(), EWC(lambda_=5.0), EWC()]
    assign_state_keys(methods)
    assert methods[0].state_key != methods[2].state_key and methods[2].state_key.endswith("#1")
    assert methods[0].state_key == EWC().state_key and "lambda_" in methods[0].state_key


@pytest.mark.parametrize(
    "make, needs",
    [
        (lambda: (classifier(), digits(), "GeneralReplay"), "CausalLanguageModel"),
        (lambda: (tiny_lm(), text(), "LwF"), "DistillableClassifier"),
    ],
)
def test_a_method_that_does_not_apply_is_refused_before_anything_runs(tmp_path, make, needs):
    from clight.methods.general_replay import GeneralReplay
    from clight.methods.regularization import LwF

    model, data, name = make()
    method = {"GeneralReplay": GeneralReplay, "LwF": LwF}[name]()
    with pytest.raises(ConfigError, match=needs):
        SequenceRunner(model, data, methods=[method], trainer=TRAINER, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


def test_a_model_refuses_a_scenario_it_does_not_support(tmp_path):
    from contract_examples import clr

    with pytest.raises(ConfigError, match="task_incremental"):
        SequenceRunner(clr(), digits(), trainer=TRAINER, run_dir=str(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()
