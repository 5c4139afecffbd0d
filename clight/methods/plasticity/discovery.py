"""Discovery of the chains in a model.

Discovery records one forward pass with hooks on every leaf module, following each unit layer's
output tensor through per-unit pass-through modules (a norm, activations, dropout, pooling) to
the one ``Linear``/``Conv2d`` that takes it as input. A conv map may reach a ``Linear`` through
an ``nn.Flatten`` (the last conv of a CNN before its fully connected layers): one unit (channel)
is then a contiguous block of ``H*W`` of the Linear's input columns, in flatten's order. A
tensor changed in place between two modules (a residual ``x += shortcut``) shows in its version
counter and ends the chain. Other plain functions (a residual addition, a concatenation,
indexing) are invisible to module hooks, so every candidate is then *verified*: with the
consumer's columns zeroed, perturbing the units must leave the output unchanged. Candidates
that fail (e.g. a ResNet's stem, whose output also feeds a shortcut) are skipped with the reason
recorded; layers the user names explicitly must pass or discovery raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from clight.methods.plasticity.chain import ELEMENTWISE, NORMS, SPATIAL, UNIT_LAYERS, Chain, ChainError, ForwardFn, declared_chain
from clight.models.module import ContinualModule


def default_forward(module: nn.Module, batch: Any) -> Any:
    """What discovery runs: ``task_loss`` for clight modules, else ``module(batch['input'])``."""
    if isinstance(module, ContinualModule) and isinstance(batch, dict):
        loss, outputs = module.task_loss(batch)
        return (loss, outputs.get("logits")) if isinstance(outputs, dict) else loss
    if isinstance(batch, dict):
        return module(batch["input"])
    if isinstance(batch, (tuple, list)):
        return module(batch[0])
    return module(batch)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _same_outputs(a: Any, b: Any) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=1e-5, atol=1e-6, equal_nan=True) for x, y in zip(ta, tb)
    )


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Optional[torch.Tensor]
    output: Optional[torch.Tensor]
    # version counters (bumped by every in-place change) of the input as the module got it and of
    # the output as it left: a difference between a producer and its user means a plain function
    # (e.g. a residual `x += shortcut`) changed the tensor in place in between
    input_version: Optional[int] = None
    output_version: Optional[int] = None


def _version(t: Any) -> Optional[int]:
    try:
        return t._version if isinstance(t, torch.Tensor) else None
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def _record(model: nn.Module, forward: ForwardFn, batch: Any) -> list[_Call]:
    calls: list[_Call] = []
    handles = []
    input_versions: dict[str, Optional[int]] = {}
    for name, m in model.named_modules():
        if len(list(m.children())) > 0:
            continue

        def pre_hook(mod, args, name=name):
            input_versions[name] = _version(args[0]) if args else None

        def hook(mod, args, out, name=name):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            y = out if isinstance(out, torch.Tensor) else None
            calls.append(_Call(name, mod, x, y, input_versions.pop(name, None), _version(y)))

        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(hook))
    try:
        forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return calls


def _follow(calls: list[_Call], start: int, conv: bool) -> tuple[Optional[int], Optional[int], list[str], str, int]:
    """From the unit layer's call ``start``, walk to its consumer. Returns (norm call, consumer
    call, path, reason-if-none, consumer columns per unit)."""
    tensor = calls[start].output
    norm_at: Optional[int] = None
    path: list[str] = []
    if tensor is None:
        return None, None, path, f"{calls[start].name} returns no single tensor", 0
    block = 0  # set by a Flatten: positions per channel
    i = start
    while True:
        users = [j for j in range(i + 1, len(calls)) if calls[j].input is tensor]
        if not users:
            return None, None, path, "its output reaches no module (used by a plain function, or it is an output layer)", 0
        j = users[0]
        in_place = calls[j].output is tensor  # in-place activation or Identity: later users see the same object
        if len(users) > 1 and not in_place:
            return None, None, path, f"its output feeds several modules: {[calls[j].name for j in users]}", 0
        produced, used = calls[i].output_version, calls[j].input_version
        if produced is not None and used is not None and produced != used:
            return (
                None,
                None,
                path,
                (
                    f"{calls[i].name}'s output is changed in place (e.g. a residual `x += shortcut`) before {calls[j].name} reads it"
                ),
                0,
            )
        m = calls[j].module
        if isinstance(m, UNIT_LAYERS):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                return None, None, path, f"consumer {calls[j].name} is a grouped convolution", 0
            if conv and isinstance(m, nn.Linear) and not block:
                return (
                    None,
                    None,
                    path,
                    (
                        f"a conv output reaches Linear {calls[j].name} without an nn.Flatten (a Linear over the last axis of "
                        "a map does not read whole channels)"
                    ),
                    0,
                )
            if not conv and isinstance(m, nn.Conv2d):
                return None, None, path, f"a Linear output reaches Conv2d {calls[j].name}", 0
            return norm_at, j, path, "", max(block, 1)
        if isinstance(m, NORMS):
            if norm_at is not None or path:
                return None, None, path, f"norm {calls[j].name} is not directly after the unit layer", 0
            if isinstance(m, nn.LayerNorm) and (conv or len(m.normalized_shape) != 1):
                return None, None, path, f"LayerNorm {calls[j].name} does not normalise over the units only", 0
            norm_at = j
        elif conv and isinstance(m, nn.Flatten):
            if block or tensor.dim() != 4 or m.start_dim != 1 or m.end_dim not in (-1, 3):
                return None, None, path, f"Flatten {calls[j].name} does not turn one [N, C, H, W] map into [N, C*H*W]", 0
            block = tensor.shape[2] * tensor.shape[3]
        elif isinstance(m, ELEMENTWISE) or (conv and not block and isinstance(m, SPATIAL)):
            pass
        else:
            return (
                None,
                None,
                path,
                f"it passes through {type(m).__name__} {calls[j].name}, which clight does not treat as per-unit",
                0,
            )
        path.append(calls[j].name)
        tensor = calls[j].output
        if tensor is None:
            return None, None, path, f"{calls[j].name} returns no single tensor", 0
        i = j


def _verify(model: nn.Module, forward: ForwardFn, batch: Any, chain: Chain) -> bool:
    """Zero the consumer's columns, perturb the units: the output must not move."""
    probe = chain.norm if isinstance(chain.norm, nn.LayerNorm) else chain.unit  # a LayerNorm mixes units: perturb after it
    saved = chain.consumer.weight.detach().clone()
    # a zero-initialised norm scale (timm's zero_init_last) would hide every path: use 1 meanwhile
    norm_weight = getattr(chain.norm, "weight", None)
    saved_norm = norm_weight.detach().clone() if norm_weight is not None else None
    handle = None
    try:
        with torch.no_grad():
            chain.consumer.weight.zero_()
            if norm_weight is not None:
                norm_weight.fill_(1)
            before = forward(model, batch)

            def perturb(mod, args, out):
                return out + 1.0 + torch.arange(out.numel(), device=out.device, dtype=out.dtype).reshape(out.shape) % 7

            handle = probe.register_forward_hook(perturb)
            after = forward(model, batch)
    finally:
        if handle is not None:
            handle.remove()
        with torch.no_grad():
            chain.consumer.weight.copy_(saved)
            if norm_weight is not None:
                norm_weight.copy_(saved_norm)
    if not any(torch.isfinite(t).any() for t in _tensors(before)):
        raise ChainError(
            "chain verification needs a finite model output on the discovery batch (class-incremental heads mask "
            "unseen classes: call the model's on_task_start first), or pass verify_chains=False"
        )
    return _same_outputs(before, after)


