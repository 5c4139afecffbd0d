"""What a person watching a run sees: which task of how many, and each row as it lands."""

from __future__ import annotations

import math
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from rich.console import Console
from rich.table import Table


class SequenceProgress:
    """Prints ``Task t/T`` before each fit and the task's accuracy row after it (rank 0 only)."""

    def __init__(self, data: Any, enabled: bool = True) -> None:
        self.data = data
        self.enabled = enabled and rank_zero_only.rank == 0
        self.console = Console(stderr=True)

    def start_task(self, t: int, joint: bool = False) -> None:
        if not self.enabled:
            return
        total = self.data.num_tasks
        title = f"Joint training on all {total} tasks" if joint else f"Task {t + 1}/{total} · {self.data.tasks[t].name}"
        self.console.rule(f"[bold cyan]{title}")

    def end_task(self, t: int, row: list[float], metrics: dict, seconds: float) -> None:
        if not self.enabled:
            return
        if len(row) > 12:  # long sequences: one line per task
            self.console.print(f"after task {t + 1}/{self.data.num_tasks} ({seconds:.1f} s): accuracy on it {100 * row[t]:.1f}%")
            return
        table = Table(title=f"after task {t + 1}/{self.data.num_tasks} ({seconds:.1f} s)", show_edge=False)
        for j in range(len(row)):
            table.add_column(f"T{j + 1}", justify="right", style="green" if j <= t else "dim")
        table.add_column("AA", justify="right", style="bold")
        cells = ["-" if math.isnan(a) else f"{100 * a:.1f}" for a in row]
        average = metrics.get("average_accuracy")
        table.add_row(*cells, "-" if average is None else f"{100 * average:.1f}")
        self.console.print(table)
