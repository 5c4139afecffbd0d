"""Scenarios cut a sequence of tasks out of one or more sources, the same way on every rank.

Everything random here (class order, pixel permutations, validation splits) comes from a
``torch.Generator`` seeded with the run seed, so any process that builds the sequence with the
same seed gets identical tasks.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch

from clight.choices import Setting, check_choice
from clight.data.sources import Source, SourceData, resolve_source
from clight.data.task import Task
from clight.data.views import TaskView, dataset_targets, fetch_pairs
from clight.seeding import seeded_generator

SplitSetting = Literal["class_incremental", "task_incremental"]
ClassOrder = Literal["sorted", "shuffled"]


def split_train_val(indices: torch.Tensor, val_fraction: float, generator: torch.Generator):
    """Shuffle ``indices`` and hold out ``val_fraction`` of them (at least one) for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = indices[torch.randperm(len(indices), generator=generator)]
    n_val = max(1, int(round(val_fraction * len(perm))))
    if n_val >= len(perm):
        raise ValueError(f"a task has only {len(perm)} training samples: too few to hold out a validation split")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class Scenario:
    """Builds ``Task`` objects. Subclasses set ``setting`` and implement ``build``."""

    setting: Setting = "class_incremental"

    def build(self, seed: int, val_fraction: float) -> list[Task]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def num_classes(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


def _views_for_classes(
    data: SourceData, classes: Sequence[int], task_id: int, val_fraction: float, g: torch.Generator, transform=None
) -> tuple[TaskView, TaskView, TaskView]:
    cls = torch.as_tensor(list(classes))
    train_idx = torch.isin(dataset_targets(data.train), cls).nonzero().flatten()
    test_idx = torch.isin(dataset_targets(data.test), cls).nonzero().flatten()
    if data.val is not None:
        val_base, val_idx = data.val, torch.isin(dataset_targets(data.val), cls).nonzero().flatten()
    else:
        train_idx, val_idx = split_train_val(train_idx, val_fraction, g)
        val_base = data.train
    return (
        TaskView(data.train, train_idx, task_id, transform),
        TaskView(val_base, val_idx, task_id, transform),
        TaskView(data.test, test_idx, task_id, transform),
    )


class SplitClasses(Scenario):
    """The classes of one source split into ``num_tasks`` disjoint groups.

    ``setting`` is ``class_incremental`` (one head over all classes seen so far) or
    ``task_incremental`` (one head per task, task id given at test). ``class_order``:
    ``sorted``, ``shuffled`` (by the run seed) or an explicit list of class ids.
    """

    def __init__(
        self,
        source: Union[Source, str] = "digits",
        num_tasks: int = 5,
        setting: SplitSetting = "class_incremental",
        class_order: Union[ClassOrder, list[int]] = "sorted",
    ) -> None:
        check_choice("SplitClasses.setting", setting, SplitSetting)
        if not isinstance(class_order, (list, tuple)):
            check_choice("SplitClasses.class_order", class_order, ClassOrder)
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        self.source = resolve_source(source)
        self.num_tasks = num_tasks
        self.setting = setting
        self.class_order = class_order

    @property
    def num_classes(self) -> int:
        return self.source.data().num_classes

    def _order(self, seed: int) -> list[int]:
        n = self.num_classes
        if isinstance(self.class_order, (list, tuple)):
            if sorted(self.class_order) != list(range(n)):
                raise ValueError(f"class_order must be a permutation of 0..{n - 1}, got {self.class_order}")
            return list(self.class_order)
        if self.class_order == "sorted":
            return list(range(n))
        return torch.randperm(n, generator=seeded_generator(seed, 1)).tolist()

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        data = self.source.data()
        if self.num_tasks > data.num_classes:
            raise ValueError(f"cannot split {data.num_classes} classes into {self.num_tasks} tasks")
        order = self._order(seed)
        groups = [g.tolist() for g in torch.tensor(order).tensor_split(self.num_tasks)]
        tasks = []
        for t, classes in enumerate(groups):
            train, val, test = _views_for_classes(data, classes, t, val_fraction, seeded_generator(seed, 2, t))
            names = ",".join(data.class_names[c] for c in classes) if data.class_names else str(classes)
            tasks.append(Task(t, f"{data.name}[{names}]", train, val, test, classes))
        return tasks


class PixelPermutation:
    """A fixed permutation of the flattened input (a picklable batch transform)."""

    deterministic = True  # the same input always gives the same output: a task's inputs may be permuted once

    def __init__(self, permutation: torch.Tensor) -> None:
        self.permutation = permutation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # index_select, not [:, permutation]: a quarter of the time on a batch of 16 images
        flat = x.reshape(x.shape[0], -1).index_select(1, self.permutation)
        return flat.reshape(x.shape)


class PermutedInputs(Scenario):
    """Domain-incremental: every task is the whole source with its own fixed pixel permutation.

    Same classes in every task, one shared head. ``identity_first`` keeps task 0 unpermuted.
    ``train_samples_per_task`` caps each task's training set (a random subset per task), which
    is how long plasticity sequences stay affordable.
    """

    setting = "domain_incremental"

    def __init__(
        self,
        source: Union[Source, str] = "digits",
        num_tasks: int = 10,
        identity_first: bool = False,
        train_samples_per_task: Optional[int] = None,
        test_samples_per_task: Optional[int] = None,
    ) -> None:
        self.source = resolve_source(source)
        self.num_tasks = num_tasks
        self.identity_first = identity_first
        self.train_samples_per_task = train_samples_per_task
        self.test_samples_per_task = test_samples_per_task

    @property
    def num_classes(self) -> int:
        return self.source.data().num_classes

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        data = self.source.data()
        classes = list(range(data.num_classes))
        n_pixels = data.train[0][0].numel()
        tasks = []
        for t in range(self.num_tasks):
            g = seeded_generator(seed, 3, t)
            perm = torch.arange(n_pixels) if (t == 0 and self.identity_first) else torch.randperm(n_pixels, generator=g)
            train, val, test = _views_for_classes(data, classes, t, val_fraction, g, PixelPermutation(perm))
            train.indices = _cap(train.indices, self.train_samples_per_task, g)
            test.indices = _cap(test.indices, self.test_samples_per_task, g)
            tasks.append(Task(t, f"{data.name}[perm {t}]", train, val, test, classes))
        return tasks


def _cap(indices: torch.Tensor, limit: Optional[int], g: torch.Generator) -> torch.Tensor:
    if limit is None or limit >= len(indices):
        return indices
    return indices[torch.randperm(len(indices), generator=g)[:limit]].sort().values


class DatasetList(Scenario):
    """Each source is a task. Class ids are offset so they stay distinct across tasks."""

    def __init__(self, sources: list[Union[Source, str]], setting: SplitSetting = "task_incremental") -> None:
        check_choice("DatasetList.setting", setting, SplitSetting)
        if not sources:
            raise ValueError("DatasetList needs at least one source")
        self.sources = [resolve_source(s) for s in sources]
        self.setting = setting

    @property
    def num_classes(self) -> int:
        return sum(s.data().num_classes for s in self.sources)

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        tasks, offset = [], 0
        for t, source in enumerate(self.sources):
            data = source.data()
            shifted = SourceData(
                _OffsetTargets(data.train, offset),
                _OffsetTargets(data.test, offset),
                data.num_classes,
                _OffsetTargets(data.val, offset) if data.val is not None else None,
                data.class_names,
                data.name,
            )
            classes = list(range(offset, offset + data.num_classes))
            train, val, test = _views_for_classes(shifted, classes, t, val_fraction, seeded_generator(seed, 4, t))
            tasks.append(Task(t, data.name, train, val, test, classes))
            offset += data.num_classes
        return tasks


class _OffsetTargets(torch.utils.data.Dataset):
    batched_pairs = True

    def __init__(self, base, offset: int) -> None:
        self.base, self.offset = base, offset
        self.targets = dataset_targets(base) + offset

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices):
        x, y = fetch_pairs(self.base, torch.as_tensor(indices, dtype=torch.long))
        return x, y + self.offset

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]
