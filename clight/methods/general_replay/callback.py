"""GeneralReplay: GeRe's loss on replayed general samples, and the alternatives, as one callback.

The data module mixes the fixed general set into every task (``TextTaskSequence.general_mode``);
the model's task loss already holds the cross-entropy of those samples (label fitting). This
callback adds, by ``loss``:

- ``tm``: the threshold-margin loss (METHODS.md section 3). Thresholds and 2-bit states come
  from the base model before the first task, are cached in ``run_dir/gere/`` and reloaded on
  resume (a resumed model is no longer the base model, so they are never recomputed then).
- ``label_fitting``: nothing more (replay cross-entropy only).
- ``logit_kl``: KL(base || current) of the next-token distributions on general tokens.
- ``feature_l1`` / ``feature_l2``: distance of the last hidden states to the base model's.

Base outputs for ``logit_kl`` / ``feature_*`` (``base_outputs``): ``auto`` = LoRA models run
with adapters disabled (one extra no-grad forward of the general rows per step, no extra
weights), full fine-tuning keeps a frozen copy (the same extra forward plus one more model's
weights in memory); ``cache`` (features only) stores the base last hidden states of every
general token in float16 in the run folder (2 bytes x tokens x d; no extra forward).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from clight.io import write_json_atomic
from clight.methods.base import ContinualCallback
from clight.methods.general_replay.losses import FEATURE_LOSSES, logit_kl, tm_loss
from clight.methods.general_replay.packed_states import PackedStates, token_rows
from clight.methods.general_replay.thresholds import Thresholds, compute_states, compute_thresholds

LOSSES = ("tm", "label_fitting", "logit_kl", "feature_l1", "feature_l2")


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def _broadcast(tensors: dict) -> dict:
    """Rank 0's tensors on every rank (when a process group is up), so all ranks share one set of states."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensors
    objs = [tensors]
    torch.distributed.broadcast_object_list(objs, src=0)
    return objs[0]


