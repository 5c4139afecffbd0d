"""The fixed general set that is replayed, and held-out general text for perplexity."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch.utils.data import Dataset

from clight.assets.tokenizers import encode
from clight.data.text.general_sources import GeneralSource


class GeneralSet(Dataset):
    """General samples tokenised once, truncated to a fixed length: the same ids every time."""

    def __init__(self, ids: list[list[int]]) -> None:
        if not ids:
            raise ValueError("the general set is empty")
        self.ids = ids

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, max_length: int) -> "GeneralSet":
        return cls([encode(tokenizer, t)[:max_length] for t in texts])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": [], "answer": self.ids[i], "choices": None, "target": -1, "task_id": -1, "general_index": int(i)}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for row in self.ids:
            h.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes() + b"|")
        return h.hexdigest()[:16]


def general_splits(
    source: GeneralSource, n_replay: int, n_heldout: int, heldout_fraction: float = 0.1
) -> tuple[list[str], list[str]]:
    """Replay passages from the first documents, held-out passages from the last ``heldout_fraction``
    of documents, so no held-out text shares a document with replayed text. Within each part the
    passages are taken round-robin across its documents (the first passage of every document, then
    the second, ...), so a small set still covers many documents rather than the first one or two."""
    docs = source.documents()
    n_held_docs = max(1, int(round(heldout_fraction * len(docs)))) if n_heldout else 0
    if n_held_docs >= len(docs):
        raise ValueError(f"the general source has only {len(docs)} documents: too few to hold some out")
    replay = _round_robin(docs[: len(docs) - n_held_docs])[:n_replay]
    heldout = _round_robin(docs[len(docs) - n_held_docs :])[:n_heldout]
    return replay, heldout


def control_passages(source: GeneralSource, n: int) -> list[str]:
    """``n`` passages of ``source`` (all held out: a control text is never replayed), round-robin
    across its documents."""
    return _round_robin(source.documents())[:n]


def _round_robin(docs: Sequence[Sequence[str]]) -> list[str]:
    longest = max((len(d) for d in docs), default=0)
    return [d[i] for i in range(longest) for d in docs if i < len(d)]
