"""Per-task LoRA adapters inside one peft model.

``TaskAdapters`` names the adapters (``task_0`` ... ``task_{T-1}``; one adapter, peft's
``default``, when a single LoRA learns every task), creates them all before the first task
with the model's LoRA config (so a checkpoint loads into a fresh model, and every rank draws
the same initial weights from the run's seed), and decides between fits which of them are
applied and which of their matrices train.

Applied adapters are summed: ``W x + sum_i s_i B_i A_i x``. Between fits (evaluation, adapter
folders) that is peft's own multi-adapter forward, one branch per adapter. While a task trains,
the frozen earlier adapters are applied as one fused branch (``EarlierAdapters``: their A rows
and scaled B columns concatenated, as the released O-LoRA code keeps them), so a step costs two
LoRA branches per layer whatever the number of tasks, instead of one per task.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel
    from peft.tuners.lora import LoraModel

LORA_PARTS = ("lora_A", "lora_B")

#: a peft LoRA layer: an ``nn.Module`` that is also a peft ``LoraLayer``, whose per-adapter parts
#: (``lora_A``, ``lora_B``, ``lora_dropout``, ``scaling``) peft adds at run time, untyped
LoraLayerModule = Any


class EarlierAdapters:
    """A forward hook adding the frozen earlier adapters of one LoRA layer as one branch:
    ``dropout(x) A^T B^T`` with ``A = [A_0; ...; A_{t-1}]``, ``B = [s_0 B_0, ..., s_{t-1} B_{t-1}]``
    (one dropout mask for all of them, as the released O-LoRA code). Skipped under peft's
    ``disable_adapter()``, like every adapter."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, dropout: float) -> None:
        self.a, self.b, self.dropout = a.detach(), b.detach(), dropout

    def __call__(self, layer: LoraLayerModule, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if layer.disable_adapters:
            return output
        x = args[0]
        if self.a.device != x.device or self.a.dtype != layer.lora_A[layer.active_adapters[0]].weight.dtype:
            dtype = layer.lora_A[layer.active_adapters[0]].weight.dtype
            self.a, self.b = self.a.to(x.device, dtype), self.b.to(x.device, dtype)
        x = F.dropout(x.to(self.a.dtype), self.dropout, layer.training)
        return output + F.linear(F.linear(x, self.a), self.b).to(output.dtype)


def lora_layers(network: nn.Module) -> dict[str, LoraLayerModule]:
    """The peft LoRA layers of ``network`` by qualified name (in module order)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in network.named_modules() if isinstance(m, LoraLayer)}


class TaskAdapters:
    """The adapters of a run's tasks in the peft model ``network``.

    ``num_tasks`` adapters ``task_<i>`` with the config of the model's own adapter (which they
    replace), their initial weights drawn under ``seed``; or, for ``num_tasks=None``, the
    model's own adapter alone, shared by every task.
    """

    def __init__(self, network: PeftModel, num_tasks: int | None, seed: int) -> None:
        self.network = network
        self._hooks: list = []
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

    def activate(self, task: int, trainable: Sequence[str] = LORA_PARTS, fuse_earlier: bool = False) -> None:
        """Apply the adapters of tasks 0..``task``; train the ``trainable`` matrices of task ``task``'s only.
        ``fuse_earlier``: apply the earlier ones as one fused branch (see ``EarlierAdapters``)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        current = self.name(task)
        fused = fuse_earlier and self.per_task and task > 0
        tuner = cast("LoraModel", self.network.base_model)  # peft types it as any nn.Module; LoRA's is a LoraModel
        tuner.set_adapter([current] if fused else self.applied(task))  # peft marks them trainable ...
        layers = lora_layers(self.network)
        for layer in layers.values():  # ... so decide here what trains
            for part in LORA_PARTS:
                for name, linear in getattr(layer, part).items():
                    linear.requires_grad_(name == current and part in trainable)
        if fused:
            earlier = self.names[:task]
            for layer in layers.values():
                a = torch.cat([layer.lora_A[n].weight.detach() for n in earlier])
                b = torch.cat([layer.lora_B[n].weight.detach() * layer.scaling[n] for n in earlier], dim=1)
                dropout = getattr(layer.lora_dropout[current], "p", 0.0)
                self._hooks.append(layer.register_forward_hook(EarlierAdapters(a, b, float(dropout))))

    def weights(self, task: int, part: str) -> dict[str, nn.Parameter]:
        """Task ``task``'s ``lora_A`` or ``lora_B`` weight in every LoRA layer, by layer name."""
        name = self.name(task)
        return {layer_name: getattr(layer, part)[name].weight for layer_name, layer in lora_layers(self.network).items()}

    def save(self, task: int, folder: Path) -> Path:
        """Write task ``task``'s adapter as a peft adapter folder ``folder`` (atomically: a
        temporary folder renamed into place), loadable with ``PeftModel.from_pretrained``."""
        return save_peft_folder(self.network, self.name(task), folder)


def save_peft_folder(network: PeftModel, adapter: str, folder: Path) -> Path:
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
