"""GeneralReplay: GeRe's loss on replayed general samples, and the alternatives, as one callback.

The data module mixes the fixed general set into every task (``TextTaskSequence.general_mode``);
the model's task loss already holds the cross-entropy of those samples (label fitting). This
callback adds, by ``loss`` (``variants.py``):

- ``tm``: the threshold-margin loss. Thresholds and 2-bit states come from the base model at
  the start of the first fit, under the Trainer's precision (the same autocast as training,
  so the loss is exactly 0 before any update), are cached in ``run_dir/gere/`` and reloaded on
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

from pathlib import Path
from typing import Any, Callable, ContextManager, Literal, Optional, Union

import torch

from clight.choices import check_choice
from clight.contract import CausalLanguageModel, ConfigError, GeneralTextData, RunContext
from clight.data.task import SequenceInfo
from clight.distributed import is_rank_zero
from clight.methods.base import ContinualCallback
from clight.methods.general_replay.reference import BaseReference
from clight.methods.general_replay.variants import BaseOutputs, GeneralRows, ReplayLossName, make_replay_loss

Sigma = Literal["unbiased", "population"]


class GeneralReplay(ContinualCallback):
    """GeRe general-sample replay loss (``loss="tm"``) or one of its alternatives, on general rows of each batch.

    ``weight``: a number (default 100) or ``"dynamic"`` (w = L_ce / L_replay, both detached).
    ``sigma``: ``unbiased`` (the paper's sample standard deviation, default) or ``population``
    (the released code's ``np.std``). ``kl_temperature`` (``logit_kl`` only): 1, plain KL.
    """

    module_protocol = CausalLanguageModel
    data_protocol = GeneralTextData

    state_layout = {"fingerprint": "replicated", "mu": "replicated", "sd": "replicated"}  # the same base forwards on every rank

    def __init__(
        self,
        loss: ReplayLossName = "tm",
        weight: Union[float, Literal["dynamic"]] = 100.0,
        base_outputs: BaseOutputs = "auto",
        batch_size: int = 16,
        kl_temperature: float = 1.0,
        sigma: Sigma = "unbiased",
    ) -> None:
        check_choice("GeneralReplay.loss", loss, ReplayLossName)
        check_choice("GeneralReplay.base_outputs", base_outputs, BaseOutputs)
        check_choice("GeneralReplay.sigma", sigma, Sigma)
        if not (isinstance(weight, (int, float)) or weight == "dynamic"):
            raise ValueError(f"GeneralReplay.weight must be a number or 'dynamic', got {weight!r}")
        if base_outputs == "cache" and loss == "logit_kl":
            raise ValueError(
                "logit_kl cannot cache base outputs (tokens x vocabulary floats): use base_outputs 'auto' or 'frozen_copy'"
            )
        self.loss, self.weight, self.base_outputs = loss, weight, base_outputs
        self.batch_size, self.kl_temperature, self.sigma = batch_size, kl_temperature, sigma
        self.variant = make_replay_loss(loss, base_outputs, kl_temperature)
        self.reference: Optional[BaseReference] = None
        self.fingerprint: Optional[str] = None
        self.base_source: Optional[str] = None
        self.cache_file: Optional[Path] = None
        self._datamodule: Any = None

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        if datamodule.general_mode == "none":
            raise ConfigError("GeneralReplay needs general samples in training: set data.general_mode to 'append' or 'per_batch'")
        if self.loss == "label_fitting" and module.general_ce == "none":
            raise ConfigError("label fitting is the general samples' cross-entropy: set model.general_ce to 'equal' or 'pooled'")

    def sharding_refusal(self, module: Any) -> Optional[str]:
        copies = self.variant.name in ("logit_kl", "feature_l1", "feature_l2") and self.base_outputs != "cache"
        if copies and (self.base_outputs == "frozen_copy" or not getattr(module, "has_adapters", False)):
            return (
                f"loss {self.loss!r} reads a frozen whole copy of the model on every rank, which would undo the sharding "
                "(use LoRA, whose base outputs come with the adapters disabled, or base_outputs: cache)"
            )
        return None

    # -- setup ----------------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._datamodule = datamodule
        self.fingerprint = f"{datamodule.general_set.fingerprint()}-{module.model_name}-{module.hidden_size}"
        self.cache_file = context.path("gere", f"{self.loss}_base.safetensors")
        if self.variant.needs_reference and self.cache_file is not None:
            self.reference = BaseReference.load(self.cache_file, self.fingerprint)
            if self.reference is None and context.resumed:
                raise FileNotFoundError(
                    f"{self.cache_file} is missing: it holds the base model's thresholds, which a resumed (already "
                    "trained) model can no longer give. Restore the file or start a fresh run."
                )
        self.base_source = self.variant.prepare(module)
        if self.variant.adds_term:
            module.add_loss_term(f"gere_{self.loss}", self._term)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.ensure_reference(pl_module, trainer.precision_plugin.forward_context)

    def ensure_reference(self, module: Any, forward_context: Optional[Callable[[], ContextManager]] = None) -> None:
        """Compute the base reference now (each forward inside ``forward_context()``) if it is needed and missing."""
        if not self.variant.needs_reference or self.reference is not None:
            return
        assert self.fingerprint is not None, "setup_sequence comes first"
        self.reference = BaseReference.compute(
            module,
            self._datamodule,
            self.batch_size,
            keep_features=self.loss != "tm",
            unbiased=self.sigma == "unbiased",
            fingerprint=self.fingerprint,
            forward_context=forward_context,
        )
        if self.cache_file is not None and is_rank_zero():
            self.reference.save(self.cache_file, self.loss)

    # -- the loss term --------------------------------------------------------------------------
    def _term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        hidden = outputs["hidden"]
        general = GeneralRows.of(batch, hidden)
        if general is None:
            return hidden.sum() * 0.0
        if self.reference is not None:
            self.reference = self.reference.to(hidden.device)
        value = self.variant(module, batch, outputs, general, self.reference)
        if self.weight != "dynamic":
            return float(self.weight) * value
        ce = outputs["ce"].detach()
        return torch.where(value.detach() > 0, ce / value.detach().clamp_min(1e-12), torch.zeros_like(ce)) * value

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def thresholds(self):
        return self.reference.thresholds if self.reference is not None else None

    @property
    def states(self):
        return self.reference.states if self.reference is not None else None

    @property
    def features(self):
        return self.reference.features if self.reference is not None else None

    @property
    def loaded_from_cache(self) -> bool:
        return self.reference is not None and self.reference.loaded_from_cache

    def memory_bytes(self) -> dict:
        return self.reference.memory_bytes() if self.reference is not None else {}

    def state_dict(self) -> dict:
        out: dict = {"fingerprint": self.fingerprint}
        if self.reference is not None:
            out.update({"mu": self.reference.thresholds.mu, "sd": self.reference.thresholds.sd})
        return out

    def load_state_dict(self, state: dict) -> None:
        self.fingerprint = state.get("fingerprint", self.fingerprint)

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "method": "GeRe (Zhang et al., 2025)" if self.loss == "tm" else f"general replay, {self.loss}",
            "loss": self.loss,
            "weight": self.weight,
            "sigma": f"{self.sigma} standard deviation" + (" (paper)" if self.sigma == "unbiased" else " (released code)"),
            **self.variant.describe(),
            "base_outputs": self.base_source,
            "loaded_from_cache": self.loaded_from_cache,
            "memory_bytes": self.memory_bytes(),
        }
