"""The final model as files anyone can load without clight (and, when sharded, without DCP).

``export_model(module, folder)`` gathers the whole model's state on rank 0 (a collective when
its parameters are sharded: every rank must call it; ``get_model_state_dict`` with
``full_state_dict`` and ``cpu_offload``, one tensor at a time) and writes, atomically:

- ``model.pt``: the plain state dict of the ContinualModule, whole tensors on the CPU
  (``torch.load(..., weights_only=True)``);
- for a model that can (``ContinualCausalLM``: ``export_pretrained``), ``hf/``: the network as a
  plain ``transformers`` folder with its tokenizer, and ``adapter/``: its LoRA adapters as a PEFT
  folder (with ``merge``: the adapters merged into ``hf/``'s weights, no ``adapter/``);
- ``export.json``: what was written and why anything was not.

A sharded run calls it when it finishes (``run_dir/final/``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import torch

from clight.distributed import barrier, is_rank_zero
from clight.io import write_json_atomic
from clight.models.sharding import is_sharded


def consolidated_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0's CPU (an empty dict on other ranks when sharded). Every rank must call it."""
    if not is_sharded(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # a full state dict holds plain tensors (torch types it as any state value: DTensor, list, dict...)
    return cast(
        dict[str, torch.Tensor], get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    )


def export_model(module: Any, folder: Path, merge: bool = False) -> dict[str, str]:
    """Write ``module``'s final state to ``folder`` (see the module docstring) and return what
    ``export.json`` says was written. ``merge``: a language model's LoRA adapters merged into
    ``hf/`` (a model that is not sharded: ``clight.export_run``). Every rank must call it."""
    from clight.runner.sharded_checkpoints import commit_folder

    state = consolidated_state_dict(module)
    written: dict[str, str] = {}
    if is_rank_zero():
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "model.pt")
        written["model.pt"] = f"the plain state dict of {type(module).__name__}"
        exporter = getattr(module, "export_pretrained", None)
        if exporter is not None:
            written.update(exporter(state, tmp, merge=merge))
        write_json_atomic(tmp / "export.json", written)
        commit_folder(tmp, folder)
    barrier()
    return written
