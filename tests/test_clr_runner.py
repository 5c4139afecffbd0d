"""CLR end to end: the runner's hooks drive it, BWT is exactly 0, resume and YAML configs work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clight import SequenceRunner, SplitClasses, TaskSequence
from clight.data.subsample import Subsample
from clight.methods.reprogramming import CLRClassifier
from clight.models.backbones import SmallCNN

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINER = dict(accelerator="cpu", devices=1, max_epochs=3, enable_progress_bar=False, deterministic=True)


def _sequence(num_tasks: int = 3) -> TaskSequence:
    return TaskSequence(SplitClasses("digits", num_tasks=num_tasks, setting="task_incremental"), batch_size=32, seed=0)


def _model() -> CLRClassifier:
    torch.manual_seed(0)
    return CLRClassifier(SmallCNN((8, 16)), optimizer=lambda params: torch.optim.Adam(params, lr=0.01))


def test_runner_three_tasks_bwt_exactly_zero(tmp_path):
    result = SequenceRunner(
        _model(), _sequence(), trainer=TRAINER, run_dir=str(tmp_path / "run"), seed=0, early_stopping_patience=5, select_best=True
    ).run()
    a = result.accuracy_matrix
    for j in range(3):
        for t in range(j + 1, 3):
            assert a[t, j] == a[j, j]  # bit-identical, not approximately equal
    assert result.metrics["backward_transfer"] == 0.0
    assert np.all(np.diag(a) > 0.6)  # a frozen random CNN, reprogrammed: well above chance
    described = result.metrics["model"]
    assert described["variant"] == "CLR" and described["model_selection"].startswith("validation")
    assert (tmp_path / "run" / "logs" / "metrics.csv").read_text().count("train/clr_norm") == 1


def test_runner_resume_rebuilds_per_task_state(tmp_path):
    class Stop(Exception):
        pass

    from clight.methods import ContinualCallback

    class StopAfterTask1(ContinualCallback):
        def on_task_end(self, module, task):
            if task.index == 1:
                raise Stop()

    run = str(tmp_path / "run")
    with pytest.raises(Stop):
        SequenceRunner(_model(), _sequence(), methods=[StopAfterTask1()], trainer=TRAINER, run_dir=run, seed=0).run()
    # the task-1 boundary was not written: the resumed run restores task 0 and redoes task 1
    resumed = SequenceRunner(_model(), _sequence(), trainer=TRAINER, run_dir=run, seed=0, resume=True).run()
    full = SequenceRunner(_model(), _sequence(), trainer=TRAINER, run_dir=str(tmp_path / "full"), seed=0).run()
    assert resumed.accuracy_matrix[2, 0] == resumed.accuracy_matrix[0, 0]
    assert resumed.accuracy_matrix[0, 0] == full.accuracy_matrix[0, 0]


def test_subsample_caps_every_split_per_class():
    data = TaskSequence(
        Subsample(SplitClasses("digits", 2, "task_incremental"), train_per_class=10, val_per_class=3, test_per_class=5), seed=0
    )
    again = TaskSequence(
        Subsample(SplitClasses("digits", 2, "task_incremental"), train_per_class=10, val_per_class=3, test_per_class=5), seed=0
    )
    for task, other in zip(data.tasks, again.tasks):
        assert task.train.targets.bincount()[task.classes].tolist() == [10] * len(task.classes)
        assert len(task.val) == 3 * task.num_classes and len(task.test) == 5 * task.num_classes
        assert torch.equal(task.train.indices, other.train.indices)  # same seed, same samples
        assert not set(task.train.indices.tolist()) & set(task.val.indices.tolist())
    assert data.info.setting == "task_incremental"


@pytest.mark.parametrize("name", ["clr_fmnist", "clr_fmnist_linear_probe", "clr_fmnist_finetune"])
def test_configs_parse_and_build(name):
    from clight.cli import build_fit_parser

    parser = build_fit_parser()
    cfg = parser.parse_args(["--config", str(CONFIGS / f"{name}.yaml")])
    init = parser.instantiate(cfg)
    assert init.data.scenario.setting == "task_incremental"
    assert init.model.backbone.image_size == (64, 64)
    if name == "clr_fmnist":
        assert isinstance(init.model, CLRClassifier) and init.model.norm_penalty == 1e-5
        assert cfg.runner.select_best and cfg.runner.early_stopping_patience is not None
