"""Values cut to a readable length before they go into a message (a config can expand to megabytes)."""

from __future__ import annotations

from typing import Any

#: the most characters of one value a message shows
VALUE_LIMIT = 300


def shorten(text: str, limit: int = VALUE_LIMIT) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(value: Any, limit: int = VALUE_LIMIT) -> str:
    return shorten(repr(value), limit)
