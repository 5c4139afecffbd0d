"""Named task orders: a JSON file that names sequences of tasks, as O-LoRA's order scripts do.

::

    {
      "orders": {"order1": ["dbpedia", "amazon", "yahoo", "agnews"],
                 "order2": ["dbpedia", "amazon", "agnews", "yahoo"]},
      "benchmarks": {"standard": ["order1", "order2"]}      (optional, not read)
    }

A config names an order (``order: order1``) and the folder that holds the tasks (``root``);
the file is ``ROOT/orders.json`` unless ``orders_file`` says otherwise. An unknown order, an
empty one, a task named twice or a task without a folder is refused, naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from clight.data.text.instruct.records import RecordError


def _line_of(text: str, needle: str, after: int = 0) -> Optional[int]:
    at = text.find(needle, after)
    return None if at < 0 else text.count("\n", 0, at) + 1


def read_order(path: Path, order: str, root: Path, has_task: Callable[[str], bool], known: Callable[[], list[str]]) -> list[str]:
    """The task names of ``order`` in the orders file ``path``; ``has_task(name)`` says whether
    ``root`` holds that task, ``known()`` lists the tasks it holds (for the error message)."""
    if not path.is_file():
        raise RecordError(path, "not found: write the named task orders there (see docs/llm_tasks.md) or set orders_file")
    text = path.read_text(encoding="utf-8")
    try:
        orders = json.loads(text).get("orders")
    except (json.JSONDecodeError, AttributeError):
        raise RecordError(path, 'is not a JSON object {"orders": {name: [task, ...]}}') from None
    if not isinstance(orders, dict):
        raise RecordError(path, 'has no "orders" object: write {"orders": {name: [task, ...]}}')
    if order not in orders:
        raise RecordError(path, f"has no order {order!r}: it names {sorted(orders)}")
    key_at = text.find(f'"{order}"')
    line = _line_of(text, f'"{order}"')
    tasks = orders[order]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise RecordError(path, f"order {order!r} must be a non-empty list of task names", line)
    for task in tasks:
        if tasks.count(task) > 1:
            raise RecordError(path, f"order {order!r} names task {task!r} twice", line)
        if not has_task(task):
            raise RecordError(
                path,
                f"order {order!r} names the task {task!r}, which has no folder with labels.json in {root} "
                f"(tasks there: {known()})",
                _line_of(text, f'"{task}"', key_at),
            )
    return list(tasks)
