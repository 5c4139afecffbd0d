"""Running a causal LM on prompts: one prompt pass whose key/value cache scores every candidate
answer, and batched greedy generation (transformers' ``generate`` on left-padded prompts).

Both work on the batches ``TextCollator(choices=True)`` builds (``prompt_input_ids`` left-padded,
``candidate_ids`` right-padded). A network that routes whole samples (MoE adapters with DDAS)
decides its routes on the prompt pass and keeps them for every later call on the same prompts
(``held_routes``), so a candidate or a generated token is routed as its prompt was.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left- or right-padded rows: 0, 1, ... over each row's real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@contextmanager
def held_routes(net: torch.nn.Module) -> Iterator[None]:
    """Every submodule of ``net`` that offers ``hold_routes()`` routes the calls inside by the
    routes it decided on the first one (see ``clight.methods.moe_adapters.routing``)."""
    with ExitStack() as stack:
        for module in net.modules():
            hold = getattr(module, "hold_routes", None)
            if callable(hold):
                stack.enter_context(hold())
        yield


def _cache_keyword(net: torch.nn.Module) -> str:
    """``cache`` (transformers 5.x) or ``past_key_values`` (4.x): what the model's forward takes."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@torch.no_grad()
def cached_candidate_scores(net: torch.nn.Module, batch: dict, length_normalize: bool = False) -> torch.Tensor:
    """Log-likelihood ``[B, K]`` of every candidate answer after its prompt (-inf for padding
    candidates), from one pass over each prompt: its cache is repeated for the K candidates,
    which are then run as continuations (only their own tokens are computed)."""
    prompt, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    candidates, candidate_mask = batch["candidate_ids"], batch["candidate_mask"]
    b, k, length = candidates.shape
    keyword = _cache_keyword(net)
    with held_routes(net):
        first = net(
            input_ids=prompt, attention_mask=prompt_mask, position_ids=positions(prompt_mask), use_cache=True, logits_to_keep=1
        )
        cache = _returned_cache(first)
        cache.batch_repeat_interleave(k)
        ids, mask = candidates.view(b * k, length), candidate_mask.view(b * k, length)
        start = prompt_mask.sum(1).repeat_interleave(k).unsqueeze(1)
        rest = net(
            input_ids=ids,
            attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), mask], 1),
            position_ids=start + torch.arange(length, device=ids.device),
            use_cache=False,
            **{keyword: cache},
        )
    # candidate token j is predicted by the prompt's last position (j = 0) or by candidate position j - 1
    logits = torch.cat([first.logits[:, -1:].float().repeat_interleave(k, 0), rest.logits[:, :-1].float()], 1)
    logp = torch.gather(F.log_softmax(logits, -1), 2, ids.unsqueeze(-1)).squeeze(-1) * mask
    score = logp.sum(1)
    if length_normalize:
        score = score / mask.sum(1).clamp_min(1)
    return score.view(b, k).masked_fill(~batch["choice_valid"], float("-inf"))


def stop_tokens(net: torch.nn.Module, tokenizer) -> list[int]:
    """The tokenizer's EOS and every end token of the model's generation config (chat models
    end a turn with their own token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(getattr(net, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else ([configured] if configured is not None else [])
    return list(dict.fromkeys(int(i) for i in ids))


@torch.no_grad()
def greedy_generate(
    net: torch.nn.Module, prompt: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, stop: list[int], pad_id: int
) -> list[list[int]]:
    """Greedy continuation of every left-padded prompt with the KV cache (transformers'
    ``generate``), each cut before its first stop token or after ``max_new_tokens``."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop or None, pad_token_id=pad_id
    )
    with held_routes(net):
        out = net.generate(input_ids=prompt, attention_mask=prompt_mask, generation_config=config)
    return [cut_at_stop(row, stop) for row in out[:, prompt.shape[1] :].tolist()]


def cut_at_stop(tokens: list[int], stop: list[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[:i]
    return tokens


def reference_answers(batch: dict, ignore: int) -> list[list[int]]:
    """Each sample's gold answer tokens (its labelled tokens)."""
    return [row[row != ignore].tolist() for row in batch["labels"]]


def candidate_texts(batch: dict, tokenizer, row: int) -> Optional[list[str]]:
    """The candidate answers of sample ``row`` as text (``None`` when the task has none)."""
    if "candidate_ids" not in batch:
        return None
    valid = batch["choice_valid"][row]
    ids, mask = batch["candidate_ids"][row], batch["candidate_mask"][row]
    return [tokenizer.decode(ids[j][mask[j].bool()].tolist(), skip_special_tokens=True) for j in range(len(valid)) if valid[j]]
