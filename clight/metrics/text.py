"""Scores of generated answers: exact match, ROUGE-L and label accuracy (see docs/llm_tasks.md).

- ``normalize_answer``: the normalisation of SuperNI and O-LoRA's ``compute_metrics.py`` (SQuAD's
  without removing articles): lower-case, drop every ASCII punctuation character
  (``string.punctuation``), collapse runs of whitespace to one space and strip the ends.
- ``exact_match``: 1 when the normalised prediction equals the normalised reference, else 0.
- ``rouge_l``: the ROUGE-L F-measure of torchmetrics (``rouge_score``; its tokenizer lower-cases
  and splits on non-alphanumeric characters; no stemming unless ``stemmer=True``, which needs
  nltk). Two empty texts score 0, as torchmetrics scores them.
- ``match_label``: which label of a closed set a generation names: the label whose normalised form
  equals the normalised generation; else the longest label the normalised generation starts with
  (followed by a space or the end); else none (-1).
"""

from __future__ import annotations

import re
import string
from typing import Sequence

_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")


def normalize_answer(text: str) -> str:
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(predictions: Sequence[str], references: Sequence[str], stemmer: bool = False) -> list[float]:
    """ROUGE-L F-measure of every prediction against its reference (torchmetrics' implementation)."""
    from torchmetrics.functional.text.rouge import rouge_score

    scores = []
    for prediction, reference in zip(predictions, references):
        value = rouge_score(prediction, reference, rouge_keys="rougeL", use_stemmer=stemmer)["rougeL_fmeasure"]
        scores.append(float(value))
    return scores


def match_label(prediction: str, labels: Sequence[str]) -> int:
    """The index of the label ``prediction`` names (see the module docstring), or -1."""
    said = normalize_answer(prediction)
    names = [normalize_answer(label) for label in labels]
    if said in names:
        return names.index(said)
    prefixes = [(len(n), i) for i, n in enumerate(names) if n and (said == n or said.startswith(n + " "))]
    return max(prefixes)[1] if prefixes else -1
