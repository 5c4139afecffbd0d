"""A finished run's model as files anyone can load without clight: ``clight.export`` applied to
the model ``load_run`` rebuilds (a language model as a Hugging Face folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

PathLike = Union[str, Path]


def export_run(
    run_dir: PathLike, out: PathLike, merge: bool = True, config: Optional[PathLike] = None, overrides: Sequence[str] = ()
) -> dict[str, str]:
    """Write the model of the run in ``run_dir`` to the folder ``out`` and return ``{file: what}``
    (also in ``out/export.json``): ``model.pt`` (the plain state dict) and, for a language model,
    ``hf/`` (``AutoModelForCausalLM.from_pretrained(out / "hf")``, with its tokenizer; ``merge``:
    the LoRA adapters applied after the last task merged into its weights; else the base weights,
    and ``adapter/`` with the LoRA adapters: ``PeftModel.from_pretrained(base, out / "adapter")``)."""
    from clight.export import export_model
    from clight.trained.restore import load_run

    return export_model(load_run(run_dir, config, overrides), Path(out), merge=merge)
