"""A task of a continual sequence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sized, cast

from torch.utils.data import Dataset

from clight.choices import Setting, check_choice


@dataclass
class Task:
    """One task: its position, its data and the global class ids it contains."""

    index: int
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[int]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_size(self) -> int:
        """The number of training items (a task's data sets are map-style; torch's ``Dataset`` declares no ``__len__``)."""
        return len(cast(Sized, self.train))


@dataclass
class SequenceInfo:
    """What a model must know of the whole sequence before training starts."""

    setting: Setting
    num_tasks: int
    num_classes: int
    task_classes: list[list[int]]
    input_shape: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        check_choice("setting", self.setting, Setting)
