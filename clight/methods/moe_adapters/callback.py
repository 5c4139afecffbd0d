"""MoEAdapters: the method as a callback (Yu et al., CVPR 2024).

``setup_sequence`` freezes the model and wraps its transformer blocks with the experts and one
router per task (all created up front, so a checkpoint loads into a fresh model); between fits it
decides what trains (``on_task_start``), freezes the experts the finished task used most and fits
that task's DDAS autoencoder (``on_task_end``). Inside a fit every sample goes through its own
task's router; outside a fit (evaluation, perplexity, any forward in between) DDAS routes each
sample, so no task id is needed.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Literal, Optional, Sequence, cast

import torch

from clight.choices import check_choice
from clight.contract import ConfigError, RunContext
from clight.data.task import SequenceInfo, Task
from clight.distributed import broadcast_from_rank_zero, shards_parameters, sum_across_ranks
from clight.lightning_internals import finds_unused_parameters
from clight.methods.base import ContinualCallback
from clight.methods.moe_adapters.ddas import DDAS, FeatureTransform, Threshold
from clight.methods.moe_adapters.follower import install_follower
from clight.methods.moe_adapters.injection import choose_blocks, inject, moe_blocks
from clight.methods.moe_adapters.layer import MoELayer, RouteState
from clight.methods.moe_adapters.routing import NetworkRouting, install_routing
from clight.methods.moe_adapters.shares import RoutingShares, frozen_features_of
from clight.methods.moe_adapters.targets import Target, resolve_target

Tap = Literal["mlp", "block"]
SALT = 0x4D6F45  # "MoE": the run-seed salt of everything this method draws


class MoEAdapters(ContinualCallback):
    """Mixture-of-experts adapters with incremental activate-freeze and DDAS routing.

    Experts: ``num_experts`` bottleneck adapters (d -> ``bottleneck`` -> d, up-projection 0 at
    start, output times ``scale``, ``dropout`` inside) per block, shared by all tasks; one
    ``top_k`` router per task (noisy while training, ``noisy_gating``). ``blocks``: regexes of the
    blocks to wrap (all by default). ``tap``: the experts read the residual stream entering each
    block's MLP (``mlp``, the released code's) or the block's input (``block``). After each task
    the ``freeze_top`` experts its router picked most in every block are frozen for good, and
    its router too. ``balance_weight``: the load-balancing loss's weight (0: off, as in the
    released code, which computes it and never adds it). DDAS: an autoencoder (``ae_*``) per task
    on the frozen model's features of ``ddas_samples`` training samples (all by default), and a
    threshold (``threshold``, ``threshold_quantile``, ``calibration_fraction``; see ``DDAS``).
    """

    # experts and routers are model parameters (sharded with their block); DDAS stays whole
    state_layout = {
        "usage": "reduced",
        "history": "replicated",
        "routing_shares": "replicated",
    }  # every rank routes every test sample

    def __init__(
        self,
        num_experts: int = 22,
        top_k: int = 2,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        blocks: Optional[Sequence[str]] = None,
        tap: Tap = "mlp",
        noisy_gating: bool = True,
        freeze_top: int = 2,
        balance_weight: float = 0.0,
        ae_code_dims: int = 100,
        ae_steps: int = 300,
        ae_batch_size: int = 64,
        ae_lr: float = 0.01,
        ae_weight_decay: float = 1e-4,
        feature_transform: FeatureTransform = "standardize",
        threshold: Threshold = "auto",
        threshold_quantile: float = 0.99,
        calibration_fraction: float = 0.25,
        ddas_samples: Optional[int] = None,
        feature_batch_size: int = 32,
    ) -> None:
        check_choice("MoEAdapters.tap", tap, Tap)
        check_choice("MoEAdapters.feature_transform", feature_transform, FeatureTransform)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"MoEAdapters.top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if freeze_top > num_experts:
            raise ValueError(
                f"MoEAdapters.freeze_top={freeze_top} is more than num_experts ({num_experts}): every expert would be frozen "
                f"after the first task. Set freeze_top to at most {num_experts} (the default freezes 2 of 22, as the released code does)."
            )
        for name, value in (
            ("bottleneck", bottleneck),
            ("ae_code_dims", ae_code_dims),
            ("ae_steps", ae_steps),
            ("ae_batch_size", ae_batch_size),
            ("feature_batch_size", feature_batch_size),
        ):
            if value < 1:
                raise ValueError(f"MoEAdapters.{name} must be a positive integer, got {value}")
        if freeze_top < 0 or balance_weight < 0 or not 0 <= dropout < 1 or (ddas_samples is not None and ddas_samples < 1):
            raise ValueError(
                "MoEAdapters: freeze_top and balance_weight must be >= 0, dropout in [0, 1), ddas_samples >= 1 or null"
            )
        self.layer_kwargs = dict(
            num_experts=num_experts, top_k=top_k, bottleneck=bottleneck, scale=scale, dropout=dropout, noisy_gating=noisy_gating
        )
        self.blocks, self.tap, self.freeze_top, self.balance_weight = blocks, tap, freeze_top, balance_weight
        self.ddas_kwargs: dict[str, Any] = dict(
            code_dims=ae_code_dims,
            transform=feature_transform,
            threshold=threshold,
            threshold_quantile=threshold_quantile,
            calibration_fraction=calibration_fraction,
        )
        DDAS(1, 1, **self.ddas_kwargs)  # checks the DDAS options now
        self.fit_kwargs: dict[str, Any] = dict(steps=ae_steps, batch_size=ae_batch_size, lr=ae_lr, weight_decay=ae_weight_decay)
        self.ddas_samples, self.feature_batch_size = ddas_samples, feature_batch_size
        self.state, self.follower_state = RouteState(), RouteState()
        self.layers: dict[str, MoELayer] = {}
        self.target: Optional[Target] = None
        self.routing: Optional[NetworkRouting] = None
        self.selector: Optional[DDAS] = None
        self.key = "0"
        self.history: list[dict] = []
        self.shares = RoutingShares()
        self._datamodule: Any = None
        self._context = RunContext()

    # -- where it applies -------------------------------------------------------------------------
    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        target = resolve_target(module, type(self).__name__)
        choose_blocks(module, self._networks(module, target), self.blocks, type(self).__name__)

    @staticmethod
    def _networks(module: Any, target: Target) -> list:
        follower = target.follower(module)
        return [target.network(module)] + ([follower] if follower is not None else [])

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and trainer.world_size > 1 and not finds_unused_parameters(strategy):
            raise ConfigError(
                "MoEAdapters sends each sample to its top-k experts, so in a step some trainable experts get no "
                "gradient: under DDP set trainer.strategy to ddp_find_unused_parameters_true"
            )

    # -- the sequence -----------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._datamodule, self._context = datamodule, context
        self.target = resolve_target(module, type(self).__name__)
        networks = self._networks(module, self.target)
        chosen = choose_blocks(module, networks, self.blocks, type(self).__name__)
        self.target.pretrained(module).requires_grad_(False)
        self.routing = install_routing(networks[0], self.target)
        self.key = str(len(self.routing.states))
        generator, num_tasks = context.generator(SALT, int(self.key)), datamodule.num_tasks
        new = inject(
            networks[0], chosen[0], num_tasks, self.state, self.target.router_input, self.tap, generator, **self.layer_kwargs
        )
        if len(networks) > 1:  # the follower's routers read its first token (CLIP's text start token, as the released code)
            install_follower(networks[1], self.routing).add(self.key, self.follower_state)
            new += inject(
                networks[1], chosen[1], num_tasks, self.follower_state, "first", self.tap, generator, **self.layer_kwargs
            )
        self.layers = {name: block.moe for name, block in moe_blocks(module).items() if any(block.moe is m for m in new)}
        device = next(networks[0].parameters()).device
        self.selector = DDAS(num_tasks, self.target.feature_dim(module), **self.ddas_kwargs).to(device)
        self.routing.add(self.key, self.selector, self.state)
        if self.balance_weight > 0:
            for layer in self.layers.values():
                layer.track_balance = True
            module.add_loss_term(f"moe_balance{self._state_key_suffix}", self._balance_term)

    def on_task_start(self, module: Any, task: Task) -> None:
        for layer in self.layers.values():
            layer.set_trainable(task.index)
            layer.usage, layer.step_usage = torch.zeros_like(layer.usage), torch.zeros_like(layer.step_usage)

    def on_task_end(self, module: Any, task: Task) -> None:
        self._leave_fit()
        already = sum(int(layer.frozen.sum()) for layer in self.layers.values())
        frozen = self._freeze_most_used()
        fitted = self._fit_selector(module, task)
        for layer in self.layers.values():  # frozen at once, so a method acting before the next task's
            layer.set_trainable(None)  # start (e.g. ShrinkPerturb listed first) cannot touch what is frozen
        total = sum(int(layer.frozen.sum()) for layer in self.layers.values())
        self.shares.after_task.append(self._measure_routing(module))
        self.history.append(
            # frozen_experts: the task's top picks per block, some of which an earlier task may have frozen
            {"task": task.index, "frozen_experts": frozen, "newly_frozen": total - already, "frozen_total": total, **fitted}
        )

    # -- inside a fit -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        for state in (self.state, self.follower_state):
            state.fit_task = state.count_task = int(pl_module.current_task)
        for layer in self.layers.values():
            layer.lockstep = shards_parameters(trainer.strategy)
            layer.step_picked.zero_()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Sharded: an expert no row picked on any rank has no gradient, as on one device (it ran
        on no rows only so that every rank reduces the same set)."""
        layers = [layer for layer in self.layers.values() if layer.lockstep]
        if not layers:
            return
        picked = sum_across_ranks(torch.stack([layer.step_picked.float() for layer in layers]))
        for layer, row in zip(layers, picked):
            for e in (row == 0).nonzero().flatten().tolist():
                for p in layer.experts[e].parameters():
                    p.grad = None
            layer.step_picked.zero_()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        ids = batch.get("task_id") if isinstance(batch, dict) else None
        if torch.is_tensor(ids) and ids.dim() == 1:  # replayed samples go through their own task's router
            assert self.state.fit_task is not None, "set in on_fit_start"
            self.state.batch_rows = torch.where(ids >= 0, ids, torch.full_like(ids, self.state.fit_task)).long()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Sum the step's expert picks over ranks (one small all-reduce), so the counts, and the
        checkpoints rank 0 writes of them, are the same on every rank."""
        self.state.batch_rows = None
        layers = list(self.layers.values())
        steps = sum_across_ranks(torch.stack([layer.step_usage.to(layers[0].step_usage.device) for layer in layers]))
        for layer, counts in zip(layers, steps):
            layer.merge_usage(counts)
            layer.balance_loss = None

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._leave_fit()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._leave_fit()

    def _leave_fit(self) -> None:
        for state in (self.state, self.follower_state):
            state.fit_task = state.count_task = state.batch_rows = None
        for layer in self.layers.values():
            layer.lockstep = False

    def _balance_term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        losses = [layer.balance_loss for layer in self.layers.values() if layer.balance_loss is not None]
        for layer in self.layers.values():
            layer.balance_loss = None
        return self.balance_weight * torch.stack(losses).sum() if losses else outputs["logits"].sum() * 0.0

    # -- between fits -----------------------------------------------------------------------------
    def _freeze_most_used(self) -> dict[str, list[int]]:
        """Freeze, in every block, the ``freeze_top`` experts picked most for the task just trained."""
        return {name: layer.freeze_most_used(self.freeze_top) for name, layer in self.layers.items()}

    def task_features(self, module: Any, task: Task) -> torch.Tensor:
        """The frozen model's DDAS features ``[N, d]`` of task ``task``'s training samples."""
        dataset = task.train
        assert self.target is not None and self.routing is not None, "setup_sequence comes first"
        if self.ddas_samples is not None and self.ddas_samples < len(cast(Sized, dataset)):
            rows = torch.randperm(
                len(cast(Sized, dataset)), generator=self._context.generator(SALT, int(self.key), 2, task.index)
            )
            dataset = torch.utils.data.Subset(dataset, rows[: self.ddas_samples].tolist())
        return self._features_of(module, dataset, f"DDAS features, task {task.index}")

    def _features_of(self, module: Any, dataset: Any, desc: str) -> torch.Tensor:
        collate = self._datamodule.train_collate_fn()
        features = frozen_features_of(module, dataset, self.target, self.routing, collate, self.feature_batch_size, desc)
        return features.to(module.device)

    def _measure_routing(self, module: Any) -> list[list[float]]:
        """Where DDAS now sends every task's test samples (rank 0's figures on every rank)."""
        tasks = self._datamodule.tasks
        rows = self.shares.measure(
            self.selector, tasks, lambda task: self._features_of(module, task.test, f"DDAS routing, task {task.index} test")
        )
        return broadcast_from_rank_zero(rows)

    def _fit_selector(self, module: Any, task: Task) -> dict:
        """Fit the task's autoencoder (every rank alike, seeded from the run), then take rank 0's
        selector and frozen sets on every rank, so they are identical even where kernels are not."""
        features = self.task_features(module, task)
        generator = self._context.generator(SALT, int(self.key), 1, task.index)
        assert self.selector is not None, "setup_sequence comes first"
        fitted = self.selector.fit(task.index, features, generator, **self.fit_kwargs)
        shared = broadcast_from_rank_zero(
            {
                "selector": {k: v.cpu() for k, v in self.selector.state_dict().items()},
                "frozen": {name: layer.frozen.cpu() for name, layer in self.layers.items()},
                "fitted": fitted,
            }
        )
        self.selector.load_state_dict(shared["selector"])
        for name, layer in self.layers.items():
            layer.frozen.copy_(shared["frozen"][name])
        return shared["fitted"]

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "usage": {name: layer.usage.cpu().clone() for name, layer in self.layers.items()},
            "history": list(self.history),
            "routing_shares": list(self.shares.after_task),
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.shares.after_task = list(state.get("routing_shares", []))
        for name, usage in state.get("usage", {}).items():
            if name in self.layers:
                self.layers[name].usage = usage.clone()

    def describe(self) -> dict:
        per_token = self.target is not None and self.target.router_input == "token"
        return {
            "class": type(self).__name__,
            "method": "MoE adapters with DDAS (Yu et al., CVPR 2024)",
            "target": self.target.describe() if self.target is not None else None,
            "blocks": list(self.layers),
            **self.layer_kwargs,
            "tap": "the residual stream entering each block's MLP, parallel to it (released code)"
            if self.tap == "mlp"
            else "each block's input, added to its output",
            "router": "each token on its own (causal LM)" if per_token else "one route per sample, on its class token (paper)",
            "gating": "noisy top-k while training (released code)"
            if self.layer_kwargs["noisy_gating"]
            else "top-k without noise",
            "activate_freeze": f"top {self.freeze_top} experts per block by router picks, after each task; the task's router too",
            "balance_loss": f"weight {self.balance_weight}"
            if self.balance_weight > 0
            else "off (the released code computes it and never adds it to the loss)",
            "ddas": {
                "routing": "per sample (paper); the released code picks one task per batch",
                "features": "the frozen model's own (clight); the released code uses ImageNet AlexNet conv5 features",
                **(self.selector.describe() if self.selector is not None else {}),
                **self.fit_kwargs,
                "samples_per_task": self.ddas_samples,
            },
            "history": self.history,
            "routing_shares": self.shares.describe(len(self.selector.thresholds) if self.selector is not None else 0),
        }
