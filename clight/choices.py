"""Named choices as ``Literal`` types: jsonargparse checks and documents them in configs and
``--help``; ``check_choice`` gives Python callers the same check and message."""

from __future__ import annotations

from typing import Any, Literal, get_args

Setting = Literal["task_incremental", "class_incremental", "domain_incremental"]
SETTINGS: tuple[str, ...] = get_args(Setting)


def check_choice(field: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of the ``Literal`` type ``choices``, else a ``ValueError`` that
    names the field and the allowed values."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")
    return value
