"""ContinualCausalLM: a Hugging Face causal language model as a ContinualModule.

Full fine-tuning or LoRA (peft; target modules and rank from the config). The task loss is the
language-model cross-entropy on answer tokens (labels -100 elsewhere); when a batch mixes
replayed general samples with task samples, ``general_ce`` decides how their cross-entropies
combine (``equal``: the mean of the two token-averaged losses, as the released GeRe code does).
Evaluation scores each candidate answer's log-likelihood after the prompt and counts the
argmax as correct (one pass per prompt, candidates scored from its cache), or with
``evaluation="generate"`` scores greedy generations by exact match, ROUGE-L and label accuracy
(``clight.models.lm_scoring``).
Mixed precision comes from the Trainer (``precision: bf16-mixed`` on GPUs that support it);
``dtype`` sets the weights' storage dtype.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clight.choices import check_choice
from clight.data.text.batches import IGNORE
from clight.models.lora import add_lora
from clight.models.module import ContinualModule, default_optimizer

GeneralCE = Literal["equal", "pooled", "none"]
Evaluation = Literal["likelihood", "generate"]
TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A randomly initialised small Llama (seeded), for tests and notebooks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, **{**TINY_LLAMA, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_causal_lm(model: str, tokenizer, dtype: str = "float32", seed: int = 0, tiny_config: Optional[dict] = None):
    if model == "tiny":
        return tiny_llama(len(tokenizer), seed, **(tiny_config or {})).to(getattr(torch, dtype))
    from transformers import AutoModelForCausalLM

    from clight.assets.hub import from_pretrained
    from clight.assets.smollm2 import resolve_pretrained

    return from_pretrained(
        AutoModelForCausalLM.from_pretrained, resolve_pretrained(model), "model", model=True, dtype=getattr(torch, dtype)
    )


# Which tokens of each row a method that routes whole samples reads (MoE adapters' DDAS): set
# around forwards whose rows are scored on some tokens only, so that every candidate answer of a
# question is routed by the same prompt. Unset: every real token.
_ROUTING_TOKENS: ContextVar[Optional[torch.Tensor]] = ContextVar("clight_routing_tokens", default=None)


def routing_tokens() -> Optional[torch.Tensor]:
    """The ``[B, L]`` mask of the tokens the current forward's rows are routed by, or ``None``."""
    return _ROUTING_TOKENS.get()


@contextmanager
def route_by(tokens: torch.Tensor) -> Iterator[None]:
    """Route the rows of the forwards inside by the ``tokens`` mask ``[B, L]``."""
    token = _ROUTING_TOKENS.set(tokens)
    try:
        yield
    finally:
        _ROUTING_TOKENS.reset(token)


