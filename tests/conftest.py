import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from clight import MLP, ContinualClassifier, Replay, SplitClasses, TaskSequence  # noqa: E402


def small_sequence(num_tasks: int = 3, replay: bool = False, setting: str = "class_incremental", batch_size: int = 32) -> TaskSequence:
    return TaskSequence(
        SplitClasses("digits", num_tasks=num_tasks, setting=setting),
        batch_size=batch_size,
        seed=0,
        replay=Replay("reservoir", capacity=60, batch_size=16) if replay else None,
    )


def small_model() -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP([64]))


QUIET_TRAINER = dict(accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, deterministic=True)


@pytest.fixture
def quiet_trainer():
    return dict(QUIET_TRAINER)
