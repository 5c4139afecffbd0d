"""Routing shares a run recorded: where a method that routes samples without a task id (MoE
adapters' DDAS) sent each task's test samples after each task. A method declares them in its
``describe()`` (stored in ``metrics.json``) as ``"routing_shares": {"what": ..., "columns":
["task 1", ..., "pretrained model"], "after_task": [[row per test task] per finished task]}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RoutingShares:
    what: str
    columns: tuple[str, ...]
    after_task: tuple[tuple[tuple[float, ...], ...], ...]
    source: str

    @property
    def final(self) -> tuple[tuple[float, ...], ...]:
        """After the last task: one row per test task, the shares per column."""
        return self.after_task[-1] if self.after_task else ()

    def own(self, task: int) -> Optional[float]:
        """The share of task ``task``'s test samples routed to its own task after the last task."""
        return self.final[task][task] if task < len(self.final) else None

    def pretrained(self, task: int) -> Optional[float]:
        """The share of task ``task``'s test samples routed to the pretrained model after the last task."""
        return self.final[task][-1] if task < len(self.final) else None

    def as_dict(self) -> dict:
        return {"what": self.what, "columns": list(self.columns), "after_task": [[list(r) for r in m] for m in self.after_task]}


def read_routing(metrics: dict) -> Optional[RoutingShares]:
    """The first routing shares a method's (or the model's) ``describe()`` in ``metrics`` holds."""
    for info in [*(metrics.get("methods") or []), metrics.get("model") or {}]:
        shares = info.get("routing_shares")
        if shares and shares.get("after_task"):
            return RoutingShares(
                shares.get("what", "routing shares"),
                tuple(shares.get("columns", [])),
                tuple(tuple(tuple(float(v) for v in row) for row in matrix) for matrix in shares["after_task"]),
                f"{info.get('class', '?')}.describe()['routing_shares']",
            )
    return None
