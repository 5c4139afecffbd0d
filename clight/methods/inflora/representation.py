"""The input representation of LoRA layers over a task: per layer, the mean of ``x x^T`` over the
real tokens (``attention_mask``) of the task's training samples, the matrix InfLoRA designs
adapters from and updates its protected subspaces with.

Layers fed the same tensor (q, k and v read one normed hidden state) share one matrix: it is
computed once per batch and the group is named by its first layer (the leader). Under DDP each
rank reads every ``world``-th sample and the sums and counts are added over the ranks.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from lightning.fabric.utilities import move_data_to_device
from torch import nn

from clight.distributed import world_size


class _Collector:
    """Forward pre-hooks summing ``x^T x`` of every distinct layer input of a batch (float64)."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.leaders: dict[str, str] = {}
        self.mask: Optional[torch.Tensor] = None
        self._batch: dict[int, tuple[str, torch.Tensor]] = {}  # id(input) -> (leader, the input kept alive)
        self._handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str) -> Callable:
        def hook(layer: nn.Module, args: tuple) -> None:
            x = args[0]
            seen = self._batch.get(id(x))
            if seen is not None:
                leader = seen[0]
            else:
                leader = name
                self._batch[id(x)] = (name, x)
                tokens = x[self.mask] if self.mask is not None and x.shape[:-1] == self.mask.shape else x.reshape(-1, x.shape[-1])
                tokens = tokens.float()
                product = (tokens.T @ tokens).double()
                self.sums[name] = self.sums[name] + product if name in self.sums else product
            if self.leaders.setdefault(name, leader) != leader:
                raise RuntimeError(f"LoRA layer {name} read another layer's input in one batch and not in another")

        return hook

    def next_batch(self, mask: Optional[torch.Tensor]) -> None:
        self._batch.clear()
        self.mask = mask.bool() if mask is not None else None

    def close(self) -> None:
        self._batch.clear()
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def input_covariances(
    module: Any, layers: dict[str, nn.Module], batches: Iterable[dict], token_mask: Callable[[dict], Optional[torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
    """Per leader layer, ``mean x x^T`` (float64, on the CPU) over the tokens of ``batches``, summed
    over the ranks; each layer's leader; the number of tokens read (all ranks). ``module`` is
    called on every batch in eval mode."""
    collector = _Collector(layers)
    was_training = module.training
    module.eval()
    tokens = 0
    try:
        for batch in batches:
            batch = move_data_to_device(batch, module.device)
            mask = token_mask(batch)
            collector.next_batch(mask)
            module(batch["input_ids"], batch["attention_mask"])
            tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    finally:
        collector.close()
        module.train(was_training)
    if not collector.sums:
        raise RuntimeError("no sample reached the LoRA layers: the task's training set is empty")
    names = sorted(collector.sums)
    sums = [collector.sums[n] for n in names]
    if world_size() > 1:
        flat = torch.cat(
            [s.flatten() for s in sums] + [torch.tensor([float(tokens)], dtype=torch.float64, device=sums[0].device)]
        )
        torch.distributed.all_reduce(flat)
        tokens = int(flat[-1].item())
        sums = [chunk.view_as(s) for chunk, s in zip(flat[:-1].split([s.numel() for s in sums]), sums)]
    covariances = {n: (s / max(tokens, 1)).cpu() for n, s in zip(names, sums)}
    return covariances, dict(collector.leaders), tokens
