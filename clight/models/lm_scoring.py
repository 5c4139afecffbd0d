"""What ``ContinualCausalLM`` counts on an evaluation batch, by likelihood or by generation.

``likelihood``: the candidate answer with the highest log-likelihood after the prompt (scored
from one pass over the prompt, ``cached_candidate_scores``) is the prediction; ``correct`` counts
predictions equal to the gold label. Tasks without candidate answers cannot be scored this way.

``generate``: greedy generation (stopped at EOS or ``max_new_tokens``), decoded without special
tokens, against the gold answer: ``correct`` and ``exact_match`` count exact matches after
normalisation, ``rouge_l`` sums the ROUGE-L F-measures, and on tasks with a closed label set
``label_accuracy`` counts generations that name the gold label (``clight.metrics.text``); its
denominator ``label_accuracy_total`` counts those tasks' samples only.
"""

from __future__ import annotations

import torch

from clight.data.text.batches import IGNORE
from clight.metrics.text import exact_match, match_label, rouge_l
from clight.models.lm_decoding import (
    cached_candidate_scores,
    candidate_texts,
    greedy_generate,
    reference_answers,
    stop_tokens,
)


def likelihood_counts(model, batch: dict) -> dict[str, torch.Tensor]:
    if "candidate_ids" not in batch:
        raise ValueError(
            "likelihood scoring ranks candidate answers, and this task has none (free-form answers): "
            "set model.evaluation to generate"
        )
    correct = cached_candidate_scores(model.net, batch, model.length_normalize).argmax(1) == batch["target"]
    return {"correct": correct.sum(), "total": torch.tensor(len(correct), device=correct.device)}


def generation_counts(model, batch: dict) -> dict[str, torch.Tensor]:
    tokenizer = model.tokenizer
    generated = greedy_generate(
        model.net,
        batch["prompt_input_ids"],
        batch["prompt_attention_mask"],
        model.max_new_tokens,
        stop_tokens(model.net, tokenizer),
        tokenizer.pad_token_id,
    )
    predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    references = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in reference_answers(batch, IGNORE)]
    matches = [exact_match(p, r) for p, r in zip(predictions, references)]
    device = batch["prompt_input_ids"].device
    counts = {
        "correct": sum(matches),
        "exact_match": sum(matches),
        "rouge_l": sum(rouge_l(predictions, references)),
        "total": len(matches),
    }
    label_rows = [(i, labels) for i in range(len(predictions)) if (labels := candidate_texts(batch, tokenizer, i))]
    if label_rows:
        target = batch["target"].tolist()
        counts["label_accuracy"] = sum(match_label(predictions[i], labels) == target[i] for i, labels in label_rows)
        counts["label_accuracy_total"] = len(label_rows)
    return {name: torch.tensor(float(value), dtype=torch.float64, device=device) for name, value in counts.items()}
