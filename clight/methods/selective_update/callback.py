"""SPU: selective parameter update (Zhang, Janson, Aljundi, Elhoseiny, CVPR 2024) as a callback.

At task start (between fits) the callback freezes everything but its candidate layers (the
first layer of every transformer MLP block, ``candidates.py``), their biases, CLIP's visual
projection and the model's own heads, so the optimizer of the fit holds only those. When the
fit starts (the model on its training device, under the Trainer's precision) it sums the
gradients of a label-free objective over the first ``importance_batches`` of the task's training
batches (``importance.py``), reduces the sum across ranks, and keeps the top ``fraction`` of every
candidate weight by ``|sum|``: the masks, broadcast from rank 0 so every rank holds the same.
During the fit only the masked entries move (``variants.py``). Masks are recomputed every task,
kept at 1 bit per entry in checkpoints, and reused, not recomputed, when a fit resumes.
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from typing import Any, Optional

import torch
from torch import nn

from clight.choices import check_choice
from clight.contract import ConfigError, LabelFreeOutputs, RunContext
from clight.data.task import SequenceInfo, Task
from clight.distributed import shards_parameters
from clight.methods.base import ContinualCallback
from clight.methods.selective_update.candidates import DEFAULT_HEADS, Selection, select
from clight.methods.selective_update.importance import summed_gradients
from clight.methods.selective_update.masks import pack_bits, top_k_mask, unpack_bits
from clight.methods.selective_update.variants import VARIANTS, VariantName
from clight.models.sharding import is_dtensor, local, local_part, whole

#: strategies that flatten parameters into shards of their own (clight shards per parameter: ``strategy: sharded``)
FLAT_SHARDING = ("FSDPStrategy", "DeepSpeedStrategy")
# What every SPU instance on a model trains, so one instance never freezes another's parameters.
_CLAIMS: "weakref.WeakKeyDictionary[nn.Module, dict[str, set[str]]]" = weakref.WeakKeyDictionary()


def _sizes_itself_later(module: nn.Module) -> bool:
    """Whether some layers appear only once the model has seen the sequence (``MLP``, ``SmallCNN``)."""
    return any(hasattr(m, "adapt_to") for m in module.modules())


class SPU(ContinualCallback):
    """Selective parameter update: only the top ``fraction`` of each candidate weight trains.

    ``fraction``: share of the entries of every candidate weight tensor that train (paper: 0.1).
    ``importance_batches``: share of the task's training batches the importance is summed over
    (paper: 0.25). ``targets``: regexes over module names of the candidate layers (default: the
    first MLP layer of every transformer block, by model family). ``full``: regexes over parameter
    names trained in full (default: CLIP's visual projection). ``heads``: regex of parameters whose
    trainability the model decides (default ``^heads\\.``: a ``ContinualClassifier``'s heads).
    ``variant``: ``exact`` (masked-out entries bit-identical, clight's default) or
    ``released_code`` (gradient masking only: AdamW's weight decay still shrinks them).
    """

    module_protocol = LabelFreeOutputs

    # masks: rank 0's top-k on every rank, saved whole at 1 bit per entry; in use (with sharded
    # parameters) each rank keeps its shard of them and of the task-start weights
    state_layout = {"mask_task": "replicated", "masks": "replicated", "shapes": "replicated", "records": "replicated"}

    def __init__(
        self,
        fraction: float = 0.1,
        importance_batches: float = 0.25,
        targets: Optional[list[str]] = None,
        full: Optional[list[str]] = None,
        heads: Optional[str] = DEFAULT_HEADS,
        variant: VariantName = "exact",
    ) -> None:
        check_choice("SPU.variant", variant, VariantName)
        for field, value in (("fraction", fraction), ("importance_batches", importance_batches)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"SPU.{field} must be in (0, 1], got {value}")
        self.fraction, self.importance_batches = float(fraction), float(importance_batches)
        self.targets = list(targets) if targets is not None else None
        self.full = list(full) if full is not None else None
        self.heads, self.variant_name = heads, variant
        self.variant = VARIANTS[variant]()
        self.masks: dict[str, torch.Tensor] = {}  # bool, on the CPU; the masks of task ``mask_task``
        self.mask_task = -1
        self.records: list[dict] = []
        self.importance_seconds: dict[int, float] = {}
        self.selection: Optional[Selection] = None
        self._frozen_for: Optional[int] = None
        self._device_masks: dict[str, torch.Tensor] = {}
        self._anchors: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    # -- where it applies ------------------------------------------------------------------------
    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        if getattr(module, "has_adapters", False):
            raise ConfigError(
                "SPU trains a selected share of the pretrained weights themselves; with LoRA those weights are frozen "
                "and only the adapters train, so there is nothing for SPU to select. Set model.lora: null (full "
                "fine-tuning) to use SPU, or drop SPU from `methods`."
            )
        if not _sizes_itself_later(module):
            self._select(module)

    def _select(self, module: nn.Module) -> Selection:
        return select(module, self.targets, self.full, self.heads)

    # -- the sequence ------------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self.selection = self._select(module)

    def on_task_start(self, module: Any, task: Task) -> None:
        """Freeze everything that no SPU instance trains, except the heads (the model decides those)."""
        self.selection = self._select(module)
        claims = _CLAIMS.setdefault(module, {})
        claims[self.state_key] = self.selection.trainable_names
        trainable = set().union(*claims.values())
        heads = set(self.selection.heads)
        for name, p in module.named_parameters():
            if name not in heads:
                p.requires_grad_(name in trainable)
        self._frozen_for = module.current_task

    # -- inside a fit ---------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._release()
        if type(trainer.strategy).__name__ in FLAT_SHARDING:
            raise RuntimeError(
                f"SPU masks parameter tensors entry by entry: use one device, strategy 'ddp' or strategy 'sharded', "
                f"not {type(trainer.strategy).__name__} (it flattens parameters into shards of its own)"
            )
        if self.selection is None or self._frozen_for != pl_module.current_task:
            raise RuntimeError(
                "SPU freezes the model when a task starts: call spu.on_task_start(model, task) before "
                "trainer.fit (the SequenceRunner does)"
            )
        # looked up again: sharding (in the first fit's configure_model) replaces the parameter objects
        self.selection = self._select(pl_module)
        weights = self.selection.masked
        if self.mask_task != pl_module.current_task or set(self.masks) != set(weights):
            self._compute_masks(trainer, pl_module, weights)
        # with sharded parameters each rank keeps its shard of every mask and of every anchor
        self._device_masks = {n: local_part(self.masks[n], p).to(p.device) for n, p in weights.items()}
        if self.variant.keeps_copy:  # on a resumed fit the current weights hold the task-start values outside the mask
            self._anchors = {n: local(p).detach().clone() for n, p in weights.items()}
        self._hooks = [optimizer.register_step_post_hook(self._after_step) for optimizer in trainer.optimizers]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        assert self.selection is not None  # checked in on_train_start
        self.variant.mask_gradients(self.selection.masked, self._device_masks)

    def _after_step(self, optimizer, args, kwargs) -> None:
        assert self.selection is not None
        self.variant.after_step(self.selection.masked, self._device_masks, self._anchors)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._release()

    def _release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._anchors, self._device_masks = [], {}, {}

    # -- importance and masks -------------------------------------------------------------------
    def _compute_masks(self, trainer, module, weights: dict[str, nn.Parameter]) -> None:
        if trainer.datamodule is None:
            raise RuntimeError("SPU sums gradients over the task's training batches: fit with a datamodule")
        from tqdm import tqdm

        started, task = time.perf_counter(), module.current_task
        loader = trainer.datamodule.train_dataloader()
        count = max(1, math.ceil(self.importance_batches * len(loader)))
        tasks = getattr(trainer.datamodule, "training_tasks", (task,))
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        batches = tqdm(
            itertools.islice(loader, count), total=count, desc=f"SPU importance, task {task}", leave=False, disable=not show
        )
        sums, rows = summed_gradients(
            module,
            batches,
            weights,
            tasks,
            trainer.strategy.batch_to_device,
            trainer.precision_plugin.forward_context,
            lockstep=shards_parameters(trainer.strategy),
        )
        packed = {}
        for name, total in sums.items():
            if is_dtensor(total):  # sharded: FSDP has reduced (averaged) the gradients; the top-k needs the whole tensor
                total = whole(total)
            else:
                total = trainer.strategy.reduce(total, reduce_op="sum")
            packed[name] = pack_bits(top_k_mask(total.abs(), self.fraction).cpu())
        packed = trainer.strategy.broadcast(packed, src=0)  # one selection on every rank, whatever topk's tie-breaking
        rows = int(trainer.strategy.reduce(torch.tensor(float(rows), device=module.device), reduce_op="sum").item())
        if rows == 0:
            raise ValueError(
                f"SPU found no rows of task {task} in the first {count} training batches (only replayed or general "
                "samples): raise importance_batches, or mix fewer replayed samples into each batch"
            )
        self.masks = {name: unpack_bits(bits, weights[name].shape) for name, bits in packed.items()}
        self.mask_task = task
        self.records = [r for r in self.records if r["task"] != task] + [self._record(module, task, count, rows)]
        self.importance_seconds[task] = time.perf_counter() - started

    def _record(self, module: nn.Module, task: int, batches: int, rows: int) -> dict:
        assert self.selection is not None
        params = dict(module.named_parameters())
        selected = sum(int(m.sum()) for m in self.masks.values())
        full = sum(p.numel() for p in self.selection.full.values())
        heads = sum(params[n].numel() for n in self.selection.heads if params[n].requires_grad)
        total = sum(p.numel() for p in params.values())
        return {
            "task": task,
            "candidate_tensors": len(self.masks),
            "candidate_entries": sum(m.numel() for m in self.masks.values()),
            "selected_entries": selected,
            "full_update_entries": full,
            "trainable_head_entries": heads,
            "trainable_entries": selected + full + heads,
            "parameters": total,
            "trainable_share": (selected + full + heads) / total,
            "importance_batches": batches,
            "importance_rows": rows,
        }

    def mask_bytes(self) -> dict:
        """Memory of the masks: in use (bool, 1 byte per entry) and in checkpoints (1 bit per entry)."""
        entries = sum(m.numel() for m in self.masks.values())
        return {"bool": entries, "packed": sum(math.ceil(m.numel() / 8) for m in self.masks.values())}

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "mask_task": self.mask_task,
            "masks": {name: pack_bits(mask) for name, mask in self.masks.items()},
            "shapes": {name: list(mask.shape) for name, mask in self.masks.items()},
            "records": [dict(r) for r in self.records],
        }

    def load_state_dict(self, state: dict) -> None:
        self.mask_task = int(state["mask_task"])
        self.masks = {name: unpack_bits(bits, state["shapes"][name]) for name, bits in state["masks"].items()}
        self.records = [dict(r) for r in state["records"]]

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "method": "SPU (Zhang et al., CVPR 2024)",
            "variant": self.variant.name,
            "masking": self.variant.description,
            "fraction": self.fraction,
            "importance_batches": self.importance_batches,
            "importance": "|sum over batches of the gradient of mean_i ||logits_i||^2|, task rows only, gradients zeroed "
            "between batches, eval mode (paper)",
            "candidates": self.selection.source if self.selection is not None else None,
            "targets": self.targets,
            "full": self.full,
            "heads": self.heads,
            "per_task": [dict(r) for r in self.records],
            "trainable_per_task": [r["trainable_entries"] for r in self.records],  # entries SPU lets move, not whole tensors
            "importance_seconds": [[t, s] for t, s in sorted(self.importance_seconds.items())],
            "mask_bytes": self.mask_bytes(),
        }
