"""PlasticityMonitor: dead and dormant units, effective and stable rank, weight magnitude per task."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn

from clight.choices import check_choice
from clight.contract import RunContext
from clight.distributed import is_rank_zero
from clight.io import write_json_atomic
from clight.methods.base import ContinualCallback
from clight.methods.plasticity.chain import ForwardFn
from clight.methods.plasticity.discovery import default_forward, in_eval_mode, record_chains
from clight.methods.plasticity.statistics import (
    dead_fraction,
    dormant_fraction,
    effective_rank,
    redo_dormant_fraction,
    singular_values,
    stable_rank,
    weight_magnitude,
)
from clight.models.module import ContinualModule

Probe = Literal["current", "first"]


def probe_batch(datamodule: Any, task: int, size: int) -> dict:
    """The first ``size`` training samples of ``task`` (fixed: the same every time)."""
    view = datamodule.tasks[task].train
    loader = torch.utils.data.DataLoader(view, batch_size=min(size, len(view)), shuffle=False, collate_fn=datamodule.collate_fn)
    return next(iter(loader))


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


class _FeaturesTap:
    """Keeps the output of ``module.features`` on the batch's own input (that very object) while
    installed, so the forward that the statistics hook into also gives the penultimate
    representation: no second forward."""

    def __init__(self, module: ContinualModule, batch: dict) -> None:
        self.module = module
        self.output: Optional[torch.Tensor] = None
        original, expected = module.features, module.model_input(batch)

        def features(x, *args, **kwargs):
            out = original(x, *args, **kwargs)
            if self.output is None and x is expected:
                self.output = out
            return out

        object.__setattr__(module, "features", features)

    def remove(self) -> None:
        self.module.__dict__.pop("features", None)

    def result(self, batch: dict) -> torch.Tensor:
        """The tapped output, or (a forward that never asked for the batch's features) a call of its own."""
        if self.output is not None:
            return self.output
        return self.module.features(self.module.model_input(batch), batch.get("task_id"))


@torch.no_grad()
def measure(module: nn.Module, batch: Any, forward: ForwardFn = default_forward, tau: float = 0.025) -> dict:
    """Plasticity statistics of ``module`` on ``batch`` (eval mode): over all hidden units of the
    replaceable layers, plus the effective rank and the stable rank (delta 0.01) of the
    penultimate representation (``features`` when the module has it, else the input of the last
    hidden layer's consumer)."""
    with in_eval_mode(module):
        features = _FeaturesTap(module, batch) if isinstance(module, ContinualModule) and isinstance(batch, dict) else None
        try:
            chains, captured = record_chains(module, batch, forward)
            penultimate = captured[chains[-1].unit_name] if features is None else features.result(batch)
        finally:
            if features is not None:
                features.remove()
    spectrum = singular_values(penultimate)
    units = sum(captured[c.unit_name].shape[1 if captured[c.unit_name].dim() == 4 else -1] for c in chains)

    def pooled(fn) -> float:
        return sum(fn(captured[c.unit_name]) * c.num_units for c in chains) / max(units, 1)

    return {
        "dead_fraction": pooled(dead_fraction),
        "dormant_fraction": pooled(dormant_fraction),
        "dormant_redo_fraction": pooled(lambda h: redo_dormant_fraction(h, tau)),
        "effective_rank": effective_rank(penultimate, spectrum=spectrum),
        "stable_rank": stable_rank(penultimate, spectrum=spectrum),
        "weight_magnitude": weight_magnitude(module),
        "layers": {c.unit_name: dead_fraction(captured[c.unit_name]) for c in chains},
    }


class PlasticityMonitor(ContinualCallback):
    """After every task: dead-unit fraction, dormant-unit fraction (active on < 1% of entries,
    and by ReDo's score), effective rank and stable rank of the penultimate representation and
    average weight magnitude, on a fixed probe batch of ``probe_size`` training samples of the
    task just trained (``probe="current"``) or of task 0 (``probe="first"``). Written to
    ``run_dir/plasticity.json`` after every task and plotted to ``run_dir/plots/plasticity.png``
    after the last task and after any task at least ``plot_every_s`` seconds after the previous
    plot or the run's start (a plot costs about 0.3 s: redrawn after each of 100 short tasks it
    was a third of the run)."""

    state_layout = {"history": "replicated"}
    unshardable = "it measures whole weight matrices and hooks submodules directly, which FSDP's sharded parameters do not allow"

    def __init__(
        self,
        probe_size: int = 2000,
        probe: Probe = "current",
        tau: float = 0.025,
        plot: bool = True,
        forward: ForwardFn = default_forward,
        plot_every_s: float = 30.0,
    ) -> None:
        super().__init__()
        check_choice("PlasticityMonitor.probe", probe, Probe)
        if probe_size < 1:
            raise ValueError(f"PlasticityMonitor.probe_size must be positive, got {probe_size}")
        if plot_every_s < 0:
            raise ValueError(f"PlasticityMonitor.plot_every_s must be >= 0, got {plot_every_s}")
        self.probe_size, self.probe, self.tau, self.plot, self.forward = probe_size, probe, tau, plot, forward
        self.plot_every_s = plot_every_s
        self._last_plot: Optional[float] = None  # when the last plot was drawn or the run started (time.monotonic); not state
        self.history: list[dict] = []
        self.datamodule = None
        self.run_dir: Optional[Path] = None

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self.datamodule, self.run_dir = datamodule, context.run_dir
        self._last_plot = time.monotonic()

    def on_task_end(self, module: Any, task) -> None:
        if self.datamodule is None:
            raise RuntimeError("PlasticityMonitor needs setup_sequence(module, datamodule, context) before the first task")
        device = next(module.parameters()).device
        batch = _to(probe_batch(self.datamodule, 0 if self.probe == "first" else task.index, self.probe_size), device)
        stats = measure(module, batch, self.forward, self.tau)
        stats["task"] = task.index
        self.history = [h for h in self.history if h["task"] != task.index] + [stats]
        self.write(last=task.index == len(self.datamodule.tasks) - 1)

    def write(self, last: bool = True) -> None:
        if self.run_dir is None or not is_rank_zero():
            return
        run_dir = Path(self.run_dir)
        write_json_atomic(run_dir / "plasticity.json", self.history)
        now = time.monotonic()
        due = last or self._last_plot is None or now - self._last_plot >= self.plot_every_s
        if self.plot and self.history and due:
            plot_history({"run": self.history}, run_dir / "plots" / "plasticity.png")
            self._last_plot = now

    def state_dict(self) -> dict:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = json.loads(state.get("history", "[]"))

    def describe(self) -> dict:
        info = super().describe()
        info.update({"probe_size": self.probe_size, "probe": self.probe, "tau": self.tau, "plot_every_s": self.plot_every_s})
        return info


KEYS = ("dead_fraction", "dormant_fraction", "effective_rank", "stable_rank", "weight_magnitude")


def _smooth(ys: list[float], window: int) -> list[float]:
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def plot_history(
    runs: dict[str, list[dict]], path: Path, extra: Optional[dict[str, list[float]]] = None, smooth: int = 5
) -> Path:
    """One panel per statistic (plus ``extra`` series, e.g. new-task accuracy, shown as a running
    mean over ``smooth`` tasks), one line per run."""
    from clight.plots import _pyplot, save_figure

    plt = _pyplot()
    panels = ([("new_task_accuracy", extra)] if extra else []) + [(k, None) for k in KEYS]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, series) in zip(axes, panels):
        for name, hist in runs.items():
            if series is not None:
                ys = _smooth(series.get(name, []), smooth)
                ax.plot(range(len(ys)), ys, label=name)
            else:  # histories written before a statistic existed lack it
                ax.plot([h["task"] for h in hist if key in h], [h[key] for h in hist if key in h], label=name)
        ax.set_title(key.replace("_", " ") + (f" ({smooth}-task mean)" if series is not None and smooth > 1 else ""))
        ax.set_xlabel("task")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path
