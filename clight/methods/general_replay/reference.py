"""What GeRe keeps of the base model, computed once before the first task: per-dimension
thresholds, the 2-bit state of every general-set entry and, for cached feature imitation, the
float16 hidden states. Saved in the run folder with a fingerprint of the general set and the
model, reloaded on resume (a resumed model is no longer the base model)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clight.distributed import broadcast_from_rank_zero
from clight.io import atomic_output
from clight.methods.general_replay.packed_states import PackedStates
from clight.methods.general_replay.thresholds import Thresholds, compute_states, compute_thresholds


@dataclass
class BaseReference:
    thresholds: Thresholds
    states: PackedStates
    features: Optional[torch.Tensor]
    fingerprint: str
    loaded_from_cache: bool = False

    @classmethod
    def compute(
        cls,
        module: Any,
        datamodule: Any,
        batch_size: int,
        keep_features: bool,
        unbiased: bool,
        fingerprint: str,
        forward_context: Optional[Callable[[], ContextManager]] = None,
    ) -> "BaseReference":
        """Two no-grad passes of ``module`` (eval mode, each forward inside ``forward_context()``:
        the training precision) over the general set; rank 0's result on every rank."""
        was_training = module.training
        module.eval()
        device = module.device
        context = forward_context or nullcontext

        def hidden(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with context():
                return module(ids, mask)[1]

        batches = lambda: datamodule.general_loader(datamodule.general_set, batch_size)  # noqa: E731
        try:
            thresholds = compute_thresholds(hidden, batches, device, unbiased)
            feats: Optional[list] = [] if keep_features else None
            states = compute_states(hidden, batches, thresholds, device, feats)
        finally:
            module.train(was_training)
        shared = broadcast_from_rank_zero(
            {
                "mu": thresholds.mu,
                "sd": thresholds.sd,
                "packed": states.packed,
                "offsets": states.offsets,
                **({"features": torch.cat(feats)} if feats is not None else {}),
            }
        )
        return cls(
            Thresholds(shared["mu"], shared["sd"]),
            PackedStates(shared["packed"], shared["offsets"], states.dims),
            shared.get("features"),
            fingerprint,
        )

    def save(self, path: Path, loss: str) -> None:
        tensors = {"mu": self.thresholds.mu, "sd": self.thresholds.sd, **self.states.state_dict()}
        if self.features is not None:
            tensors["features"] = self.features
        with atomic_output(path) as tmp:
            save_file(
                {k: v.contiguous().cpu() for k, v in tensors.items()},
                str(tmp),
                metadata={"fingerprint": self.fingerprint, "loss": loss},
            )

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> Optional["BaseReference"]:
        """The cached reference, ``None`` when there is none; an error when it belongs to another run."""
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get("fingerprint")
        if stored != fingerprint:
            raise ValueError(
                f"{path} was computed for another general set or model ({stored} != {fingerprint}); "
                "use a fresh run_dir, or delete the file only if this run has not trained yet (the base model is needed)"
            )
        t = load_file(str(path))
        return cls(Thresholds(t["mu"], t["sd"]), PackedStates.from_state_dict(t), t.get("features"), fingerprint, True)

    def to(self, device: torch.device) -> "BaseReference":
        if self.states.packed.device == device:
            return self
        features = self.features.to(device) if self.features is not None else None
        return BaseReference(
            Thresholds(self.thresholds.mu.to(device), self.thresholds.sd.to(device)),
            self.states.to(device),
            features,
            self.fingerprint,
            self.loaded_from_cache,
        )

    def memory_bytes(self) -> dict:
        """Bytes of the replay state next to float32 hidden states of the same entries."""
        entries = int(self.states.offsets[-1]) * self.states.dims
        return {
            "packed_states": self.states.state_bytes(),
            "float32_states": entries * 4,
            "sample_offsets": self.states.offsets.numel() * 8,
            "features_float16": self.features.numel() * 2 if self.features is not None else 0,
        }
