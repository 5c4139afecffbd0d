"""What differs between a resumed run's config and the config the run was started with.

Both are the resolved configs ``clight fit`` writes (every default filled in), so the
comparison is key by key. Keys that cannot change results (where the run is, how it is shown,
how many loader workers read the data) are left out.
"""

from __future__ import annotations

from typing import Any

import yaml

from clight.shorten import short_repr, shorten

#: settings that do not change what a run computes
NO_EFFECT = frozenset(
    {
        "run_dir",
        "resume",
        "allow_config_change",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
        "trainer.profiler",
        "data.init_args.num_workers",
        "runner.checkpoint_every_epoch",
        "runner.epoch_checkpoint_min_s",
        "runner.check_rank_consistency",
    }
)

_ABSENT = "<absent>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}, "m": [{"c": 3}]}`` -> ``{"a.b": [1, 2], "m[0].c": 3}`` (a list is
    a value unless it holds sections, like ``methods``)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def config_changes(before: str, after: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (before, after)}`` for every result-changing setting that differs."""
    old, new = flatten(yaml.safe_load(before) or {}), flatten(yaml.safe_load(after) or {})
    changes = {}
    for key in sorted(set(old) | set(new)):
        if key in NO_EFFECT:
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            changes[key] = (a, b)
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    shown = [f"{shorten(key)}: {short_repr(a)} -> {short_repr(b)}" for key, (a, b) in list(changes.items())[:limit]]
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(shown) + more
