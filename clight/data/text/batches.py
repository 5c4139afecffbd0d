"""Batches of text samples: right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 on
prompt and padding), ``is_general``, ``general_index``, ``task_id``, ``target``.

Evaluation batches add the prompts alone, left-padded (``prompt_input_ids`` / ``prompt_attention_mask``
``[B, P]``: generation and the prompt pass of cached scoring), and, when every sample has candidate
answers, the candidates alone (``candidate_ids`` / ``candidate_mask`` ``[B, K, C]``, right-padded)
and each candidate after its prompt (``choice_*`` ``[B, K, L]``, for scoring without a cache);
``choice_valid`` ``[B, K]`` marks the real candidates."""

from __future__ import annotations

import torch

IGNORE = -100


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def _left_pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


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
        if not self.choices:
            return batch
        batch["prompt_input_ids"], batch["prompt_attention_mask"] = _left_pad([it["prompt"] for it in items], self.pad_id)
        if all(it["choices"] for it in items):
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
            candidates = _pad(answers, self.pad_id)
            batch["candidate_ids"] = candidates.view(len(items), k, -1)
            batch["candidate_mask"] = _pad([[1] * len(a) for a in answers], 0).view(len(items), k, -1)
        return batch
