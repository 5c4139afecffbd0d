"""Sums over samples of the absolute per-sample gradients of linear layers, from one backward pass.

For ``y = W a + b`` applied to one input vector per sample, sample n's gradient of W is the outer
product ``delta_n a_n^T`` (``delta_n`` the gradient with respect to y_n), so
``sum_n |g_n(W)| = |delta|^T |a|`` and ``sum_n |g_n(b)| = sum_n |delta_n|``: a matrix product per
layer instead of one gradient per sample. This holds when the objective is a sum of per-sample
terms and no sample's output depends on another sample (a model in eval mode). Layers whose input
has more than one vector per sample (tokens) are left to the caller.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from lightning.pytorch import LightningModule
from torch import nn

from clight.methods.regularization.fisher import fetch_samples


def abs_gradient_sums(
    module: LightningModule,
    dataset: Any,
    indices: Sequence[int],
    objective_sum: Callable[[Any, dict], torch.Tensor],
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """``sum over the samples at indices of |d objective / d theta|`` for the weight and bias of
    every trainable ``nn.Linear`` that reads one vector per sample (model in eval mode);
    ``objective_sum(module, batch)`` must be the sum of the samples' objectives."""
    layers = {name: layer for name, layer in module.named_modules() if type(layer) is nn.Linear and layer.weight.requires_grad}
    owners: dict[int, list[str]] = {}
    for name, layer in layers.items():
        owners.setdefault(id(layer.weight), []).append(name)
    flat = {name for name in layers if len(owners[id(layers[name].weight)]) == 1}  # tied weights: left to the caller
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    calls: dict[str, int] = {}

    def record(name: str, inputs: tuple, output: torch.Tensor) -> None:
        seen[name] = (inputs[0].detach(), output)
        calls[name] = calls.get(name, 0) + 1

    hooks = [layer.register_forward_hook(lambda _, i, o, name=name: record(name, i, o)) for name, layer in layers.items()]
    totals: dict[str, torch.Tensor] = {}
    was_training = module.training
    module.eval()
    try:
        for start in range(0, len(indices), chunk):
            seen.clear()
            calls.clear()
            value = objective_sum(module, fetch_samples(dataset, list(indices[start : start + chunk]), module.device))
            flat -= {n for n in seen if seen[n][0].dim() != 2 or calls[n] > 1}  # tokens, or a layer used twice
            names = [n for n in seen if n in flat]
            deltas = torch.autograd.grad(value, [seen[n][1] for n in names], allow_unused=True)
            for name, delta in zip(names, deltas):
                if delta is not None:
                    totals[f"{name}.weight"] = totals.get(f"{name}.weight", 0) + delta.abs().t() @ seen[name][0].abs()
                    if layers[name].bias is not None:
                        totals[f"{name}.bias"] = totals.get(f"{name}.bias", 0) + delta.abs().sum(0)
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    sums = {}
    # in module order, never the set's (string hashes differ between processes): ranks reduce these in turn
    for name in (n for n in layers if n in flat):  # a layer no sample reached has no gradient: zeros
        for kind in ("weight", "bias"):
            param = getattr(layers[name], kind)
            if param is not None:
                sums[f"{name}.{kind}"] = totals.get(f"{name}.{kind}", torch.zeros_like(param)).detach()
    return sums