def _chains_in(calls: list[_Call], layers: Optional[Sequence[str]], exclude: Sequence[str]) -> tuple[list[Chain], dict[str, str]]:
    """The chains a recorded forward shows, and why each other unit layer is not one."""
    chains: list[Chain] = []
    skipped: dict[str, str] = {}
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    wanted = set(layers) if layers is not None else None
    if wanted is not None:
        missing = wanted - {c.name for c in calls if isinstance(c.module, UNIT_LAYERS)}
        if missing:
            raise ChainError(f"layers {sorted(missing)} are not Linear/Conv2d layers used in the forward pass")
    for k, c in enumerate(calls):
        if not isinstance(c.module, UNIT_LAYERS) or c.name in exclude:
            continue
        if wanted is not None and c.name not in wanted:
            continue
        if not any(p.requires_grad for p in c.module.parameters()):
            skipped[c.name] = "frozen"
            continue
        if counts[c.name] > 1:
            skipped[c.name] = "called more than once per forward pass (shared weights)"
            continue
        norm_at, cons_at, path, why, block = _follow(calls, k, isinstance(c.module, nn.Conv2d))
        if cons_at is None:
            skipped[c.name] = why
            continue
        cons = calls[cons_at]
        if counts[cons.name] > 1:
            skipped[c.name] = f"consumer {cons.name} is called more than once per forward pass"
            continue
        norm = calls[norm_at] if norm_at is not None else None
        norm_module = norm.module if norm else None
        # _follow stops at a unit layer and takes a norm only
        assert isinstance(cons.module, UNIT_LAYERS) and (norm_module is None or isinstance(norm_module, NORMS))
        chains.append(
            Chain(
                c.name,
                c.module,
                cons.name,
                cons.module,
                norm.name if norm else None,
                norm_module,
                path,
                block,
            )
        )
    return chains, skipped


