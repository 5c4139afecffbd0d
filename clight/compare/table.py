"""The comparison table: one row per run, written as markdown, CSV and JSON.

Every number is taken from the run folders as written: the final accuracies are the last row of
the manifest's matrix, AA/BWT/forgetting/wall time come from ``metrics.json``. The derived
figures are named by what they are: new-task accuracy over the first/last ``window`` tasks (means
of ``a[t][t]``), intransigence against the joint run, a control's change (after minus start).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from clight.compare.record import RunRecord
from clight.metrics import FWT_CLASS_INCREMENTAL, IntransigenceReference, intransigence

MAX_TASK_COLUMNS = 12  # the markdown table shows per-task columns up to this many tasks (the CSV always)


def default_window(num_tasks: int) -> int:
    """The new-task accuracy window ``clight report`` uses: 10 tasks, at most half the sequence."""
    return max(1, min(10, num_tasks // 2))


def joint_reference(records: list[RunRecord]) -> tuple[Optional[RunRecord], Optional[IntransigenceReference], str]:
    """The first joint run, as an intransigence reference, with its provenance written out."""
    joint = next((r for r in records if r.schedule == "joint"), None)
    if joint is None or joint.final_accuracy is None:
        return None, None, ""
    others = [r.name for r in records if r.schedule == "joint" and r is not joint]
    provenance = (
        f"a*_k = accuracy on task k of the joint run {joint.name} ({joint.run_dir}): one model trained on all "
        f"{joint.num_tasks} tasks at once, used as the reference for every k (Chaudhry et al. 2018 train a joint model on "
        "tasks 0..k for each k; that needs one joint run per k). I_k = a*_k - a[k][k]"
        + (f"; other joint runs not used as reference: {', '.join(others)}" if others else "")
    )
    return joint, IntransigenceReference(joint.final_accuracy, "joint", f"{joint.run_dir}"), provenance


def _mean(values: Optional[list[float]]) -> Optional[float]:
    return float(np.mean(values)) if values else None


SCORE_NAMES = {"exact_match": "EM", "rouge_l": "ROUGE-L", "label_accuracy": "label acc."}


def score_average(r: RunRecord, name: str) -> Optional[float]:
    """A score's final average over the tasks (``metrics.json``; else the mean of the matrix's last row)."""
    recorded = ((r.metrics.get("scores") or {}).get(name) or {}).get("average_accuracy")
    if recorded is not None or name not in r.scores or r.schedule == "sequential_current":
        return recorded
    return float(np.nanmean(r.scores[name][-1]))


def task_columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    """``(key, header)`` of the per-task columns: by position when every run has the same task
    order, else by task name (the first run's order)."""
    orders = {tuple(r.task_names) for r in records}
    num_tasks = max(r.num_tasks for r in records)
    if len(orders) <= 1 or any(len(r.task_names) != r.num_tasks for r in records):
        return [(f"task_{j + 1}", f"task {j + 1}") for j in range(num_tasks)]
    return [(f"task_{name}", name) for name in records[0].task_names]


def build_rows(records: list[RunRecord], window: Optional[int] = None) -> tuple[list[dict], dict]:
    """One dict per run (raw values, keyed by CSV column), and what the columns depend on."""
    num_tasks = max(r.num_tasks for r in records)
    window = window or default_window(num_tasks)
    with_matrix = any(r.final_accuracy is not None for r in records)
    new_task_only = any(r.schedule == "sequential_current" for r in records)
    joint, reference, provenance = joint_reference(records)
    control_names = list(dict.fromkeys(c.name for r in records for c in r.controls))
    routed = any(r.routing is not None for r in records)
    found = {name for r in records for name in r.scores}
    score_names = [n for n in SCORE_NAMES if n in found] + sorted(found - set(SCORE_NAMES))
    columns = task_columns(records)
    rows = []
    for r in records:
        row: dict[str, Any] = {"method": r.name, "schedule": r.schedule, "status": r.status, "run_dir": str(r.run_dir)}
        if with_matrix:
            final: Sequence[Optional[float]] = r.final_accuracy or [None] * num_tasks
            by_name = r.final_by_task() if r.final_accuracy is not None else {}
            for j, (key, header) in enumerate(columns):
                row[key] = by_name.get(header) if key == f"task_{header}" else (final[j] if j < len(final) else None)
            for key in ("average_accuracy", "backward_transfer", "forgetting", "forward_transfer"):
                row[key] = r.metrics.get(key)
            row.update({f"{name}_average": score_average(r, name) for name in score_names})
        if reference is not None:
            diagonal = r.new_task_accuracy
            row["intransigence"] = intransigence(r.matrix, reference)[0] if diagonal is not None and r is not joint else None
        if new_task_only:
            diagonal = r.new_task_accuracy
            row[f"new_task_accuracy_first_{window}"] = _mean(diagonal[:window]) if diagonal else None
            row[f"new_task_accuracy_last_{window}"] = _mean(diagonal[-window:]) if diagonal else None
        controls = {c.name: c for c in r.controls}
        for name in control_names:
            c = controls.get(name)
            row.update({f"{name}_start": c and c.start, f"{name}_after": c and c.after, f"{name}_change": c and c.change})
        if routed:
            for j in range(num_tasks):
                row[f"routing_task_{j + 1}_own"] = r.routing.own(j) if r.routing else None
                row[f"routing_task_{j + 1}_pretrained"] = r.routing.pretrained(j) if r.routing else None
        trainable, source = r.trainable()
        row.update(
            {"wall_time_seconds": r.metrics.get("wall_time_seconds"), "trainable_per_task": trainable, "trainable_source": source}
        )
        rows.append(row)
    layout = {
        "num_tasks": num_tasks,
        "window": window,
        "with_matrix": with_matrix,
        "new_task_only": new_task_only,
        "controls": control_names,
        "routing": routed,
        "scores": score_names,
        "task_columns": columns,
        "intransigence_reference": provenance or None,
    }
    return rows, layout


# -- markdown -----------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _percent(digits: int) -> Callable[[Any], str]:
    return lambda v: "n/a" if _missing(v) else f"{100 * v:.{digits}f}"


def _trainable(value: Any) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, list):
        if not value:
            return "n/a"
        return f"{value[0]:,}" if len(set(value)) == 1 else f"{value[0]:,} → {value[-1]:,}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _control(row: dict, name: str) -> str:
    start, after, change = row[f"{name}_start"], row[f"{name}_after"], row[f"{name}_change"]
    if _missing(after):
        return "n/a"
    return f"{start:.4g} → {after:.4g} ({change:+.3g})"


