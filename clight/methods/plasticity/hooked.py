"""The base of callbacks that watch and replace units: chain discovery, activation hooks,
statistics reduced across ranks once per optimizer step, and checkpointable per-layer state."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import torch

from clight.contract import RunContext
from clight.methods.base import ContinualCallback
from clight.methods.plasticity.chain import Chain, ForwardFn
from clight.methods.plasticity.discovery import default_forward, find_chains
from clight.methods.plasticity.optim_state import optimizer_of
from clight.methods.plasticity.units import check_init, replace_units
from clight.seeding import seeded_generator


class UnitCallback(ContinualCallback):
    """Finds the model's unit chains at the first training batch of every fit (the heads may
    have changed between tasks), hooks each consumer's input (the units' post-activation output,
    the ``h`` that multiplies the outgoing weights) and calls ``after_step`` once per optimizer
    step with the batch statistics averaged over micro-batches and over ranks.

    ``layers``: only these unit layers (names as in ``named_modules()`` of the LightningModule);
    ``chains``: explicit ``[{"unit", "norm", "consumer"}]`` for irregular models; ``exclude``:
    layers to leave alone; ``forward``: how discovery runs the model on a batch; ``seed``:
    of the fresh weights (default: derived from the run's seed, identical on every rank).
    """

    #: distinguishes this method's random stream from other methods' in the same run
    seed_salt: ClassVar[int] = 70

    #: per-layer state kept on the CPU (bookkeeping that must not force a device sync every step)
    cpu_keys: tuple[str, ...] = ()
    #: statistics the hook gathers per unit: "abs" (mean |h|), "mean" (mean h), "centered" (mean |h - m|)
    hook_stats: tuple[str, ...] = ("abs",)

    state_layout = {"step_count": "replicated", "replaced": "replicated", "units": "reduced"}
    unshardable = (
        "it replaces units by whole rows and columns of weights (and their optimizer moments); that is not written "
        "for FSDP's sharded parameters yet"
    )

    def __init__(
        self,
        layers: Optional[Sequence[str]] = None,
        chains: Optional[Sequence[dict]] = None,
        exclude: Sequence[str] = (),
        init: str = "default",
        seed: Optional[int] = None,
        verify_chains: bool = True,
        forward: ForwardFn = default_forward,
    ) -> None:
        super().__init__()
        self.layers = list(layers) if layers is not None else None
        self.declared = [dict(c) for c in chains] if chains else None
        self.exclude = list(exclude)
        self.init = check_init(init)
        self.seed_option = seed
        self.seed = int(seed) if seed is not None else 0
        self.verify_chains = verify_chains
        self.forward = forward
        self.chains: Optional[list[Chain]] = None
        self.skipped: dict[str, str] = {}
        self.unit_state: dict[str, dict[str, torch.Tensor]] = {}
        self.step_count = 0
        self.replaced: dict[str, int] = {}
        self._handles: list = []
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._micro: dict[str, int] = {}
        self._last_global_step = 0
        self._in_step = False

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        if self.seed_option is None:
            self.seed = context.seed_for(self.seed_salt)

    # -- per-layer state ----------------------------------------------------------------------
    def new_layer_state(self, chain: Chain, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def _ensure_state(self, chain: Chain) -> None:
        device = chain.unit.weight.device
        state = self.unit_state.get(chain.unit_name)
        fresh = self.new_layer_state(chain, device)
        if state is None or any(k not in state or state[k].shape != v.shape for k, v in fresh.items()):
            self.unit_state[chain.unit_name] = fresh
        else:
            self.unit_state[chain.unit_name] = {k: v if k in self.cpu_keys else v.to(device) for k, v in state.items()}
        self.replaced.setdefault(chain.unit_name, 0)

    # -- discovery and hooks ------------------------------------------------------------------
    def discover(self, pl_module: torch.nn.Module, batch: Any) -> list[Chain]:
        self.chains, self.skipped = find_chains(
            pl_module, batch, self.forward, self.layers, self.declared, self.exclude, self.verify_chains
        )
        for chain in self.chains:
            self._ensure_state(chain)
        return self.chains

    def _attach(self) -> None:
        self._detach()
        for chain in self.chains or []:
            self._handles.append(chain.consumer.register_forward_pre_hook(self._make_hook(chain)))

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._sums, self._micro = {}, {}

    def _make_hook(self, chain: Chain):
        name = chain.unit_name

        def hook(module, args):
            # only inside a training step (a model left in eval mode still trains under Lightning >= 2.2)
            if not self._in_step or not torch.is_grad_enabled() or not self.wants_statistics():
                return
            with torch.no_grad():
                h = chain.unit_activations(args[0].detach())
                dims = (0, 2, 3) if h.dim() == 4 else tuple(range(h.dim() - 1))
                stats = self.batch_statistics(chain, h, dims)
            sums = self._sums.setdefault(name, {})
            for k, v in stats.items():
                sums[k] = sums[k] + v if k in sums else v
            self._micro[name] = self._micro.get(name, 0) + 1

        return hook

    def wants_statistics(self) -> bool:
        """Whether the coming optimizer step needs activation statistics (saves work when not)."""
        return True

    def batch_statistics(self, chain: Chain, h: torch.Tensor, dims: tuple) -> dict[str, torch.Tensor]:
        out = {}
        if "abs" in self.hook_stats:
            out["abs"] = h.abs().mean(dim=dims)
        if "mean" in self.hook_stats or "centered" in self.hook_stats:
            out["mean"] = h.mean(dim=dims)
        if "centered" in self.hook_stats:
            ref = self.reference_mean(chain)
            shape = (1, -1, 1, 1) if h.dim() == 4 else (1,) * (h.dim() - 1) + (-1,)
            out["centered"] = (h - ref.view(shape)).abs().mean(dim=dims)
        return out

    def reference_mean(self, chain: Chain) -> torch.Tensor:  # pragma: no cover - only for "centered"
        raise NotImplementedError

    def _reduced_stats(self, trainer) -> Optional[dict[str, dict[str, torch.Tensor]]]:
        """This step's statistics per layer, averaged over micro-batches, then over ranks."""
        if not self._sums or self.chains is None:
            return None
        layout, parts = [], []
        for chain in self.chains:
            sums = self._sums.get(chain.unit_name)
            if sums is None:
                continue
            for k in sorted(sums):
                layout.append((chain.unit_name, k, sums[k].numel()))
                parts.append(sums[k].float() / self._micro[chain.unit_name])
        self._sums, self._micro = {}, {}
        flat = torch.cat(parts)
        if trainer is not None and trainer.world_size > 1:
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
        out: dict[str, dict[str, torch.Tensor]] = {}
        offset = 0
        for name, k, n in layout:
            out.setdefault(name, {})[k] = flat[offset : offset + n]
            offset += n
        return out

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.chains = None
        self._last_global_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.chains is None:
            self.discover(pl_module, batch)
            self._attach()
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step = False
        if trainer.global_step == self._last_global_step:
            return  # gradients are being accumulated: no optimizer step yet
        self._last_global_step = trainer.global_step
        self.step_count += 1
        stats = self._reduced_stats(trainer)
        if stats is None:
            return
        changed = self.after_step(stats, optimizer_of(trainer))
        if changed and trainer.logger is not None:
            pl_module.log(f"{self.log_prefix}/replaced", float(changed), on_step=True, on_epoch=False, reduce_fx="sum")

    def on_train_end(self, trainer, pl_module) -> None:
        self._detach()

    log_prefix = "plasticity"

    def after_step(self, stats: dict[str, dict[str, torch.Tensor]], optimizer) -> int:  # pragma: no cover - interface
        """Act on this step's statistics; return how many units were replaced."""
        raise NotImplementedError

    # -- replacement ----------------------------------------------------------------------------
    def replace(self, chain: Chain, k: int, index: torch.Tensor, optimizer, mean_activation=None) -> None:
        index = index.sort().values
        generator = seeded_generator(self.seed, self.step_count, k)
        replace_units(chain, index, generator, optimizer, self.init, mean_activation)
        self.replaced[chain.unit_name] = self.replaced.get(chain.unit_name, 0) + int(index.numel())

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "replaced": dict(self.replaced),
            "units": {name: {k: v.detach().cpu().clone() for k, v in st.items()} for name, st in self.unit_state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state.get("step_count", 0))
        self.replaced = {k: int(v) for k, v in state.get("replaced", {}).items()}
        self.unit_state = {name: dict(st) for name, st in state.get("units", {}).items()}
        if self.chains is not None:
            for chain in self.chains:
                self._ensure_state(chain)

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "init": self.init,
                "seed": self.seed if self.seed_option is not None else f"{self.seed} (derived from the run's seed)",
                "layers": [c.describe() for c in self.chains] if self.chains else self.layers,
                "declared_chains": self.declared,
                "skipped_layers": dict(self.skipped),
                "replaced": dict(self.replaced),
            }
        )
        return info