def record_chains(
    model: nn.Module, batch: Any, forward: ForwardFn = default_forward
) -> tuple[list[Chain], dict[str, torch.Tensor]]:
    """One forward of ``model`` on ``batch``, recorded in the mode and grad state the caller set:
    the chains it shows (every trainable unit layer tried, unverified) and each chain's units'
    activations in that forward (its consumer's input, keyed by the unit layer's name), so a
    statistic of the units needs no second forward."""
    calls = _record(model, forward, batch)
    chains, skipped = _chains_in(calls, None, ())
    _require_chains(model, chains, skipped)
    consumer_inputs = {c.name: c.input for c in calls}  # a chain's consumer runs once per forward (_chains_in)
    activations: dict[str, torch.Tensor] = {}
    for chain in chains:
        consumer_input = consumer_inputs[chain.consumer_name]
        assert consumer_input is not None  # _follow reached the consumer through this tensor
        activations[chain.unit_name] = chain.unit_activations(consumer_input.detach())
    return chains, activations


def _require_chains(model: nn.Module, chains: list[Chain], skipped: dict[str, str]) -> None:
    if not chains:
        raise ChainError(
            f"no replaceable unit layer found in {type(model).__name__}: {skipped or 'no Linear/Conv2d layer ran'}. "
            "Declare chains as [{'unit': ..., 'norm': ..., 'consumer': ...}]."
        )


@contextmanager
def in_eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode, and afterwards every submodule's own training flag as it was."""
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        yield
    finally:
        for name, m in model.named_modules():
            m.training = flags.get(name, m.training)


def find_chains(
    model: nn.Module,
    batch: Any,
    forward: ForwardFn = default_forward,
    layers: Optional[Sequence[str]] = None,
    declared: Optional[Iterable[dict]] = None,
    exclude: Sequence[str] = (),
    verify: bool = True,
) -> tuple[list[Chain], dict[str, str]]:
    """Chains of ``model`` found on ``batch``; also ``{layer: why it was skipped}``.

    ``layers``: only these unit layers (each must form a valid chain or ``ChainError``).
    ``declared``: explicit chains ``{"unit": name, "consumer": name, "norm": name | None}`` for
    models too irregular to trace (still verified unless ``verify=False``).
    """
    modules = dict(model.named_modules())
    chains: list[Chain] = []
    skipped: dict[str, str] = {}
    with in_eval_mode(model), torch.no_grad():
        if declared:
            for spec in declared:
                chains.append(declared_chain(modules, spec))
        else:
            calls = _record(model, forward, batch)
            chains, skipped = _chains_in(calls, layers, exclude)
        if verify:
            kept = []
            for ch in chains:
                if _verify(model, forward, batch, ch):
                    kept.append(ch)
                else:
                    skipped[ch.unit_name] = (
                        f"verification failed: with {ch.consumer_name}'s input columns zeroed the output still depends on "
                        "these units (a residual/shortcut or another function uses them)"
                    )
            chains = kept
    explicit = list(layers or []) + [s["unit"] for s in (declared or [])]
    bad = {name: skipped[name] for name in explicit if name in skipped}
    if bad:
        raise ChainError(
            f"these layers cannot have their units replaced: {bad}. Declare the chain yourself (chains=[...]) or leave them out."
        )
    _require_chains(model, chains, skipped)
    return chains, skipped
