"""OSF: peft's orthogonal subspace fine-tuning, task after task.

Each targeted weight is split by SVD into the top ``k`` singular directions (frozen) and the rest
(trainable, with gradients projected orthogonal to the frozen directions by peft's hooks). At
the start of task t the method wraps the current network with peft's OSF tuner (the SVD of the
weights as they stand, so the frozen part holds what earlier tasks left); at its end it writes
the OSF adapter folder and merges the update back into the weights (``merge_and_unload``), so
between tasks, and in every task-boundary checkpoint, the model is a plain network.

Preserved rank ``k`` per weight: peft's continual-learning advice (progressive budget): task t of
T freezes ``t / T`` of the smaller dimension (at least 1, as peft needs; at most all but one
direction); a fixed ``effective_rank`` (an integer, or a fraction of the smaller dimension) freezes
the same share every task.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence, Union

from torch import nn

from clight.contract import ConfigError, RunContext
from clight.data.task import SequenceInfo, Task
from clight.methods.base import ContinualCallback
from clight.methods.lora_family.adapters import save_peft_folder
from clight.methods.lora_family.callback import adapter_folder, check_one_fit_per_task
from clight.methods.lora_family.targets import claim, full_network


def _targets(network: nn.Module, target_modules: Optional[Sequence[str]], owner: str) -> dict[str, nn.Linear]:
    """The linear layers OSF wraps: peft's matching of ``target_modules`` (peft's defaults for the model type if None)."""
    if target_modules is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING

        model_type = getattr(getattr(network, "config", None), "model_type", None)
        target_modules = TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING.get(model_type)
        if target_modules is None:
            raise ConfigError(f"{owner}: peft has no default OSF targets for model type {model_type!r}: set target_modules")
    found = {
        name: m
        for name, m in network.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith(f".{t}") for t in target_modules)
    }
    if not found:
        raise ConfigError(f"{owner}: no linear layer of the model matches target_modules={list(target_modules)}")
    return found


def preserved_ranks(
    layers: dict[str, nn.Linear], task: int, num_tasks: int, effective_rank: Union[None, int, float] = None
) -> dict[str, int]:
    """How many top singular directions of each layer stay frozen in task ``task`` (see the module docstring)."""
    ranks = {}
    for name, layer in layers.items():
        smaller = min(layer.weight.shape)
        if effective_rank is None:
            k = math.floor(smaller * task / num_tasks)
        elif isinstance(effective_rank, float) and 0 < effective_rank <= 1:
            k = int(smaller * effective_rank)
        else:
            k = int(effective_rank)
        ranks[name] = min(max(k, 1), smaller - 1)
    return ranks


class OSF(ContinualCallback):
    """Orthogonal subspace fine-tuning through peft's OSF tuner, re-wrapped at every task.

    ``target_modules``: peft's names (default: peft's OSF defaults for the model type, every
    linear layer of the blocks for Llama); ``effective_rank``: ``None`` for the progressive budget,
    else a fixed preserved rank or fraction. ``save_adapters``: write each task's OSF adapter as a
    peft folder (it loads onto the weights as they stood when the task began).
    """

    state_layout = {"finished": "replicated", "history": "replicated"}
    unshardable = "it takes the SVD of whole weight matrices, which sharded parameters hold in pieces"

    def __init__(
        self,
        target_modules: Optional[list[str]] = None,
        effective_rank: Union[None, int, float] = None,
        save_adapters: bool = True,
    ) -> None:
        if effective_rank is not None and effective_rank <= 0:
            raise ValueError(f"OSF.effective_rank must be positive (or null for the progressive budget), got {effective_rank}")
        self.target_modules = list(target_modules) if target_modules is not None else None
        self.effective_rank, self.save_adapters = effective_rank, save_adapters
        self.finished = 0
        self.history: list[dict] = []
        self._num_tasks = 0
        self._record: dict = {}
        self.context = RunContext()

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        _targets(full_network(module, "OSF"), self.target_modules, "OSF")
        claim(module, self, "OSF")

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self.context, self._num_tasks = context, datamodule.num_tasks

    def on_task_start(self, module: Any, task: Task) -> None:
        from peft import OSFConfig, get_peft_model

        check_one_fit_per_task("OSF", self.finished, task)
        layers = _targets(module.net, self.target_modules, "OSF")
        ranks = preserved_ranks(layers, task.index, self._num_tasks, self.effective_rank)
        config = OSFConfig(
            target_modules=list(layers),
            effective_rank=1,
            rank_pattern={f"^{re.escape(name)}$": k for name, k in ranks.items()},
            task_type="CAUSAL_LM",
        )
        module.net = get_peft_model(module.net, config)
        kept = sum(ranks.values()) / sum(min(layer.weight.shape) for layer in layers.values())
        self._record = {"task": task.index, "preserved_share": kept, "layers": len(layers)}

    def on_task_end(self, module: Any, task: Task) -> None:
        folder = adapter_folder(self.context, task.index)
        if self.save_adapters and folder is not None and self.context.is_rank_zero:
            save_peft_folder(module.net, "default", folder)
        self.history.append(
            {**self._record, "trainable_parameters": sum(p.numel() for p in module.net.parameters() if p.requires_grad)}
        )
        module.net = module.net.merge_and_unload()
        self.finished = task.index + 1

    def state_dict(self) -> dict:
        return {"finished": self.finished, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.finished, self.history = int(state["finished"]), list(state["history"])

    def describe(self) -> dict:
        return {
            "class": "OSF",
            "tuner": "peft OSF (gradients of the low singular factors projected orthogonal to the top ones)",
            "target_modules": self.target_modules or "peft's OSF defaults for the model type",
            "preserved_rank": (
                "progressive budget: task t of T freezes t/T of each weight's smaller dimension"
                if self.effective_rank is None
                else self.effective_rank
            ),
            "between_tasks": "merged into the weights; the next task's SVD reads them",
            "adapter_folders": (
                [f"adapters/task_{t}" for t in range(self.finished)] if self.save_adapters else "not saved (save_adapters: false)"
            ),
            "history": self.history,
        }