def _routing(row: dict, num_tasks: int) -> str:
    cells = [(row[f"routing_task_{j + 1}_own"], row[f"routing_task_{j + 1}_pretrained"]) for j in range(num_tasks)]
    if all(_missing(own) for own, _ in cells):
        return "n/a"
    return ", ".join(f"{100 * own:.0f}/{100 * pre:.0f}" for own, pre in cells)


def _percent_of(key: str, digits: int) -> Callable[[dict], str]:
    """The cell of column ``key`` as a percentage with ``digits`` decimals."""
    return lambda row: _percent(digits)(row[key])


def markdown_columns(layout: dict) -> list[tuple[str, Callable[[dict], str]]]:
    columns: list[tuple[str, Callable[[dict], str]]] = [("method", lambda row: row["method"])]
    if layout["with_matrix"]:
        if layout["num_tasks"] <= MAX_TASK_COLUMNS:
            columns += [(header, _percent_of(key, 1)) for key, header in layout["task_columns"]]
        columns += [
            (header, _percent_of(key, 2))
            for header, key in (
                ("AA", "average_accuracy"),
                ("BWT", "backward_transfer"),
                ("FWT", "forward_transfer"),
                ("forgetting", "forgetting"),
            )
        ]
        columns += [(SCORE_NAMES.get(name, name), _percent_of(f"{name}_average", 2)) for name in layout["scores"]]
    if layout["intransigence_reference"]:
        columns.append(("intransigence", lambda row: _percent(2)(row["intransigence"])))
    if layout["new_task_only"]:
        w = layout["window"]
        columns += [
            (f"new-task acc., first {w}", lambda row: _percent(1)(row[f"new_task_accuracy_first_{w}"])),
            (f"new-task acc., last {w}", lambda row: _percent(1)(row[f"new_task_accuracy_last_{w}"])),
        ]
    columns += [
        (f"{name.replace('_', ' ')}: start → end (change)", functools.partial(_control, name=name)) for name in layout["controls"]
    ]
    if layout.get("routing"):
        columns.append(("routing: own task / pretrained (%)", lambda row: _routing(row, layout["num_tasks"])))
    columns += [
        ("wall time", lambda row: "n/a" if _missing(row["wall_time_seconds"]) else f"{row['wall_time_seconds']:.0f} s"),
        ("trainable / task", lambda row: _trainable(row["trainable_per_task"])),
    ]
    return columns


