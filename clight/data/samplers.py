"""Batch samplers that are reproducible per epoch and shard every global batch across ranks.

A global batch is drawn from a generator seeded by (seed, task, epoch); rank ``r`` of ``W``
takes the r-th slice of it. With the same global batch size, W processes therefore see exactly
the samples one process sees, and DDP's gradient average equals the single-process gradient.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from clight.seeding import seeded_generator


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches over ``[0, n_current)`` plus optional replay indices in ``[n_current, n_current + n_memory)``.

    mode ``mix``: each batch has ``batch_size`` current samples (an epoch is one pass over the
    current task) and ``replay_batch_size`` memory samples drawn without replacement inside the
    batch. mode ``uniform``: batches of ``batch_size`` from a permutation of current and memory
    together. Full global batches only, so every rank has the same number of equal batches.
    """

    def __init__(
        self,
        n_current: int,
        batch_size: int,
        seed: int = 0,
        task: int = 0,
        n_memory: int = 0,
        replay_batch_size: int = 0,
        mode: str = "mix",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size or replay_batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} (replay {replay_batch_size}) must be divisible by the number of "
                f"processes {world_size}: it is the global batch, split evenly across ranks"
            )
        self.n_current, self.n_memory = n_current, n_memory
        self.batch_size, self.replay_batch_size = batch_size, replay_batch_size if n_memory else 0
        self.seed, self.task, self.mode = seed, task, mode
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pool(self) -> int:
        return self.n_current + (self.n_memory if self.mode == "uniform" else 0)

    def _global_batch_size(self, pool: int) -> int:
        size = min(self.batch_size, pool)
        return size - size % self.world_size

    def __len__(self) -> int:
        pool = self._pool()
        size = self._global_batch_size(pool)
        if size == 0:
            return 0
        return max(1, pool // size)

    def _shard(self, batch: list[int]) -> list[int]:
        # global batches are divisible by the world size: equal contiguous slices
        share = len(batch) // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def __iter__(self):
        pool = self._pool()
        size = self._global_batch_size(pool)
        if size == 0:
            return
        g = seeded_generator(self.seed, 20, self.task, self.epoch)
        order = torch.randperm(pool, generator=g).tolist()  # one conversion per epoch, not per batch
        replay = self.mode == "mix" and self.replay_batch_size
        if replay:
            k = min(self.replay_batch_size, self.n_memory)
            k -= k % self.world_size
        for b in range(len(self)):
            batch = self._shard(order[b * size : (b + 1) * size])
            if replay:
                batch += self._shard((self.n_current + torch.randperm(self.n_memory, generator=g)[:k]).tolist())
            yield batch


def evaluation_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Rank ``rank``'s share (every W-th sample) of an ordered pass, in batches: no sample twice."""
    mine = list(range(rank, n, world_size))
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def memory_batch(n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of a global batch of up to ``batch_size`` distinct positions in ``[0, n)``.

    The global batch is drawn from ``generator`` (which every rank holds in the same state) and cut
    to a multiple of the world size; rank ``r`` takes the r-th contiguous slice, as
    ``ShardedBatchSampler`` does, so W ranks together see the batch one process sees.
    """
    size = min(batch_size, n)
    size -= size % world_size
    chosen = torch.randperm(n, generator=generator)[:size]
    share = size // world_size
    return chosen[rank * share : (rank + 1) * share]
