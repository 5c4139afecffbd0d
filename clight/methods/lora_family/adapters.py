"""Per-task LoRA adapters inside one peft model.

``TaskAdapters`` names the adapters (``task_0`` ... ``task_{T-1}``; one adapter, peft's
``default``, when a single LoRA learns every task), creates them all before the first task
with the model's LoRA config (so a checkpoint loads into a fresh model, and every rank draws
the same initial weights from the run's seed), and decides between fits which of them are
applied (peft's multi-adapter forward: the sum of every active adapter's ``B A x``) and which of
their matrices train.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

LORA_PARTS = ("lora_A", "lora_B")


def lora_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``network`` by qualified name (in module order)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in network.named_modules() if isinstance(m, LoraLayer)}


class TaskAdapters:
    """The adapters of a run's tasks in the peft model ``network``.

    ``num_tasks`` adapters ``task_<i>`` with the config of the model's own adapter (which they
    replace), their initial weights drawn under ``seed``; or, for ``num_tasks=None``, the
    model's own adapter alone, shared by every task.
    """

    def __init__(self, network: nn.Module, num_tasks: int | None, seed: int) -> None:
        self.network = network
        if num_tasks is None:
            self.names = ["default"]
            return
        self.names = [f"task_{i}" for i in range(num_tasks)]
        config = network.peft_config["default"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in self.names:
                network.add_adapter(name, copy.deepcopy(config))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns that the deleted adapter was the active one
            network.delete_adapter("default")

    @property
    def per_task(self) -> bool:
        return self.names != ["default"]

    def name(self, task: int) -> str:
        return self.names[task] if self.per_task else self.names[0]

    def applied(self, task: int) -> list[str]:
        """The adapters applied while task ``task`` trains and after it: every task's so far."""
        return self.names[: task + 1] if self.per_task else list(self.names)

    def activate(self, task: int, trainable: Sequence[str] = LORA_PARTS) -> None:
        """Apply the adapters of tasks 0..``task``; train the ``trainable`` matrices of task ``task``'s only."""
        active = self.applied(task)
        self.network.base_model.set_adapter(active)  # peft marks every active adapter trainable ...
        current = self.name(task)
        for layer in lora_layers(self.network).values():  # ... so decide here what trains
            for part in LORA_PARTS:
                for name, linear in getattr(layer, part).items():
                    linear.requires_grad_(name == current and part in trainable)

    def weights(self, task: int, part: str) -> dict[str, nn.Parameter]:
        """Task ``task``'s ``lora_A`` or ``lora_B`` weight in every LoRA layer, by layer name."""
        name = self.name(task)
        return {layer_name: getattr(layer, part)[name].weight for layer_name, layer in lora_layers(self.network).items()}

    def scaling(self, task: int) -> float:
        layer = next(iter(lora_layers(self.network).values()))
        return float(layer.scaling[self.name(task)])

    def save(self, task: int, folder: Path) -> Path:
        """Write task ``task``'s adapter as a peft adapter folder ``folder`` (atomically: a
        temporary folder renamed into place), loadable with ``PeftModel.from_pretrained``."""
        return save_peft_folder(self.network, self.name(task), folder)


def save_peft_folder(network: nn.Module, adapter: str, folder: Path) -> Path:
    """``network.save_pretrained`` of one adapter into ``folder``, replacing what was there."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        network.save_pretrained(str(tmp), selected_adapters=[adapter])
        written = tmp if adapter == "default" else tmp / adapter  # peft nests every other adapter in a subfolder
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(written, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
