"""What a method may rely on: the run context it is given, and the typed protocols a model or a
data module must satisfy for it. ``docs/contract.md`` explains the whole contract.

A method (a ``ContinualCallback``) declares where it applies with three class attributes:
``settings`` (the scenarios it makes sense for), ``module_protocol`` and ``data_protocol``
(what it calls on the model and the data module). The runner checks every declaration before
anything runs, so a mismatch is a config error that names the method, the missing members and
the fix, never an ``AttributeError`` deep inside a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch

from clight.seeding import derive_seed, seeded_generator


class ConfigError(ValueError):
    """A model, data module or method that cannot work together, found before anything runs."""


@dataclass(frozen=True)
class RunContext:
    """What the runner tells a method once, before the first task (``setup_sequence``)."""

    run_dir: Optional[Path] = None
    seed: int = 0
    world_size: int = 1
    global_rank: int = 0
    resumed: bool = False  # the model's weights come from training (a checkpoint), not from the base model

    @property
    def is_rank_zero(self) -> bool:
        return self.global_rank == 0

    def seed_for(self, *salt: int) -> int:
        """A seed for one purpose of this run, the same on every rank and after a resume."""
        return derive_seed(self.seed, *salt)

    def generator(self, *salt: int) -> torch.Generator:
        return seeded_generator(self.seed, *salt)

    def path(self, *parts: str) -> Optional[Path]:
        """A path inside the run folder (``None`` when the method runs outside a run)."""
        return self.run_dir.joinpath(*parts) if self.run_dir is not None else None


# -- what methods need from a model --------------------------------------------------------------
@runtime_checkable
class DistillableClassifier(Protocol):
    """A classifier whose old outputs can be imitated (LwF)."""

    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def distillation_logits(self, features: torch.Tensor, tasks: Sequence[int]) -> list[torch.Tensor]: ...

    def frozen_copy(self) -> Any: ...


@runtime_checkable
class CausalLanguageModel(Protocol):
    """A causal LM whose hidden states and base (pre-training) outputs a method can read (GeRe)."""

    hidden_size: int
    model_name: str
    general_ce: str
    has_adapters: bool

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def base_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Optional[tuple[torch.Tensor, torch.Tensor]]: ...

    def frozen_network(self) -> torch.nn.Module: ...

    def perplexity(self, loader: Any) -> float: ...


@runtime_checkable
class LabelFreeOutputs(Protocol):
    """A model that gives per-sample output logits without labels (SPU's importance objective)."""

    def output_logits(self, batch: dict) -> torch.Tensor: ...


@runtime_checkable
class ExemplarClassifier(Protocol):
    """A single-head classifier a method can train with its own loss and classify with its own
    scores over the features (iCaRL)."""

    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def output_logits(self, batch: dict) -> torch.Tensor: ...

    def frozen_copy(self) -> Any: ...

    def replace_task_loss(self, name: str, term: Any) -> None: ...

    def set_evaluation_scores(self, scores: Any) -> None: ...


# -- what methods need from a data module ----------------------------------------------------------
@runtime_checkable
class MemoryData(Protocol):
    """A sequence whose training samples a method can keep as ``(task, index)`` references, read
    back (``memory_dataset``) and replay in the training stream in place of a configured memory
    (A-GEM, iCaRL, GDumb)."""

    serves_method_memory: bool

    def memory_dataset(self, entries: torch.Tensor) -> Any: ...

    def claim_training_memory(self, method: object, name: str) -> None: ...

    def replay_from(self, name: str, memory: Any, mode: str, batch_size: int = 0) -> None: ...


@runtime_checkable
class GeneralTextData(Protocol):
    """A text sequence with a fixed general set replayed during training and held-out general text."""

    general_set: Any
    heldout_set: Any
    general_mode: str

    def general_loader(self, dataset: Any, batch_size: Optional[int] = None) -> Any: ...


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks. Checked on the class first, so properties
    (which may load data) are not evaluated."""
    names = {n for n in vars(protocol) if not n.startswith("_")} | set(getattr(protocol, "__annotations__", {}))
    return sorted(n for n in names if not hasattr(type(obj), n) and n not in getattr(obj, "__dict__", {}))


def require(owner: str, obj: Any, protocol: Optional[type], role: str) -> None:
    """A ``ConfigError`` naming ``owner``'s needs when ``obj`` does not satisfy ``protocol``."""
    if protocol is None:
        return
    missing = missing_members(obj, protocol)
    if missing:
        raise ConfigError(
            f"{owner} needs a {role} that is a {protocol.__name__} ({(protocol.__doc__ or '').strip()}); "
            f"{type(obj).__name__} lacks {missing}. Pick a {role} that provides them, or drop {owner} from `methods`."
        )
