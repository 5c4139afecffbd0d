"""Text tasks: labelled text turned into instruction-style prompts and answers, tokenised once."""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from clight.assets.tokenizers import encode
from clight.data.scenarios import Scenario
from clight.data.task import Task
from clight.data.text.sources import LabelledTexts, RottenTomatoes, TextSource, Tweets
from clight.seeding import seeded_generator


class TextTaskSpec:
    """How one task turns labelled text into prompts and answers.

    ``template`` holds ``{instruction}`` and ``{text}``; ``answers`` are the words the model
    must produce per label (default: the label names), each preceded by a space. ``test``: a
    separate test file (a ``TextSource`` whose labels are among ``source``'s); without it,
    ``test_fraction`` of ``source`` is held out by the seed.
    """

    def __init__(
        self,
        source: TextSource,
        instruction: str = "Classify the text.",
        answers: Optional[list[str]] = None,
        name: Optional[str] = None,
        template: str = "{instruction}\nText: {text}\nAnswer:",
        max_text_chars: int = 600,
        test: Optional[TextSource] = None,
    ) -> None:
        if "{text}" not in template:
            raise ValueError("template must contain {text}")
        self.source, self.test, self.instruction, self.answers = source, test, instruction, answers
        self.name = name or source.name
        self.template, self.max_text_chars = template, max_text_chars


BUILTIN_TASKS = {
    "rt_sentiment": lambda: TextTaskSpec(
        RottenTomatoes("sentiment"), "Is this movie review positive or negative?", ["negative", "positive"], "rt_sentiment"
    ),
    "tweet_sentiment": lambda: TextTaskSpec(
        Tweets(), "What is the sentiment of this tweet: negative, neutral or positive?", None, "tweet_sentiment"
    ),
    "rt_subjectivity": lambda: TextTaskSpec(
        RottenTomatoes("subjectivity"), "Is this text a plot summary or a review?", ["plot", "review"], "rt_subjectivity"
    ),
}


def resolve_task(task: Union[str, TextTaskSpec]) -> TextTaskSpec:
    if isinstance(task, TextTaskSpec):
        return task
    if task not in BUILTIN_TASKS:
        raise ValueError(f"unknown text task {task!r}: use one of {sorted(BUILTIN_TASKS)} or a TextTaskSpec")
    return BUILTIN_TASKS[task]()


class TextExamples(Dataset):
    """Tokenised prompt/answer samples of one task; items are dicts of id lists."""

    def __init__(self, prompts: list[list[int]], choices: list[list[int]], targets: list[int], task_id: int) -> None:
        self.prompts, self.choices, self.task_id = prompts, choices, task_id
        self.targets = torch.as_tensor(targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        target = int(self.targets[i])
        return {
            "prompt": self.prompts[i],
            "answer": self.choices[target],
            "choices": self.choices,
            "target": target,
            "task_id": self.task_id,
            "general_index": -1,
        }


def encode_task(
    spec: TextTaskSpec, data: LabelledTexts, rows: torch.Tensor, tokenizer, max_length: int, task_id: int
) -> TextExamples:
    """Prompts are truncated inside the text so that prompt + longest answer fit ``max_length``."""
    answers = spec.answers or data.label_names
    if len(answers) != len(data.label_names):
        raise ValueError(f"task {spec.name}: {len(answers)} answers for {len(data.label_names)} labels {data.label_names}")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    choices = [encode(tokenizer, " " + a) + eos for a in answers]
    head_tpl, tail_tpl = spec.template.split("{text}", 1)
    tail = encode(tokenizer, tail_tpl.format(instruction=spec.instruction))
    budget = max_length - len(tail) - max(len(c) for c in choices)
    if budget < 8:
        raise ValueError(f"max_length {max_length} leaves no room for the text of task {spec.name}: raise it")
    prompts = []
    for r in rows.tolist():
        text = " ".join(data.texts[r].split())[: spec.max_text_chars]
        head = encode(tokenizer, head_tpl.format(instruction=spec.instruction) + text)
        prompts.append(head[:budget] + tail)
    return TextExamples(prompts, choices, [data.labels[r] for r in rows.tolist()], task_id)


class TextTasks(Scenario):
    """Text tasks in the given order; each source is split into train / val / test by the seed."""

    setting = "task_incremental"

    def __init__(
        self,
        tasks: Sequence[Union[str, TextTaskSpec]],
        tokenizer,
        max_length: int = 128,
        max_train_per_task: Optional[int] = None,
        max_test_per_task: Optional[int] = 500,
        test_fraction: float = 0.2,
    ) -> None:
        self.specs = [resolve_task(t) for t in tasks]
        if not self.specs:
            raise ValueError("a text sequence needs at least one task")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.max_train, self.max_test, self.test_fraction = max_train_per_task, max_test_per_task, test_fraction
        self._label_counts: list[int] = []

    @property
    def num_classes(self) -> int:
        return sum(self._label_counts)

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        tasks, first = [], 0
        self._label_counts = []
        for t, spec in enumerate(self.specs):
            data = spec.source.load()
            g = seeded_generator(seed, 31, t)
            perm = torch.randperm(len(data.texts), generator=g)
            test_data = _test_texts(spec, data)
            n_test = 0 if test_data is not None else max(1, int(round(self.test_fraction * len(perm))))
            n_val = max(1, int(round(val_fraction * (len(perm) - n_test))))
            test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
            if test_data is not None:
                test = torch.arange(len(test_data.texts))
            if self.max_test is not None:
                test, val = test[: self.max_test], val[: self.max_test]
            if self.max_train is not None:
                train = train[: self.max_train]
            k = len(data.label_names)
            make = functools.partial(encode_task, spec, tokenizer=self.tokenizer, max_length=self.max_length, task_id=t)
            tasks.append(
                Task(
                    t,
                    spec.name,
                    make(data=data, rows=train),
                    make(data=data, rows=val),
                    make(data=test_data or data, rows=test),
                    list(range(first, first + k)),
                    info={"answers": spec.answers or data.label_names},
                )
            )
            self._label_counts.append(k)
            first += k
        return tasks


def _test_texts(spec: TextTaskSpec, train: LabelledTexts) -> Optional[LabelledTexts]:
    """The task's separate test file with its labels numbered as the training file's, or ``None``."""
    if spec.test is None:
        return None
    test = spec.test.load()
    index = {name: i for i, name in enumerate(train.label_names)}
    unknown = sorted({test.label_names[label] for label in test.labels} - set(index))
    if unknown:
        raise ValueError(
            f"task {spec.name}: the test file's labels {unknown[:5]} are not among the training file's {train.label_names[:10]}. "
            "Give both files the same labels."
        )
    return LabelledTexts(test.texts, [index[test.label_names[label]] for label in test.labels], train.label_names)
