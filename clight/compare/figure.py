"""The comparison figure: final accuracy per task (grouped bars), new-task accuracy over the
sequence (running mean) where runs scored only the new task, and every control over the tasks."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from clight.compare.record import RunRecord
from clight.plots import _pyplot, save_figure

PANELS_PER_ROW = 4
LEGEND_COLUMNS = 4


def running_mean(values: list[float], window: int) -> np.ndarray:
    """Mean over the last ``window`` values at every position (fewer at the start)."""
    x = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(x, 0, 0.0))
    ends = np.arange(1, len(x) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def run_colours(records: list[RunRecord]) -> dict[str, tuple]:
    """One distinct colour per run, the same in every panel (tab10, or tab20 beyond ten runs)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(records) <= 10 else "tab20"]
    return {r.name: palette(i % palette.N) for i, r in enumerate(records)}


def _final_accuracy(ax, records: list[RunRecord], colours: dict) -> None:
    shown = [r for r in records if r.final_accuracy is not None]
    width = 0.8 / len(shown)
    names = shown[0].task_names
    for i, r in enumerate(shown):
        # runs in another task order: each bar over the task's position in the first run's order
        by_name = r.final_by_task() if r.task_names != names else {}
        values = [by_name.get(n, math.nan) for n in names] if by_name else r.final_accuracy
        x = np.arange(1, len(values) + 1) + (i - (len(shown) - 1) / 2) * width
        ax.bar(x, 100 * np.nan_to_num(np.asarray(values)), width, label=r.name, color=colours[r.name])
    ax.set_xlabel("task" if len({tuple(r.task_names) for r in shown}) == 1 else f"task ({', '.join(names)})")
    ax.set_ylabel("accuracy after the last task (%)")
    ax.set_ylim(0, 100)
    ax.set_title("final accuracy per task")


def _new_task_accuracy(ax, records: list[RunRecord], colours: dict, smooth: int) -> None:
    for r in records:
        if r.new_task_accuracy:
            ys = running_mean(r.new_task_accuracy, smooth)
            ax.plot(np.arange(1, len(ys) + 1), 100 * ys, label=r.name, color=colours[r.name])
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on the task just trained (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"new-task accuracy ({smooth}-task running mean)" if smooth > 1 else "new-task accuracy")


def _control(ax, records: list[RunRecord], colours: dict, name: str) -> None:
    for r in records:
        c = next((c for c in r.controls if c.name == name), None)
        if c is None:
            continue
        offset = 0 if c.before is not None else 1
        ys = ([c.before] if c.before is not None else []) + list(c.per_task)
        ax.plot(
            np.arange(offset, offset + len(ys)), ys, marker="o" if len(ys) <= 20 else None, label=r.name, color=colours[r.name]
        )
    ax.set_xlabel("after task (0: before the first)")
    ax.set_title(name.replace("_", " "))


def plot_comparison(records: list[RunRecord], path: Path, smooth: Optional[int] = None) -> Path:
    """One panel per view; one colour per run in every panel."""
    plt = _pyplot()
    num_tasks = max(r.num_tasks for r in records)
    panels: list[Callable[[Any, list[RunRecord], dict], None]] = []
    if any(r.final_accuracy is not None for r in records):
        panels.append(_final_accuracy)
    if any(r.schedule == "sequential_current" for r in records):
        window = smooth or (5 if num_tasks >= 20 else 1)
        panels.append(partial(_new_task_accuracy, smooth=window))
    names = list(dict.fromkeys(c.name for r in records for c in r.controls))
    panels += [partial(_control, name=n) for n in names]
    columns = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / columns)
    legend_height = 0.25 * math.ceil(len(records) / LEGEND_COLUMNS) + 0.2  # inches, below the panels, so no panel is covered
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows + legend_height), squeeze=False)
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    colours = run_colours(records)
    for ax, draw in zip(axes.flat, panels):
        draw(ax, records, colours)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [Patch(color=colour, label=name) for name, colour in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(LEGEND_COLUMNS, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    save_figure(fig, Path(path), dpi=110)
    return Path(path)
