"""``InstructionTasks``: instruction tasks in order, each split into train / val / test.

Which items each split gets:

- test: the task's test records, the first ``max_test_per_task`` in file order (O-LoRA's rule);
  a task given as one file has its ``test_fraction`` cut off by a seeded shuffle first;
- train pool: the training records; ``max_train_per_class`` keeps the first N of every label in
  file order (the benchmark's "1,000 samples per class"); then a seeded shuffle, the validation
  items (``val_fraction``, at least one, at most ``max_test_per_task``) and the first
  ``max_train_per_task`` training items.

The shuffles are seeded by the run seed and the task's *name*, so a task gets the same items in
every task order. Samples whose answer does not fit ``max_length`` are left out and counted
(``encode``); a warning gives the count, and a task that loses more than ``max_cut_fraction``
of a split is refused.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence

import torch

from clight.data.scenarios import Scenario
from clight.data.task import Task
from clight.data.text.instruct.encode import CutCount, Encoder
from clight.data.text.instruct.task import InstructionTask, LoadedTask, load_task
from clight.seeding import seeded_generator


def _per_class(samples: list, cap: Optional[int]) -> list:
    if cap is None:
        return samples
    kept, counts = [], {}
    for sample in samples:
        label = sample[1]
        if label < 0 or counts.get(label, 0) < cap:
            counts[label] = counts.get(label, 0) + 1
            kept.append(sample)
    return kept


class InstructionTasks(Scenario):
    setting = "task_incremental"

    def __init__(
        self,
        tasks: Sequence[InstructionTask],
        tokenizer,
        max_length: int,
        root: Optional[str] = None,
        max_train_per_task: Optional[int] = None,
        max_train_per_class: Optional[int] = None,
        max_test_per_task: Optional[int] = None,
        test_fraction: float = 0.2,
        loss_on: str = "answer",
        max_cut_fraction: float = 0.05,
        add_bos: bool = True,
    ) -> None:
        if not tasks:
            raise ValueError("an instruction sequence needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must differ, got {names}")
        self.specs, self.tokenizer, self.max_length = list(tasks), tokenizer, max_length
        self.root = Path(root) if root is not None else None
        self.max_train, self.max_train_per_class, self.max_test = max_train_per_task, max_train_per_class, max_test_per_task
        self.test_fraction, self.loss_on, self.max_cut_fraction, self.add_bos = test_fraction, loss_on, max_cut_fraction, add_bos
        self._label_counts: list[int] = []
        self.report: list[dict] = []

    @property
    def num_classes(self) -> int:
        return sum(self._label_counts)

    def _splits(self, loaded: LoadedTask, seed: int, val_fraction: float) -> tuple[list, list, list]:
        g = seeded_generator(seed, 37, zlib.crc32(loaded.name.encode()))
        pool = loaded.train
        if loaded.test is None:
            perm = torch.randperm(len(pool), generator=g).tolist()
            n_test = max(1, int(round(self.test_fraction * len(pool))))
            test, pool = [pool[i] for i in sorted(perm[:n_test])], [pool[i] for i in sorted(perm[n_test:])]
        else:
            test = loaded.test
        test = test[: self.max_test] if self.max_test is not None else test
        pool = _per_class(pool, self.max_train_per_class)
        if len(pool) < 2:
            raise ValueError(f"task {loaded.name!r} has {len(pool)} training record(s): too few to hold out a validation item")
        pool = [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]
        n_val = min(max(1, int(round(val_fraction * len(pool)))), self.max_test or len(pool), len(pool) - 1)
        train = pool[n_val:]
        return (train[: self.max_train] if self.max_train is not None else train), pool[:n_val], test

    def _check_cuts(self, name: str, counts: dict[str, CutCount]) -> None:
        for split, count in counts.items():
            if not count.cut:
                continue
            message = (
                f"task {name!r}: {count.cut} of {count.cut + count.kept} {split} samples ({100 * count.fraction_cut:.1f}%) "
                f"do not fit max_length={self.max_length} with their answer and are left out"
            )
            if count.fraction_cut > self.max_cut_fraction:
                raise ValueError(
                    f"{message}: more than max_cut_fraction={self.max_cut_fraction}. Raise max_length, shorten the "
                    "prompts, or raise max_cut_fraction"
                )
            warnings.warn(message, stacklevel=2)

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        tasks, first = [], 0
        self._label_counts, self.report = [], []
        for t, spec in enumerate(self.specs):
            loaded = load_task(spec, self.tokenizer, self.root, self.add_bos)
            encoder = Encoder(self.tokenizer, self.max_length, loaded.bos, loaded.label_answers)
            train, val, test = self._splits(loaded, seed, val_fraction)
            counts = {}
            (train_set, counts["train"]) = encoder.examples(train, t, self.loss_on == "all")
            (val_set, counts["val"]) = encoder.examples(val, t)
            (test_set, counts["test"]) = encoder.examples(test, t)
            self._check_cuts(spec.name, counts)
            if not len(train_set) or not len(test_set):
                raise ValueError(
                    f"task {spec.name!r} has no training or no test sample left that fits max_length={self.max_length}"
                )
            k = len(loaded.labels) if loaded.labels else 1
            info = {"answers": loaded.labels, "format": spec.format, "source": loaded.source}
            tasks.append(Task(t, spec.name, train_set, val_set, test_set, list(range(first, first + k)), info=info))
            self.report.append({"name": spec.name, **info, **{f"{s}_samples": vars(c) for s, c in counts.items()}})
            self._label_counts.append(k)
            first += k
        return tasks