def prompt_tokens(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's real tokens that are not scored (its prompt); all its real tokens where it has
    no prompt (general text)."""
    real = attention_mask.bool()
    prompt = real & (labels == IGNORE)
    return torch.where(prompt.any(1, keepdim=True), prompt, real)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position next-token NLL ``[B, L-1]`` and the mask of positions that count."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return nll.view(targets.shape), targets != IGNORE


class ContinualCausalLM(ContinualModule):
    """A causal LM trained on text tasks one after another.

    ``model``: ``tiny`` (random small Llama over the tokenizer's vocabulary), ``smollm2`` (the
    offline SmolLM2-135M-Instruct) or any HF name/path. ``lora``: ``None`` for full fine-tuning,
    else ``{"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}``.
    """

    def __init__(
        self,
        model: str = "smollm2",
        tokenizer: Optional[str] = None,
        lora: Optional[dict] = None,
        dtype: str = "float32",
        general_ce: GeneralCE = "equal",
        evaluation: Evaluation = "likelihood",
        length_normalize: bool = False,
        max_new_tokens: int = 32,
        tiny_config: Optional[dict] = None,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        check_choice("ContinualCausalLM.general_ce", general_ce, GeneralCE)
        check_choice("ContinualCausalLM.evaluation", evaluation, Evaluation)
        from clight.assets.tokenizers import load_tokenizer

        self.model_name = model
        self.tokenizer = load_tokenizer(tokenizer or ("char" if model == "tiny" else model))
        self.net = load_causal_lm(model, self.tokenizer, dtype, seed, tiny_config)
        if gradient_checkpointing:
            self.net.gradient_checkpointing_enable()
        self.lora_config = dict(lora) if lora else None
        if self.lora_config:
            self.net = add_lora(self.net, self.lora_config)
        self.dtype_name, self.general_ce = dtype, general_ce
        if max_new_tokens < 1:
            raise ValueError(f"ContinualCausalLM.max_new_tokens must be at least 1, got {max_new_tokens}")
        self.evaluation, self.length_normalize, self.max_new_tokens = evaluation, length_normalize, max_new_tokens

    @property
    def hidden_size(self) -> int:
        return int(self.net.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Logits and the last hidden layer: for Llama-style models the final-norm output
        (transformers' ``hidden_states[-1]`` is tied to ``last_hidden_state``)."""
        out = self.net(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        return out.logits, out.hidden_states[-1]

    @property
    def has_adapters(self) -> bool:
        """Whether the base model's outputs come from disabling adapters (LoRA), without a copy."""
        return bool(self.lora_config)

    def base_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The base model's outputs: LoRA adapters disabled (no copy needed); None for full fine-tuning."""
        if not self.has_adapters:
            return None
        with torch.no_grad(), self.net.disable_adapter():
            return self.forward(input_ids, attention_mask)

    def frozen_network(self) -> torch.nn.Module:
        """A frozen copy of the network as it is now, in eval mode (base outputs under full fine-tuning)."""
        return copy.deepcopy(self.net).eval().requires_grad_(False)

    # -- what methods may call --------------------------------------------------------------------
    def model_input(self, batch: dict) -> dict:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def features(self, x: dict, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean of the last hidden states over each sample's real tokens ``[B, d]``."""
        _, hidden = self(x["input_ids"], x["attention_mask"])
        mask = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)

    def output_logits(self, batch: dict) -> torch.Tensor:
        """Next-token logits ``[B, vocab]`` at each sample's answer position: where the first
        answer token is predicted (the last prompt token), found from ``labels``."""
        logits, _ = self(batch["input_ids"], batch["attention_mask"])
        answer = batch["labels"] != IGNORE
        first = torch.where(answer.any(1), answer.float().argmax(1), batch["attention_mask"].sum(1)).clamp_min(1) - 1
        return logits[torch.arange(len(logits), device=logits.device), first]

    # -- loss -----------------------------------------------------------------------------------
    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logits, hidden = self(batch["input_ids"], batch["attention_mask"])
        nll, valid = token_nll(logits, batch["labels"])
        general = batch.get("is_general", torch.zeros(len(nll), dtype=torch.bool, device=nll.device)).to(nll.device)

        def mean(rows: torch.Tensor) -> Optional[torch.Tensor]:
            n = valid[rows].sum()
            return nll[rows].sum() / n if n > 0 else None

        ce_task, ce_general = mean(~general), mean(general)
        if self.general_ce == "pooled":
            ce = nll.sum() / valid.sum().clamp_min(1)
        elif self.general_ce == "none" or ce_general is None:
            ce = ce_task if ce_task is not None else nll.sum() * 0.0
        else:
            ce = ce_general if ce_task is None else 0.5 * (ce_task + ce_general)
        outputs = {"logits": logits, "hidden": hidden, "ce": ce, "ce_task": ce_task, "ce_general": ce_general}
        return ce, outputs

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def choice_scores(self, batch: dict) -> torch.Tensor:
        """Log-likelihood ``[B, K]`` of each candidate answer after its prompt (-inf for padding
        choices), every candidate run with its whole prompt: the reference the cached scoring of
        ``evaluation_counts`` (``lm_decoding.cached_candidate_scores``) is tested against."""
        b, k, length = batch["choice_input_ids"].shape
        ids, mask = batch["choice_input_ids"].view(b * k, length), batch["choice_attention_mask"].view(b * k, length)
        labels = batch["choice_labels"].view(b * k, length)
        with route_by(prompt_tokens(labels, mask)):
            logits, _ = self(ids, mask)
        nll, valid = token_nll(logits, labels)
        score = -(nll * valid).sum(1)
        if self.length_normalize:
            score = score / valid.sum(1).clamp_min(1)
        return score.view(b, k).masked_fill(~batch["choice_valid"], float("-inf"))

    @torch.no_grad()
    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:
        from clight.models.lm_scoring import generation_counts, likelihood_counts

        if "prompt_input_ids" not in batch:
            raise ValueError("evaluation batches need the prompts: build them with TextCollator(choices=True)")
        return generation_counts(self, batch) if self.evaluation == "generate" else likelihood_counts(self, batch)

    @torch.no_grad()
    def perplexity(self, loader) -> float:
        """exp(mean token NLL) over every labelled token of ``loader``'s batches."""
        was_training = self.training
        self.eval()
        total, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits, _ = self(batch["input_ids"], batch["attention_mask"])
            nll, valid = token_nll(logits, batch["labels"])
            total += float((nll * valid).sum())
            count += int(valid.sum())
        self.train(was_training)
        return math.exp(total / max(count, 1))

    def export_pretrained(self, state: dict, folder, merge: bool = False) -> dict:
        """``hf/`` (with the tokenizer) and, with LoRA, ``adapter/`` folders from the whole module's
        ``state`` (``clight.export``); ``merge``: the LoRA adapters merged into ``hf/``'s weights."""
        from clight.models.hf_export import export_causal_lm

        net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        written = export_causal_lm(self.net, net_state, folder, self.has_adapters, merge)
        if (folder / "hf").is_dir():
            self.tokenizer.save_pretrained(folder / "hf")
        return written

    def describe(self) -> dict:
        out = super().describe()
        out.update(
            {
                "model": self.model_name,
                "lora": self.lora_config,
                "dtype": self.dtype_name,
                "general_ce": self.general_ce,
                "evaluation": self.evaluation,
                "max_new_tokens": self.max_new_tokens if self.evaluation == "generate" else None,
                "hidden_size": self.hidden_size,
            }
        )
        return out
