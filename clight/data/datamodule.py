"""TaskSequence: the LightningDataModule that serves a continual sequence of tasks."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from clight.choices import check_choice
from clight.contract import ConfigError
from clight.data.replay import Replay, ReplayMemory
from clight.data.samplers import ShardedBatchSampler, evaluation_batches
from clight.data.scenarios import Scenario, SplitClasses
from clight.data.task import SequenceInfo, Task
from clight.data.views import ConcatViews, TaskView, collate_dict_batch, dataset_targets
from clight.distributed import global_rank, shards_parameters, world_size

#: how a memory joins the training stream: ``only`` trains on the memory alone (GDumb)
StreamMode = Literal["mix", "uniform", "only"]


class TaskSequence(L.LightningDataModule):
    """Tasks ``0..T-1`` from a scenario, the task being trained, and the replay stream.

    ``set_task(t)`` selects the task whose data ``train_dataloader`` / ``val_dataloader``
    serve; ``evaluation_loader(j)`` serves task ``j``'s test split whether or not it has been
    trained. ``batch_size`` is the global batch: under DDP each of W ranks gets
    ``batch_size / W`` samples of every batch. Tasks are built from ``seed`` alone, so every
    rank and every resumed run sees the same tasks in the same order.

    The replayed memory is the one ``replay`` configures (updated here after every task), or
    one a method keeps and chooses itself (iCaRL's exemplars, GDumb's greedy memory): the method
    claims the stream before the run (``claim_training_memory``) and hands its memory over with
    ``replay_from``; it then updates and saves that memory itself.
    """

    #: whether a method may serve its own memory in the training stream (``replay_from``)
    serves_method_memory: ClassVar[bool] = True

    def __init__(
        self,
        scenario: Optional[Scenario] = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        replay: Optional[Replay] = None,
        collate_fn: Optional[Callable] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        self.scenario = scenario if scenario is not None else SplitClasses()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.replay = replay
        self.collate_fn = collate_fn or collate_dict_batch
        self.memory: Optional[ReplayMemory] = replay.make_memory(seed) if replay else None
        self.memory_owner: Optional[str] = None  # the method that keeps ``memory``, if one does
        self._claimed_by: Optional[object] = None
        self._owner_sampling: tuple[int, str] = (0, "mix")
        self._tasks: Optional[list[Task]] = None
        self.current_task = 0
        self.training_tasks: tuple[int, ...] = (0,)

    # -- the sequence -------------------------------------------------------------------------
    @property
    def tasks(self) -> list[Task]:
        if self._tasks is None:
            self._tasks = self.scenario.build(self.seed, self.val_fraction)
        return self._tasks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def info(self) -> SequenceInfo:
        """What a model must know of the sequence; a task with nothing to train on or to score is refused."""
        for task in self.tasks:
            for split, what, effect in (("train", "training", "train on nothing"), ("test", "test", "be scored NaN")):
                if len(getattr(task, split)) == 0:
                    raise ConfigError(
                        f"task {task.index + 1} ({task.name}) has no {what} samples: it would {effect}. "
                        "Give it more data, or raise the per-task limits of the data section."
                    )
        sample = self.tasks[0].train[0]
        shape = tuple(sample["input"].shape) if isinstance(sample, dict) and "input" in sample else None
        return SequenceInfo(
            setting=self.scenario.setting,
            num_tasks=self.num_tasks,
            num_classes=self.scenario.num_classes,
            task_classes=[t.classes for t in self.tasks],
            input_shape=shape,
        )

    def set_training_tasks(self, tasks: Sequence[int]) -> None:
        """Train on ``tasks``: one task (sequential training) or several at once (joint training)."""
        tasks = tuple(int(t) for t in tasks)
        if not tasks or any(not 0 <= t < self.num_tasks for t in tasks):
            raise IndexError(f"tasks {list(tasks)} are outside the sequence of {self.num_tasks} tasks")
        self.training_tasks = tasks
        self.current_task = tasks[-1]

    def set_task(self, task: int) -> None:
        self.set_training_tasks([task])

    @property
    def joint(self) -> bool:
        """Whether the training stream is several tasks at once."""
        return len(self.training_tasks) > 1

    def on_task_end(self, task: int) -> None:
        """Offer the finished task's training samples to the replay memory (not to a method's)."""
        if self.memory is not None and self.memory_owner is None:
            self.memory.add_task(task, dataset_targets(self.tasks[task].train))

    # -- a method's own memory ----------------------------------------------------------------
    def claim_training_memory(self, method: object, name: str) -> None:
        """Reserve the replay stream for ``method`` (from its ``check_compatible``, before the run)."""
        if not self.serves_method_memory:
            raise ConfigError(f"{name} serves its own memory in the training stream, which {type(self).__name__} does not offer")
        if self.replay is not None:
            raise ConfigError(
                f"{name} keeps its own memory and replays it in the training stream; remove `replay` from the data section"
            )
        if self._claimed_by is not None and self._claimed_by is not method:
            raise ConfigError(
                f"{name} and {type(self._claimed_by).__name__} both want to replace the replay stream; keep one of them"
            )
        self._claimed_by = method

    def replay_from(self, name: str, memory: ReplayMemory, mode: StreamMode, batch_size: int = 0) -> None:
        """Replay ``memory`` (kept by the method ``name``) in the training stream: ``mix`` adds
        ``batch_size`` of its samples to every batch, ``uniform`` draws batches from the current
        task and the memory together, ``only`` trains on the memory alone."""
        check_choice("replay mode", mode, StreamMode)
        self.memory, self.memory_owner, self._owner_sampling = memory, name, (batch_size, mode)

    def memory_dataset(self, entries: torch.Tensor) -> Dataset:
        """The training samples that ``(task, index)`` rows refer to, in the order of the rows."""
        grouped = self._grouped_memory(entries)
        tasks = entries[:, 0]
        if bool((tasks[1:] >= tasks[:-1]).all()):
            return grouped
        return _Reordered(grouped, torch.argsort(torch.argsort(tasks, stable=True)))

    def _grouped_memory(self, entries: torch.Tensor) -> ConcatViews:
        """The samples of ``entries`` grouped by task (tasks in increasing order, rows in order within one)."""
        tasks = entries[:, 0]
        return ConcatViews(
            [_subset(self.tasks[t].train, (tasks == t).nonzero().flatten(), entries) for t in tasks.unique().tolist()]
        )

    # -- loaders ------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:  # before the first fit, or a run whose fits are all gradient-free
            return global_rank(), world_size()
        return trainer.global_rank, trainer.world_size

    def _read_repeatedly(self, view: Dataset) -> Dataset:
        """A view the fit reads once an epoch, gathered once for the fit (``TaskView.gathered``)
        when the fit has several epochs: gathering costs one reading."""
        epochs = getattr(self.trainer, "max_epochs", None) or 0  # no trainer, or max_epochs None or -1: not known
        return view.gathered() if isinstance(view, TaskView) and epochs > 1 else view

    def _loader(self, dataset, batch_sampler, collate_fn: Optional[Callable] = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=collate_fn or self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataset(self):
        """The current training stream: current task, then the replay memory's samples."""
        if self.joint:
            return ConcatViews([self.tasks[t].train for t in self.training_tasks]), 0
        current = self.tasks[self.current_task].train
        if self.memory is None or len(self.memory) == 0:
            return self._read_repeatedly(current), 0
        memory = self._grouped_memory(self.memory.entries)
        if self.replay_sampling()[1] == "only":
            return memory, 0
        return ConcatViews([current, memory]), len(memory)

    def replay_sampling(self) -> tuple[int, str]:
        """How the replayed part of ``train_dataset`` is sampled: (samples per batch, mode)."""
        if self.memory_owner is not None:
            return self._owner_sampling
        return (self.replay.batch_size, self.replay.mode) if self.replay else (0, "mix")

    def train_collate_fn(self) -> Callable:
        return self.collate_fn

    def train_dataloader(self) -> DataLoader:
        dataset, n_memory = self.train_dataset()
        rank, world = self._rank_world()
        replay_batch_size, mode = self.replay_sampling()
        sampler = ShardedBatchSampler(
            n_current=len(dataset) - n_memory,
            batch_size=self.batch_size,
            seed=self.seed,
            task=-1 if self.joint else self.current_task,
            n_memory=n_memory,
            replay_batch_size=replay_batch_size,
            mode=mode,
            rank=rank,
            world_size=world,
        )
        return self._loader(dataset, sampler, self.train_collate_fn())

    def _eval_loader(self, dataset) -> DataLoader:
        rank, world = self._rank_world()
        if self.trainer is not None and shards_parameters(self.trainer.strategy):
            rank, world = 0, 1  # sharded parameters: every rank runs every forward, so every rank scores every sample
        return self._loader(dataset, evaluation_batches(len(dataset), self.eval_batch_size, rank, world))

    def val_dataloader(self) -> DataLoader:
        if self.joint:
            return self._eval_loader(ConcatViews([self.tasks[t].val for t in self.training_tasks]))
        return self._eval_loader(self._read_repeatedly(self.tasks[self.current_task].val))

    def evaluation_loader(self, task: int, split: str = "test") -> DataLoader:
        """Task ``task``'s ``test`` (or ``val``, or ``train``) split, this rank's share of it, in order
        (gradient-free methods read a task's training split this way)."""
        return self._eval_loader(getattr(self.tasks[task], split))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A dict of tensors is moved directly (Lightning's generic walk over collections costs
        more than the copy of a small batch); anything else goes through Lightning."""
        if type(batch) is dict and all(isinstance(v, torch.Tensor) for v in batch.values()):
            device = torch.device(device)
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning does
            return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"current_task": self.current_task, "training_tasks": list(self.training_tasks)}
        if self.memory is not None and self.memory_owner is None:  # a method saves the memory it keeps
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.current_task = int(state.get("current_task", 0))
        self.training_tasks = tuple(state.get("training_tasks", [self.current_task]))
        if self.memory is not None and self.memory_owner is None and "memory" in state:
            self.memory.load_state_dict(state["memory"])

    def describe(self) -> dict:
        return {
            "scenario": type(self.scenario).__name__,
            "setting": self.scenario.setting,
            "tasks": [
                {
                    "index": t.index,
                    "name": t.name,
                    "classes": t.classes,
                    "train": len(cast(Sized, t.train)),
                    "val": len(cast(Sized, t.val)),
                    "test": len(cast(Sized, t.test)),
                }
                for t in self.tasks
            ],
            "batch_size": self.batch_size,
            "seed": self.seed,
            "replay": self._describe_replay(),
        }

    def _describe_replay(self) -> Optional[dict]:
        if self.memory_owner is not None:
            batch_size, mode = self._owner_sampling
            capacity = getattr(self.memory, "capacity", None)
            return {"memory": f"kept by {self.memory_owner}", "capacity": capacity, "batch_size": batch_size, "mode": mode}
        return self.replay.describe() if self.replay else None


def _subset(view: TaskView, rows: torch.Tensor, entries: torch.Tensor) -> TaskView:
    """The memory entries ``rows`` (all of one task) as a view of that task's training set."""
    return TaskView(view.base, view.indices[entries[rows, 1]], view.task_id, view.transform)


class _Reordered(Dataset):
    """``dataset`` with its items at new positions: item i is ``dataset[position[i]]``."""

    def __init__(self, dataset: ConcatViews, position: torch.Tensor) -> None:
        self.dataset, self.position = dataset, position

    def __len__(self) -> int:
        return len(self.position)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        return self.dataset.__getitems__(self.position[torch.as_tensor(indices, dtype=torch.long)].tolist())

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}