def to_markdown(rows: list[dict], layout: dict) -> str:
    columns = markdown_columns(layout)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)


def notes(records: list[RunRecord], rows: list[dict], layout: dict) -> list[str]:
    """What the table's numbers are and where they come from, one line each."""
    out = []
    if layout["with_matrix"]:
        points = "BWT, FWT, forgetting and intransigence" if layout["intransigence_reference"] else "BWT, FWT and forgetting"
        out.append(
            "Accuracies in %: task j = accuracy on task j after the last task (the last row of the accuracy matrix); "
            f"AA = mean of that row over the tasks seen; {points} in percentage points."
        )
        if layout["scores"]:
            named = ", ".join(f"{SCORE_NAMES.get(n, n)} = {n}" for n in layout["scores"])
            out.append(f"Other scores in % ({named}): each one's mean over the tasks after the last task.")
        convention = next((r.metrics["forgetting_convention"] for r in records if r.metrics.get("forgetting_convention")), None)
        if convention:
            out.append(f"Forgetting: {convention}.")
        fwt = next(
            (r.metrics["forward_transfer_convention"] for r in records if r.metrics.get("forward_transfer_convention")), None
        )
        if fwt:
            out.append(f"FWT: {fwt} (n/a where the initial model was not scored on every task); {FWT_CLASS_INCREMENTAL}.")
    if layout["new_task_only"]:
        out.append(
            f"New-task accuracy: a[t][t], accuracy on task t right after training it, averaged over the first and the "
            f"last {layout['window']} tasks."
        )
    if layout["intransigence_reference"]:
        out.append(f"Intransigence, in percentage points: {layout['intransigence_reference']}.")
    seen: dict[str, str] = {}
    for c in (c for r in records for c in r.controls):
        directions: dict[Optional[bool], str] = {True: "lower is better", False: "higher is better"}
        direction = directions.get(c.lower_is_better, "no better direction")
        seen.setdefault(
            c.name, f"{c.name}: {c.what}; start = {c.before_label}, end = after the last task; {direction} (from {c.source})."
        )
    out += list(seen.values())
    routing = next((r.routing for r in records if r.routing is not None), None)
    if routing is not None:
        out.append(
            "Routing: per task, in task order, the share of its test samples routed to its own task's experts / to the "
            f"pretrained model after the last task, in % (the rest went to another task's experts); {routing.what} "
            f"(from {routing.source}; every task's shares after every task are in comparison.json)."
        )
    out += [
        f"{row['method']}: {row['status']} ({row['run_dir']}); trainable / task from {row['trainable_source']}." for row in rows
    ]
    return out


# -- CSV ------------------------------------------------------------------------------------------
def _csv_cell(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)  # repr-exact floats: the CSV holds the run folders' numbers, not rounded ones


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(rows[0]))
    writer.writerows([[_csv_cell(v) for v in row.values()] for row in rows])
    return buffer.getvalue()
