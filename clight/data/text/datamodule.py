"""TextTaskSequence: text tasks for causal language models plus the general set GeRe replays."""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

from torch.utils.data import ConcatDataset, DataLoader, Dataset

from clight.assets.tokenizers import load_tokenizer
from clight.choices import check_choice
from clight.data.datamodule import TaskSequence
from clight.data.samplers import evaluation_batches
from clight.data.text.batches import TextCollator
from clight.data.text.general import GeneralSet, control_passages, general_splits
from clight.data.text.general_sources import GENERAL_SOURCES, GeneralSource
from clight.data.text.tasks import TextTasks, TextTaskSpec

GeneralMode = Literal["append", "per_batch", "none"]


class TextTaskSequence(TaskSequence):
    """A sequence of text tasks plus the fixed general set replayed during every task.

    ``general_mode``: ``append`` (the released GeRe code: general samples appended to each
    task's training set and shuffled with it, each seen once per epoch), ``per_batch``
    (``general_per_batch`` general samples drawn into every batch) or ``none``. ``batch_size``
    is the global batch; under DDP each rank gets an equal share of every batch, drawn from
    generators seeded by (seed, task, epoch), so all ranks agree. ``control_text``: a second
    held-out text, from another domain than ``general`` and never replayed (``control_samples``
    passages of it), on which ``GeneralPerplexity`` also measures perplexity.
    """

    serves_method_memory = False  # the replayed stream is the general set

    def __init__(
        self,
        tasks: Sequence[Union[str, TextTaskSpec]] = ("rt_sentiment", "tweet_sentiment", "rt_subjectivity"),
        tokenizer: str = "smollm2",
        max_length: int = 128,
        max_train_per_task: Optional[int] = None,
        max_test_per_task: Optional[int] = 500,
        general: Union[str, GeneralSource, None] = "wiki",
        general_samples: int = 1000,
        general_max_length: int = 128,
        general_mode: GeneralMode = "append",
        general_per_batch: int = 2,
        heldout_general: int = 64,
        control_text: Union[str, GeneralSource, None] = None,
        control_samples: int = 64,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        check_choice("data.general_mode", general_mode, GeneralMode)
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        scenario = self.make_scenario(tasks, max_length, max_train_per_task, max_test_per_task)
        super().__init__(
            scenario=scenario,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            seed=seed,
            num_workers=num_workers,
            collate_fn=TextCollator(self.tokenizer.pad_token_id, choices=True),
        )
        self.train_collate = TextCollator(self.tokenizer.pad_token_id, choices=False)
        self.general_source = GENERAL_SOURCES[general]() if isinstance(general, str) else general
        self.general_samples, self.general_max_length = general_samples, general_max_length
        self.general_mode = general_mode if self.general_source is not None else "none"
        self.general_per_batch, self.heldout_general = general_per_batch, heldout_general
        self._general: Optional[tuple[GeneralSet, Optional[GeneralSet]]] = None
        if (isinstance(control_text, str) and control_text not in GENERAL_SOURCES) or control_samples < 1:
            raise ValueError(
                f"data.control_text must be one of {sorted(GENERAL_SOURCES)}, a GeneralSource or null, and "
                f"control_samples >= 1; got {control_text!r}, {control_samples}"
            )
        self.control_source = GENERAL_SOURCES[control_text]() if isinstance(control_text, str) else control_text
        self.control_samples = control_samples
        self._control: Optional[GeneralSet] = None

    def make_scenario(self, tasks, max_length: int, max_train_per_task: Optional[int], max_test_per_task: Optional[int]):
        """The scenario that builds the tasks (a subclass with other tasks overrides it)."""
        return TextTasks(tasks, self.tokenizer, max_length, max_train_per_task, max_test_per_task)

    # the general set and the held-out text, built once
    def _general_sets(self) -> tuple[Optional[GeneralSet], Optional[GeneralSet]]:
        if self.general_source is None:
            return None, None
        if self._general is None:
            replay, heldout = general_splits(self.general_source, self.general_samples, self.heldout_general)
            held = GeneralSet.from_texts(heldout, self.tokenizer, self.general_max_length) if heldout else None
            self._general = (GeneralSet.from_texts(replay, self.tokenizer, self.general_max_length), held)
        return self._general

    @property
    def general_set(self) -> Optional[GeneralSet]:
        """The fixed general samples that are replayed (also when ``general_mode`` is ``none``)."""
        return self._general_sets()[0]

    @property
    def heldout_set(self) -> Optional[GeneralSet]:
        return self._general_sets()[1]

    @property
    def control_set(self) -> Optional[GeneralSet]:
        """The control text (another domain, never replayed), or None."""
        if self.control_source is not None and self._control is None:
            passages = control_passages(self.control_source, self.control_samples)
            self._control = GeneralSet.from_texts(passages, self.tokenizer, self.general_max_length)
        return self._control

    def general_loader(self, dataset: GeneralSet, batch_size: Optional[int] = None) -> DataLoader:
        """All of ``dataset`` in order, unsharded (for thresholds, caches and perplexity)."""
        bs = batch_size or self.eval_batch_size
        return DataLoader(dataset, batch_sampler=evaluation_batches(len(dataset), bs), collate_fn=self.train_collate)

    def train_dataset(self):
        if self.joint:
            current: Dataset = ConcatDataset([self.tasks[t].train for t in self.training_tasks])
        else:
            current = self.tasks[self.current_task].train
        general = self.general_set if self.general_mode != "none" else None
        if general is None:
            return current, 0
        return ConcatDataset([current, general]), len(general)

    def replay_sampling(self) -> tuple[int, str]:
        # append: general samples join the task's epoch and are shuffled with it (released code);
        # per_batch: a fixed number of them in every batch.
        if self.general_mode == "per_batch":
            return self.general_per_batch, "mix"
        return 0, "uniform"

    def train_collate_fn(self):
        return self.train_collate

    def describe(self) -> dict:
        out = super().describe()
        general = self.general_set
        out.update(
            {
                "tokenizer": self.tokenizer_name if isinstance(self.tokenizer_name, str) else type(self.tokenizer).__name__,
                "general_source": getattr(self.general_source, "name", None),
                "general_samples": len(general) if general is not None else 0,
                "general_tokens": sum(len(r) for r in general.ids) if general is not None else 0,
                "general_max_length": self.general_max_length,
                "general_mode": self.general_mode,
                "general_per_batch": self.general_per_batch if self.general_mode == "per_batch" else None,
                "heldout_general": len(self.heldout_set) if self.heldout_set is not None else 0,
                "control_text": getattr(self.control_source, "name", None),
                "control_samples": len(self.control_set) if self.control_set is not None else 0,
            }
        )
        return out
