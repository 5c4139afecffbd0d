"""Data set views that serve dict batches ``{"input", "target", "task_id"}``.

Every in-memory source is an ``ArrayDataset``; a task sees it through a ``TaskView`` (a subset
of indices, the task id and an optional batch transform such as a pixel permutation). Both
implement ``__getitems__`` so a DataLoader fetches a batch with one tensor index instead of one
Python call per sample.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Callable, Optional, Sequence, Union, cast

import torch
from torch.utils.data import Dataset

from clight.data.samples import dataset_targets, fetch_pairs

BatchTransform = Callable[[torch.Tensor], torch.Tensor]

#: a task view whose float inputs fit in this many bytes is gathered once per fit (``TaskView.gathered``)
GATHER_BYTES = 64 * 2**20


class ArrayDataset(Dataset):
    """``(inputs[i], targets[i])`` over tensors; uint8 inputs are scaled to [0, 1]."""

    batched_pairs = True  # ``__getitems__`` gives (inputs, targets) batches (``clight.data.samples``)

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        self.inputs = inputs
        self.targets = torch.as_tensor(targets).long()

    def __len__(self) -> int:
        return len(self.targets)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at the positions in the long tensor ``index``."""
        # index_select, not x[index]: a tenth of the time on a uint8 image array
        x = self.inputs.index_select(0, index)
        x = x.div(255.0) if x.dtype == torch.uint8 else x.float()
        return x, self.targets.index_select(0, index)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows(torch.as_tensor(indices, dtype=torch.long))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([int(i)])
        return x[0], y[0]


class TaskView(Dataset):
    """Task ``task_id``'s part of a base data set: ``indices`` into it and a batch transform."""

    def __init__(
        self,
        base: Dataset,
        indices: torch.Tensor,
        task_id: int,
        transform: Optional[BatchTransform] = None,
    ) -> None:
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.task_id = task_id
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        return dataset_targets(self.base)[self.indices]

    def __getitems__(self, indices: Union[Sequence[int], torch.Tensor]) -> dict:
        x, y = fetch_pairs(self.base, self.indices.index_select(0, torch.as_tensor(indices, dtype=torch.long)))
        if self.transform is not None:
            x = self.transform(x)
        return {"input": x, "target": y, "task_id": torch.full((len(y),), self.task_id, dtype=torch.long)}

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}

    def gathered(self, max_bytes: int = GATHER_BYTES) -> Dataset:
        """The view with every sample gathered, scaled and transformed once, when that gives the
        very same batches and is small: an ``ArrayDataset`` base, a ``deterministic`` transform
        (such as the pixel permutation), float inputs of at most ``max_bytes``. Each batch is then
        one gather of finished rows (as a loop over pre-permuted tensors), not a gather, a
        scaling and a transform of its own. Otherwise the view itself: without a transform a
        batch is already one gather and a scaling, and a copy would cost more than it saves."""
        if type(self.base) is not ArrayDataset or not getattr(self.transform, "deterministic", False):
            return self
        if len(self) * self.base.inputs[0].numel() * 4 > max_bytes:
            return self
        batch = self.__getitems__(torch.arange(len(self)))
        return TaskView(ArrayDataset(batch["input"], batch["target"]), torch.arange(len(self)), self.task_id)


class ConcatViews(Dataset):
    """Several task views behind one index space; a batch may mix samples of many views.

    Nested ``ConcatViews`` are flattened. When every view is a ``TaskView`` of the same base
    data set without a transform (the tasks of one split source, a replay memory over them), a
    batch is one gather from the base, whatever the mix of views in it.
    """

    def __init__(self, views: Sequence[Dataset]) -> None:
        self.views: list[Dataset] = [w for v in views for w in (v.views if isinstance(v, ConcatViews) else [v])]
        sizes = torch.tensor([len(cast(Sized, v)) for v in self.views], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self._merged: Optional[TaskView] = None
        plain = [v for v in self.views if type(v) is TaskView]
        if self.views and len(plain) == len(self.views) and all(v.base is plain[0].base and v.transform is None for v in plain):
            self._merged = TaskView(plain[0].base, torch.cat([v.indices for v in plain]), -1)
            self._task_ids = torch.cat([torch.full((len(v),), v.task_id, dtype=torch.long) for v in plain])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, indices: Sequence[int]) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        if self._merged is not None:
            batch = self._merged.__getitems__(index)
            batch["task_id"] = self._task_ids.index_select(0, index)
            return batch
        which = torch.searchsorted(self.offsets, index, right=True) - 1
        # one fetch per view; batches usually come grouped by view already (current task, then memory)
        grouped = bool((which[1:] >= which[:-1]).all())
        order = None if grouped else torch.argsort(which, stable=True)
        if order is not None:
            index, which = index[order], which[order]
        parts, start = [], 0
        for v, count in zip(*(t.tolist() for t in torch.unique_consecutive(which, return_counts=True))):
            local = index[start : start + count] - self.offsets[v]
            parts.append(_getitems(self.views[v], local.tolist()))
            start += count
        batch = {key: torch.cat([p[key] for p in parts]) if len(parts) > 1 else parts[0][key] for key in parts[0]}
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order))
            batch = {key: value[inverse] for key, value in batch.items()}
        return batch

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}


def _getitems(view: Dataset, indices: list[int]) -> dict:
    if hasattr(view, "__getitems__"):
        return view.__getitems__(indices)
    return torch.utils.data.default_collate([view[i] for i in indices])


def collate_dict_batch(items) -> dict:
    """Collate for DataLoaders over views: a fetched batch passes through unchanged."""
    if isinstance(items, dict):
        return items
    return torch.utils.data.default_collate(items)
