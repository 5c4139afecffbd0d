"""Rendered samples tokenised to fit ``max_length``, and the dataset of one task split.

A sample is ``prompt + answer`` (the answer ends with EOS unless its template wrote its own end of
turn). When it is longer than ``max_length``, the prompt's ``body`` (the sentence, the input, the
last user message) is shortened from its end. If even then the answer does not fit, the sample is
*cut*: it is left out (never trained on or scored with a partial answer), counted, and reported
(``CutCount``); the caller warns and refuses a task that loses too many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from clight.assets.tokenizers import encode
from clight.data.text.instruct.chat import Rendered


class InstructionExamples(Dataset):
    """Tokenised samples of one task split. ``loss_on_prompt``: items carry the whole sequence as
    their answer, so the loss covers the prompt too (the ``all`` tokens option, training only)."""

    def __init__(
        self,
        prompts: list[list[int]],
        answers: list[list[int]],
        targets: list[int],
        choices: Optional[list[list[int]]],
        task_id: int,
        loss_on_prompt: bool = False,
    ) -> None:
        self.prompts, self.answers, self.choices, self.task_id = prompts, answers, choices, task_id
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.loss_on_prompt = loss_on_prompt

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        prompt, answer = self.prompts[i], self.answers[i]
        if self.loss_on_prompt:
            prompt, answer = [], prompt + answer
        return {
            "prompt": prompt,
            "answer": answer,
            "choices": self.choices,
            "target": int(self.targets[i]),
            "task_id": self.task_id,
            "general_index": -1,
        }


@dataclass
class CutCount:
    """How many samples of a split were kept, shortened (prompt body) and cut (answer did not fit)."""

    kept: int = 0
    shortened: int = 0
    cut: int = 0

    @property
    def fraction_cut(self) -> float:
        total = self.kept + self.cut
        return self.cut / total if total else 0.0


class Encoder:
    """Tokenises rendered samples of one task for ``max_length`` tokens."""

    def __init__(self, tokenizer, max_length: int, bos: bool, label_answers: Optional[Sequence[Rendered]]) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.bos = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
        self.choices = [self.answer_ids(a) for a in label_answers] if label_answers else None

    def answer_ids(self, rendered: Rendered) -> list[int]:
        return encode(self.tokenizer, rendered.answer) + (self.eos if rendered.eos else [])

    def sample(self, rendered: Rendered) -> tuple[Optional[list[int]], Optional[list[int]], bool]:
        """``(prompt ids, answer ids, shortened)``, or ``(None, None, False)`` when the answer cannot fit."""
        head = self.bos + encode(self.tokenizer, rendered.head)
        tail = encode(self.tokenizer, rendered.tail)
        body = encode(self.tokenizer, rendered.body) if rendered.body else []
        answer = self.answer_ids(rendered)
        longest = max([len(answer), *(len(c) for c in self.choices or [])])
        room = self.max_length - len(head) - len(tail) - longest
        if room < 0 or (body and room == 0):
            return None, None, False
        return head + body[:room] + tail, answer, len(body) > room

    def examples(
        self, samples: Sequence[tuple[Rendered, int]], task_id: int, loss_on_prompt: bool = False
    ) -> tuple[InstructionExamples, CutCount]:
        prompts, answers, targets, count = [], [], [], CutCount()
        for rendered, target in samples:
            prompt, answer, shortened = self.sample(rendered)
            if prompt is None:
                count.cut += 1
                continue
            count.kept += 1
            count.shortened += int(shortened)
            prompts.append(prompt)
            answers.append(answer)
            targets.append(target)
        return InstructionExamples(prompts, answers, targets, self.choices, task_id, loss_on_prompt), count
