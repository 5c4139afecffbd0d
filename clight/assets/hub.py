"""Hugging Face models and tokenizers by name or folder: found at once when they are on this
machine, refused in one line when they are not and cannot be fetched (where transformers would
retry the hub for about a minute, then print a page of advice)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from clight.contract import ConfigError
from clight.shorten import shorten

T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")


def from_pretrained(load: Callable[..., T], name_or_path: str, what: str, model: bool = False, **kwargs: Any) -> T:
    """``load(name_or_path, **kwargs)`` (a ``from_pretrained``): from a folder, else from the local
    Hugging Face cache, else from the hub if it can be reached; any failure is a one-line ``ConfigError``.
    ``model``: ``load`` is a model class's (it also looks for a peft adapter, which must stay offline too)."""
    name = shorten(repr(name_or_path), 200)
    local = dict(local_files_only=True, **({"adapter_kwargs": {"local_files_only": True}} if model else {}))
    if Path(name_or_path).expanduser().exists():
        return _load(load, str(Path(name_or_path).expanduser()), what, name, **local, **kwargs)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise ConfigError(f"{what} {name}: no such file or folder. Give a folder saved with save_pretrained, or a hub name.")
    try:
        return load(name_or_path, **local, **kwargs)
    except (OSError, ValueError):
        pass  # not in the local cache (or not a valid name: the hub's message says which)
    unreachable = _hub_unreachable()
    if unreachable:
        raise ConfigError(
            f"{what} {name} is not in the local Hugging Face cache ({_cache_dir()}) and {unreachable}. "
            "Download it where the hub can be reached (or set HF_HOME to a cache that has it), or give a local folder."
        )
    return _load(load, name_or_path, what, name, **kwargs)


def _load(load: Callable[..., T], source: str, what: str, name: str, **kwargs: Any) -> T:
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split(". ")[0].split())
        raise ConfigError(f"{what} {name} cannot be loaded: {shorten(first)}.") from exc


def _hub_unreachable() -> str:
    """Why the hub cannot be asked (offline mode, no connection), or "" if it may be."""
    if any(os.environ.get(key, "").lower() in _TRUE for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""  # reachable only through the proxy: let the hub client try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
        return ""
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"


def _cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return "~/.cache/huggingface/hub"
