"""Control measures: what a run logged about the model besides task accuracy (how much of what
it knew it kept, how plastic it stayed), as one record per measure with a before and an after.

Two ways a run declares a control, read in this order:

1. generic: a method's or the model's ``describe()`` (stored in ``metrics.json``) holds
   ``"controls": {name: {"before": x or None, "per_task": [after task 1, ...],
   "lower_is_better": bool or None, "what": "..."}}``;
2. a registered control file in the run folder (``CONTROL_FILES``): ``general_perplexity.json``
   (``GeneralPerplexity``) and ``plasticity.json`` (``PlasticityMonitor``). A new file format
   is one reader added with ``register_control_file``.

A control named by both is taken from ``describe()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from clight.io import read_json


@dataclass(frozen=True)
class Control:
    """One measure over the sequence: ``before`` (before the first task, or after the first task
    where nothing was measured earlier: ``before_label`` says which), ``per_task`` (after each
    task), and where it came from."""

    name: str
    what: str
    per_task: tuple[float, ...]
    before: Optional[float] = None
    lower_is_better: Optional[bool] = None
    source: str = ""

    @property
    def before_label(self) -> str:
        return "before the first task" if self.before is not None else "after the first task"

    @property
    def start(self) -> Optional[float]:
        """The first value: before the first task where measured, else after the first task."""
        if self.before is not None:
            return self.before
        return self.per_task[0] if self.per_task else None

    @property
    def after(self) -> Optional[float]:
        return self.per_task[-1] if self.per_task else None

    @property
    def change(self) -> Optional[float]:
        if self.start is None or self.after is None:
            return None
        return self.after - self.start

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "per_task": list(self.per_task),
            "start": self.start,
            "start_label": self.before_label,
            "after": self.after,
            "change": self.change,
        }


ControlReader = Callable[[Path], list[Control]]
CONTROL_FILES: dict[str, ControlReader] = {}


def register_control_file(filename: str) -> Callable[[ControlReader], ControlReader]:
    """Register ``reader(path) -> [Control, ...]`` for a file a method writes into its run folder."""

    def register(reader: ControlReader) -> ControlReader:
        CONTROL_FILES[filename] = reader
        return reader

    return register


def _finite(values: Any) -> tuple[float, ...]:
    return tuple(float(v) if v is not None else math.nan for v in values)


@register_control_file("general_perplexity.json")
def _general_perplexity(path: Path) -> list[Control]:
    data = read_json(path)
    controls = [
        Control(
            "general_perplexity",
            "perplexity on held-out general text (GeneralPerplexity)",
            _finite(data.get("after_task", [])),
            data.get("before_first_task"),
            True,
            path.name,
        )
    ]
    other = data.get("control")
    if other:
        controls.append(
            Control(
                "control_text_perplexity",
                f"perplexity on {other.get('source')} text, another domain than the general text and never replayed "
                "(GeneralPerplexity, data.control_text)",
                _finite(other.get("after_task", [])),
                other.get("before_first_task"),
                True,
                path.name,
            )
        )
    return controls


PLASTICITY_STATISTICS = {
    "dead_fraction": ("hidden units that output 0 on every probe sample", True),
    "dormant_fraction": ("hidden units active on under 1% of probe entries", True),
    "effective_rank": ("effective rank of the penultimate representation", False),
    "stable_rank": ("stable rank (srank_0.01) of the penultimate representation", False),
    "weight_magnitude": ("mean |w| over the weight matrices", None),
}


@register_control_file("plasticity.json")
def _plasticity(path: Path) -> list[Control]:
    history = sorted(read_json(path), key=lambda h: h["task"])
    controls = []
    for key, (what, lower) in PLASTICITY_STATISTICS.items():
        if history and all(key in h for h in history):  # histories written before a statistic existed lack it
            controls.append(Control(key, f"{what} (PlasticityMonitor)", _finite(h[key] for h in history), None, lower, path.name))
    return controls


def _declared(describes: list[dict]) -> list[Control]:
    controls = []
    for info in describes:
        for name, entry in (info.get("controls") or {}).items():
            source = f"{info.get('class', '?')}.describe()"
            controls.append(
                Control(
                    name,
                    entry.get("what", name),
                    _finite(entry.get("per_task", [])),
                    entry.get("before"),
                    entry.get("lower_is_better"),
                    source,
                )
            )
    return controls


def read_controls(run_dir: Path, metrics: dict) -> list[Control]:
    """Every control the run in ``run_dir`` logged (see the module docstring)."""
    describes = [metrics.get("model") or {}, *(metrics.get("methods") or [])]
    controls = {c.name: c for c in _declared(describes)}
    for filename, reader in CONTROL_FILES.items():
        path = Path(run_dir) / filename
        if path.exists():
            for control in reader(path):
                controls.setdefault(control.name, control)
    return list(controls.values())
