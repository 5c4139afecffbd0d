"""Replay memories: which past samples are kept, as ``(task, index)`` references.

A memory stores integer references into the tasks' training views, never copies of the data,
so it is tiny, identical on every rank (all choices come from generators seeded by the run seed
and the task) and saved in checkpoints as plain tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional

import torch

from clight.choices import check_choice
from clight.seeding import seeded_generator


class ReplayMemory:
    """Base: ``entries`` is a ``[M, 2]`` long tensor of ``(task_id, index in task.train)``."""

    kind = "memory"

    def __init__(self, capacity: Optional[int] = 200, seed: int = 0) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"replay capacity must be a positive integer or null (unbounded), got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.entries = torch.zeros(0, 2, dtype=torch.long)
        self.labels = torch.zeros(0, dtype=torch.long)
        self.seen = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add_task(self, task_id: int, targets: torch.Tensor) -> None:
        """Offer every training sample of task ``task_id`` (in index order) to the memory."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"entries": self.entries.clone(), "labels": self.labels.clone(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.entries = state["entries"].clone()
        self.labels = state["labels"].clone()
        self.seen = int(state["seen"])


class UnboundedMemory(ReplayMemory):
    """Keeps everything (the compute-budgeted setting of Prabhu et al.: storage is free)."""

    kind = "all"

    def __init__(self, capacity: Optional[int] = None, seed: int = 0) -> None:
        super().__init__(None, seed)

    def add_task(self, task_id: int, targets: torch.Tensor) -> None:
        n = len(targets)
        new = torch.stack([torch.full((n,), task_id, dtype=torch.long), torch.arange(n)], 1)
        self.entries = torch.cat([self.entries, new])
        self.labels = torch.cat([self.labels, targets.long()])
        self.seen += n


class ReservoirMemory(ReplayMemory):
    """Reservoir sampling: every sample of the stream so far is kept with equal probability."""

    kind = "reservoir"

    def add_task(self, task_id: int, targets: torch.Tensor) -> None:
        g = seeded_generator(self.seed, 10, task_id)
        entries, labels = self.entries.tolist(), self.labels.tolist()
        draws = torch.rand(len(targets), generator=g, dtype=torch.float64)
        for i, y in enumerate(targets.tolist()):
            if self.capacity is None or len(entries) < self.capacity:  # None: unbounded
                entries.append([task_id, i])
                labels.append(y)
            else:
                j = int(draws[i] * (self.seen + 1))
                if j < self.capacity:
                    entries[j], labels[j] = [task_id, i], y
            self.seen += 1
        self.entries = torch.tensor(entries, dtype=torch.long).reshape(-1, 2)
        self.labels = torch.tensor(labels, dtype=torch.long)


class ClassBalancedMemory(ReplayMemory):
    """Equal share of the capacity for every class seen so far (random members per class)."""

    kind = "class_balanced"

    def add_task(self, task_id: int, targets: torch.Tensor) -> None:
        n = len(targets)
        new = torch.stack([torch.full((n,), task_id, dtype=torch.long), torch.arange(n)], 1)
        entries = torch.cat([self.entries, new])
        labels = torch.cat([self.labels, targets.long()])
        self.seen += n
        if self.capacity is None:  # unbounded: every sample stays
            self.entries, self.labels = entries, labels
            return
        classes = labels.unique()
        quota, extra = divmod(self.capacity, len(classes))
        g = seeded_generator(self.seed, 11, task_id)
        kept = []
        for rank, c in enumerate(classes.tolist()):
            members = (labels == c).nonzero().flatten()
            share = quota + (1 if rank < extra else 0)
            kept.append(members[torch.randperm(len(members), generator=g)[:share]])
        keep = torch.cat(kept).sort().values
        self.entries, self.labels = entries[keep], labels[keep]


class GreedyClassBalancedMemory(ReplayMemory):
    """GDumb's greedy class-balancing sampler (Prabhu et al., ECCV 2020, Algorithm 1).

    The samples arrive in index order. One is stored while its class holds fewer than
    ``capacity / (classes seen so far)`` members; when the memory is full, a random member of the
    largest class (the lowest class id among equals) makes room for it. Otherwise it is passed over.
    """

    kind = "greedy"

    def add_task(self, task_id: int, targets: torch.Tensor) -> None:
        draws = torch.rand(len(targets), generator=seeded_generator(self.seed, 12, task_id), dtype=torch.float64).tolist()
        by_class: dict[int, list[list[int]]] = {}
        for entry, y in zip(self.entries.tolist(), self.labels.tolist()):
            by_class.setdefault(y, []).append(entry)
        stored = len(self.entries)
        for i, y in enumerate(targets.tolist()):
            members = by_class.setdefault(y, [])
            if len(members) >= self.capacity / len(by_class):
                continue
            if stored >= self.capacity:
                largest = max(by_class, key=lambda c: (len(by_class[c]), -c))
                crowded = by_class[largest]
                j = int(draws[i] * len(crowded))
                crowded[j] = crowded[-1]  # remove member j: the last one takes its place
                crowded.pop()
                stored -= 1
            members.append([task_id, i])
            stored += 1
        self.seen += len(targets)
        rows = sorted((entry, y) for y, members in by_class.items() for entry in members)
        self.entries = torch.tensor([e for e, _ in rows], dtype=torch.long).reshape(-1, 2)
        self.labels = torch.tensor([y for _, y in rows], dtype=torch.long)


MEMORIES = {m.kind: m for m in (ReservoirMemory, ClassBalancedMemory, UnboundedMemory, GreedyClassBalancedMemory)}
MemoryKind = Literal["reservoir", "class_balanced", "all", "greedy"]
ReplayMode = Literal["mix", "uniform"]


@dataclass
class Replay:
    """Experience replay settings of a ``TaskSequence``.

    memory: ``reservoir``, ``class_balanced`` or ``greedy`` (GDumb's sampler; ``capacity``
    samples) or ``all`` (every past sample: the compute-budgeted baseline). mode: ``mix`` adds ``batch_size`` replayed samples to
    every batch of the current task; ``uniform`` draws every batch uniformly from the current
    task and the memory together.
    """

    memory: MemoryKind = "reservoir"
    capacity: Optional[int] = 200
    batch_size: int = 32
    mode: ReplayMode = "mix"

    def __post_init__(self) -> None:
        check_choice("replay.memory", self.memory, MemoryKind)
        check_choice("replay.mode", self.mode, ReplayMode)
        if self.batch_size < 1:
            raise ValueError(f"replay.batch_size must be at least 1, got {self.batch_size}")

    def make_memory(self, seed: int) -> ReplayMemory:
        return MEMORIES[self.memory](self.capacity, seed)

    def describe(self) -> dict:
        return asdict(self)
