"""Runs that differ only by seed or by task order, grouped: one row per group with the mean, the
sample standard deviation and the number of runs of every figure.

Two runs are in one group when their configs (``config.yaml`` in the run folder) are equal once
the seed (``seed_everything``, ``data.init_args.seed``), the task order (``data.init_args.order``,
and the order of a ``data.init_args.tasks`` list) and where the run is written are set aside, and
options that only one of the two configs has (written by a later clight) are ignored. A
run folder without ``config.yaml`` (a run driven from Python) is a group of its own. A group is
named by what its members' names share (``lora_order1``, ``lora_order2`` -> ``lora``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from clight.compare.record import RunRecord

#: config keys that tell replicates of one configuration apart (dotted paths)
VARIANT_KEYS = (
    "seed_everything",
    "run_dir",
    "resume",
    "allow_config_change",
    "trainer.enable_progress_bar",
    "data.init_args.seed",
    "data.init_args.order",
)


def _drop(config: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def group_config(record: RunRecord) -> Optional[dict]:
    """The run's config without its seed, task order and folder (``None``: the run has no config)."""
    if record.config is None:
        return None
    config = json.loads(json.dumps(record.config, default=str))
    for key in VARIANT_KEYS:
        _drop(config, key)
    tasks = ((config.get("data") or {}).get("init_args") or {}).get("tasks")
    if isinstance(tasks, list):
        config["data"]["init_args"]["tasks"] = sorted(tasks, key=lambda t: json.dumps(t, sort_keys=True))
    return config


def same_configuration(a: Any, b: Any) -> bool:
    """Equal, where a key that only one of two dicts has does not count: ``config.yaml`` holds every
    option of the clight that wrote it, so an option added by a later version (``trainer.callbacks:
    null``) is missing from an earlier run's config, not set otherwise. Class paths and every shared
    key still have to agree."""
    if isinstance(a, dict) and isinstance(b, dict):
        return all(same_configuration(a[k], b[k]) for k in a.keys() & b.keys())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_configuration(x, y) for x, y in zip(a, b))
    return a == b


def group_name(names: list[str]) -> str:
    """What the names share: their common prefix without a trailing seed/order word or separator."""
    if len(names) == 1:
        return names[0]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    prefix = re.sub(r"(?:[_\-. ]+(?:order|seed|o|s)?)?\d*$", "", prefix)
    return prefix or names[0]


@dataclass
class RunGroup:
    name: str
    members: list[RunRecord]

    @property
    def variants(self) -> list[str]:
        """How the members differ: ``seed S, order (a, b, c)`` per run."""
        return [f"seed {r.seed}, order {'/'.join(r.task_names)}" for r in self.members]


def group_runs(records: list[RunRecord]) -> list[RunGroup]:
    """Groups in the order their first run appears."""
    grouped: list[tuple[Optional[dict], list[RunRecord]]] = []
    for record in records:
        config = group_config(record)
        home = None
        if config is not None:
            home = next((members for first, members in grouped if first is not None and same_configuration(first, config)), None)
        if home is None:
            grouped.append((config, [record]))
        else:
            home.append(record)
    groups = [RunGroup(group_name([r.name for r in members]), members) for _, members in grouped]
    names = [g.name for g in groups]
    for g in groups:  # two groups that share a name are named by their first run
        if names.count(g.name) > 1:
            g.name = g.members[0].name
    return groups


def mean_std(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """Mean, sample standard deviation (``None`` for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return None, None, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return float(np.mean(finite)), std, len(finite)


def group_rows(groups: list[RunGroup], run_rows: dict[str, dict], columns: list[str]) -> list[dict]:
    """One row per group: ``{column: mean, column_std: std}`` over the members' rows, and ``runs``."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {"method": g.name, "runs": len(g.members), "members": [r.name for r in g.members]}
        row["variants"] = g.variants
        for column in columns:
            mean, std, _ = mean_std([run_rows[r.name].get(column) for r in g.members])
            row[column], row[f"{column}_std"] = mean, std
        rows.append(row)
    return rows


SUMMARY_COLUMNS = (
    ("AA", "average_accuracy"),
    ("BWT", "backward_transfer"),
    ("FWT", "forward_transfer"),
    ("forgetting", "forgetting"),
)


def figure_columns(records: list[RunRecord], layout: dict) -> list[tuple[str, str]]:
    """``(header, key)`` of what a group row averages: per-task accuracy by task name, the summary
    metrics, every other score's final average, every control's value after the last task."""
    from clight.compare.table import MAX_TASK_COLUMNS, SCORE_NAMES

    names = list(dict.fromkeys(n for r in records for n in r.task_names))
    columns = [(n, f"task_{n}") for n in names] if len(names) <= MAX_TASK_COLUMNS else []
    columns += list(SUMMARY_COLUMNS)
    columns += [(SCORE_NAMES.get(n, n), f"{n}_average") for n in layout.get("scores", [])]
    columns += [(f"{c.replace('_', ' ')} after", f"{c}_after") for c in layout.get("controls", [])]
    return columns


def run_figures(record: RunRecord, row: dict) -> dict:
    """A run's table row plus its final accuracy keyed by task name (whatever its task order)."""
    return {**row, **{f"task_{name}": value for name, value in record.final_by_task().items()}}


def _cell(row: dict, key: str, percent: bool) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if mean is None:
        return "n/a"
    scale, digits = (100, 1) if percent else (1, 3)
    text = f"{scale * mean:.{digits}f}" if percent else f"{mean:.4g}"
    if std is not None:
        text += f" ± {scale * std:.{digits}f}" if percent else f" ± {std:.2g}"
    return text


def group_markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """The group table: mean ± sample standard deviation (accuracies and scores in %), and n."""
    headers = ["method", "n", *[h for h, _ in columns]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(row, key, not key.endswith("_after")) for _, key in columns]
        lines.append("| " + " | ".join([row["method"], str(row["runs"]), *cells]) + " |")
    return "\n".join(lines)


def group_notes(groups: list[RunGroup]) -> list[str]:
    out = [
        "Group rows: runs whose configs differ only by seed or task order; mean ± sample standard deviation over its "
        "n runs (no ± for one run); per-task columns by task name, whatever position the task had in each run; "
        "accuracies and scores in %, BWT, FWT and forgetting in percentage points, controls in their own units."
    ]
    out += [
        f"{g.name} (n={len(g.members)}): " + "; ".join(f"{r.name} ({v})" for r, v in zip(g.members, g.variants)) for g in groups
    ]
    return out
