"""Save and load one task's CLR adapter (kernels, norms, head) as a small safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from clight.methods.reprogramming import injection as clr_inject

FORMAT = "clight-clr-adapter-1"


def task_adapter_state(model, task: Union[int, str]) -> dict[str, torch.Tensor]:
    """Every tensor task ``task`` owns, named by its layer's path in ``model.backbone``
    (``<layer>.<name>``) or ``head.<name>``."""
    key = str(task)
    if key not in model.heads:
        raise KeyError(f"task {key} has no adapter in this model (tasks: {list(model.heads)})")
    state = {}
    for name, layer in model.backbone.named_modules():
        if isinstance(layer, clr_inject.TaskKeyedLayer):
            for tensor_name, tensor in layer.task_state(key).items():
                state[f"backbone.{name}.{tensor_name}"] = tensor.detach()
    for tensor_name, tensor in model.heads[key].state_dict().items():
        state[f"head.{tensor_name}"] = tensor.detach()
    return state


def save_task_adapter(model, task: Union[int, str], path: Union[str, Path]) -> Path:
    """Write task ``task``'s adapter alone to ``path`` (safetensors, with its variant in the metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in task_adapter_state(model, task).items()}
    metadata = {
        "format": FORMAT,
        "task": str(task),
        "variant": model.variant,
        "backbone": getattr(model.backbone, "name", type(model.backbone).__name__),
        "num_classes": str(model.heads[str(task)].out_features),
        "describe": json.dumps({k: v for k, v in model.parameter_budget(task).items()}),
    }
    save_file(state, str(path), metadata=metadata)
    return path


def load_task_adapter(model, path: Union[str, Path], task: Optional[Union[int, str]] = None) -> str:
    """Load an adapter file into ``model`` as task ``task`` (default: the task it was saved as),
    creating that task's state; keys and shapes must match exactly. Returns the task key."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a clight CLR adapter file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("variant") != model.variant:
        raise ValueError(f"{path} holds a {metadata.get('variant')!r} adapter; this model uses variant {model.variant!r}")
    key = str(task) if task is not None else metadata["task"]
    if key in model.heads:
        raise ValueError(f"task {key} already has an adapter in this model; remove_task({key!r}) first or load as another task")
    model.add_task(key, int(metadata["num_classes"]))
    target = task_adapter_state(model, key)
    missing, unexpected = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    wrong = [k for k in target if k in tensors and target[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        model.remove_task(key)
        raise ValueError(
            f"adapter {path} does not fit this model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), wrong shapes {wrong[:3]}; was it saved from the same backbone?"
        )
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(tensors[name].to(tensor.device, tensor.dtype))
    return key
