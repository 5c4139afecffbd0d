"""What a person watching a run sees: which task of how many, and each row as it lands."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from clight.distributed import is_rank_zero

if TYPE_CHECKING:
    from rich.console import Console


def quiet_lightning_banners() -> None:
    """A fresh Trainer per task would repeat Lightning's device banner and tips every task."""
    import logging
    import warnings

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The runner puts the model in train mode before every fit; modules still in eval mode then
    # are frozen norms kept there on purpose (see ContinualClassifier.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


class SequenceProgress:
    """Prints a title before each fit and the accuracy row after it (rank 0 only)."""

    def __init__(self, data: Any, enabled: bool = True) -> None:
        self.data = data
        self.enabled = enabled and is_rank_zero()
        self._console: Optional[Console] = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def start(self, title: str) -> None:
        if self.enabled:
            self.console.rule(f"[bold cyan]{title}")

    def end(self, t: int, row: list[float], metrics: dict, seconds: float) -> None:
        if not self.enabled:
            return
        title = f"after task {t + 1}/{self.data.num_tasks} ({seconds:.1f} s)"
        average = metrics.get("average_accuracy")
        if len(row) > 12:  # long sequences: one line per task
            self.console.print(f"{title}: accuracy on it {100 * row[t]:.1f}%", soft_wrap=True)
            return
        cells = ["-" if math.isnan(a) else f"{100 * a:.1f}" for a in row]
        average_cell = "-" if average is None else f"{100 * average:.1f}"
        if not self.console.is_terminal:  # a log file: one line per task
            self.console.print(
                f"{title}: accuracy (%) on tasks 1-{len(row)}: {' '.join(cells)}; AA {average_cell}", soft_wrap=True
            )
            return
        from rich.table import Table

        table = Table(title=title, show_edge=False)
        for j in range(len(row)):
            table.add_column(f"T{j + 1}", justify="right", style="green" if j <= t else "dim")
        table.add_column("AA", justify="right", style="bold")
        table.add_row(*cells, average_cell)
        self.console.print(table)