class GeneralReplay(ContinualCallback):
    """GeRe general-sample replay loss (``loss="tm"``) or one of its alternatives, on general rows of each batch.

    ``weight``: a number (default 100) or ``"dynamic"`` (w = L_ce / L_replay, both detached).
    """

    def __init__(
        self,
        loss: str = "tm",
        weight: Union[float, str] = 100.0,
        base_outputs: str = "auto",
        batch_size: int = 16,
        kl_temperature: float = 1.0,
        device: str = "auto",
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not (isinstance(weight, (int, float)) or weight == "dynamic"):
            raise ValueError(f"weight must be a number or 'dynamic', got {weight!r}")
        if base_outputs not in ("auto", "frozen_copy", "cache"):
            raise ValueError(f"base_outputs must be 'auto', 'frozen_copy' or 'cache', got {base_outputs!r}")
        if base_outputs == "cache" and loss == "logit_kl":
            raise ValueError("logit_kl cannot cache base outputs (tokens x vocabulary floats): use base_outputs 'auto' or 'frozen_copy'")
        self.loss, self.weight, self.base_outputs = loss, weight, base_outputs
        self.batch_size, self.kl_temperature, self.device = batch_size, kl_temperature, device
        self.run_dir: Optional[Path] = None
        self.thresholds: Optional[Thresholds] = None
        self.states: Optional[PackedStates] = None
        self.features: Optional[torch.Tensor] = None
        self.offsets: Optional[torch.Tensor] = None
        self.base_model: Optional[torch.nn.Module] = None
        self.fingerprint: Optional[str] = None
        self.loaded_from_cache = False
        self.base_source = None

    # -- setup ----------------------------------------------------------------------------------
    @property
    def cache_file(self) -> Optional[Path]:
        return Path(self.run_dir) / "gere" / f"{self.loss}_base.safetensors" if self.run_dir is not None else None

    def setup_sequence(self, module: Any, datamodule: Any) -> None:
        general = getattr(datamodule, "general_set", None)
        if general is None:
            raise ValueError("GeneralReplay needs a data module with a general set (TextTaskSequence with general=...)")
        if getattr(datamodule, "general_mode", "append") == "none":
            raise ValueError("GeneralReplay needs general samples in training: set data.general_mode to 'append' or 'per_batch'")
        if self.loss == "label_fitting" and getattr(module, "general_ce", "equal") == "none":
            raise ValueError("label fitting is the general samples' cross-entropy: set model.general_ce to 'equal' or 'pooled'")
        self.fingerprint = f"{general.fingerprint()}-{getattr(module, 'model_name', '?')}-{module.hidden_size}"
        if self.loss == "tm" or self.base_outputs == "cache":  # cache is refused for logit_kl in __init__
            if not self._load_cache():
                self._compute(module, datamodule, general)
                self._save_cache()
        elif self.loss in ("logit_kl", "feature_l1", "feature_l2"):
            use_copy = self.base_outputs == "frozen_copy" or not getattr(module, "lora_config", None)
            if use_copy:
                self.base_model = copy.deepcopy(module.net).eval().requires_grad_(False)
            self.base_source = "frozen_copy" if use_copy else "adapters_disabled"
        if self.loss != "label_fitting":
            module.add_loss_term(f"gere_{self.loss}", self._term)

    def _compute(self, module: Any, datamodule: Any, general) -> None:
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if self.device == "auto" else self.device))
        original, was_training = module.device, module.training
        module.to(device).eval()
        hidden_fn = lambda ids, mask: module(ids, mask)[1]  # noqa: E731
        batches = lambda: datamodule.general_loader(general, self.batch_size)  # noqa: E731
        thresholds = compute_thresholds(hidden_fn, batches, device)
        feats: Optional[list] = [] if self.loss != "tm" else None
        states = compute_states(hidden_fn, batches, thresholds, device, feats)
        module.to(original).train(was_training)
        shared = _broadcast({"mu": thresholds.mu, "sd": thresholds.sd, "packed": states.packed, "offsets": states.offsets,
                             **({"features": torch.cat(feats)} if feats is not None else {})})
        self.thresholds = Thresholds(shared["mu"], shared["sd"])
        self.states = PackedStates(shared["packed"], shared["offsets"], states.dims)
        self.offsets = self.states.offsets
        self.features = shared.get("features")
        self.base_source = "cache"
        self.loaded_from_cache = False

    def _cache_tensors(self) -> dict:
        out = {"mu": self.thresholds.mu, "sd": self.thresholds.sd, **self.states.state_dict()}
        if self.features is not None:
            out["features"] = self.features
        return {k: v.contiguous().cpu() for k, v in out.items()}

    def _save_cache(self) -> None:
        path = self.cache_file
        if path is None or not _is_rank_zero():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(self._cache_tensors(), str(tmp), metadata={"fingerprint": self.fingerprint, "loss": self.loss})
        tmp.replace(path)

    def _load_cache(self) -> bool:
        path = self.cache_file
        if path is None or not path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{path} was computed for another general set or model ({meta.get('fingerprint')} != {self.fingerprint}); "
                "use a fresh run_dir, or delete the file only if this run has not trained yet (the base model is needed)"
            )
        t = load_file(str(path))
        self.thresholds = Thresholds(t["mu"], t["sd"])
        self.states = PackedStates.from_state_dict(t)
        self.offsets = self.states.offsets
        self.features = t.get("features")
        self.base_source = "cache"
        self.loaded_from_cache = True
        return True

    # -- the loss term --------------------------------------------------------------------------
    def _weighted(self, value: torch.Tensor, outputs: dict) -> torch.Tensor:
        if self.weight != "dynamic":
            return float(self.weight) * value
        ce = outputs["ce"].detach()
        return torch.where(value.detach() > 0, ce / value.detach().clamp_min(1e-12), torch.zeros_like(ce)) * value

    def _term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        hidden = outputs["hidden"]
        general = batch["is_general"].to(hidden.device)
        if not bool(general.any()):
            return hidden.sum() * 0.0
        mask = batch["attention_mask"][general].bool()
        lengths = mask.sum(1)
        index = batch["general_index"][general]
        h = hidden[general][mask]
        if self.loss == "tm":
            if self.states.packed.device != h.device:
                self.states = self.states.to(h.device)
            t = self.thresholds
            value = tm_loss(h, self.states.gather(index, lengths), t.neg.to(h.device), t.pos.to(h.device))
        elif self.loss == "logit_kl":
            base_logits, _ = self._base(module, batch, general)
            value = logit_kl(outputs["logits"][general][mask], base_logits[mask], self.kl_temperature)
        else:
            if self.features is not None:
                if self.features.device != h.device:
                    self.features, self.offsets = self.features.to(h.device), self.offsets.to(h.device)
                base_h = self.features[token_rows(self.offsets, index, lengths)]
            else:
                base_h = self._base(module, batch, general)[1][mask]
            value = FEATURE_LOSSES[self.loss](h, base_h)
        return self._weighted(value, outputs)

    @torch.no_grad()
    def _base(self, module: Any, batch: dict, general: torch.Tensor):
        ids, mask = batch["input_ids"][general], batch["attention_mask"][general]
        if self.base_model is None:
            return module.base_forward(ids, mask)
        if next(self.base_model.parameters()).device != ids.device:
            self.base_model.to(ids.device)
        out = self.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.logits, out.hidden_states[-1]

    # -- bookkeeping ----------------------------------------------------------------------------
    def memory_bytes(self) -> dict:
        """Bytes of the replay state next to float32 hidden states of the same entries."""
        if self.states is None:
            return {}
        entries = int(self.states.offsets[-1]) * self.states.dims
        return {"packed_states": self.states.state_bytes(), "float32_states": entries * 4,
                "sample_offsets": self.states.offsets.numel() * 8,
                "features_float16": self.features.numel() * 2 if self.features is not None else 0}

    def state_dict(self) -> dict:
        out: dict = {"fingerprint": self.fingerprint}
        if self.thresholds is not None:
            out.update({"mu": self.thresholds.mu, "sd": self.thresholds.sd})
        return out

    def load_state_dict(self, state: dict) -> None:
        self.fingerprint = state.get("fingerprint", self.fingerprint)
        if "mu" in state:
            self.thresholds = Thresholds(state["mu"], state["sd"])

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "method": "GeRe (Zhang et al., 2025)" if self.loss == "tm" else f"general replay, {self.loss}",
            "loss": self.loss,
            "weight": self.weight,
            "thresholds": "mu_d +/- sd_d over all unpadded general tokens of the base model's last hidden states (after final norm)",
            "states": "2-bit packed NEG/POS/NEU (clight); the released code stores float32 states" if self.loss == "tm" else None,
            "tm_average": "over violating entries only" if self.loss == "tm" else None,
            "base_outputs": self.base_source,
            "loaded_from_cache": self.loaded_from_cache,
            "memory_bytes": self.memory_bytes(),
        }


class GeneralPerplexity(ContinualCallback):
    """General ability: perplexity on the held-out general text (never replayed) before the first
    task and after every task; written to ``run_dir/general_perplexity.json``."""

    def __init__(self, batch_size: int = 16) -> None:
        self.batch_size = batch_size
        self.run_dir: Optional[Path] = None
        self.history: list[float] = []
        self._datamodule = None

    def _measure(self, module: Any) -> None:
        held = self._datamodule.heldout_set
        if held is None:
            raise ValueError("GeneralPerplexity needs held-out general text: set data.heldout_general > 0")
        self.history.append(module.perplexity(self._datamodule.general_loader(held, self.batch_size)))
        if self.run_dir is not None and _is_rank_zero():
            write_json_atomic(Path(self.run_dir) / "general_perplexity.json",
                              {"before_first_task": self.history[0], "after_task": self.history[1:]})

    def setup_sequence(self, module: Any, datamodule: Any) -> None:
        self._datamodule = datamodule
        if not self.history:
            self._measure(module)

    def on_task_end(self, module: Any, task: Any) -> None:
        self._measure(module)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def describe(self) -> dict:
        return {"class": type(self).__name__, "metric": "held-out general text perplexity", "history": self.history}
