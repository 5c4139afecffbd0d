"""``compare_configs`` (run or resume what is missing, then tabulate) and ``compare_runs``
(tabulate finished run folders): both write ``comparison.{md,csv,json,png}`` to ``out``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from clight.compare.environments import environment_notes
from clight.compare.figure import plot_comparison
from clight.compare.groups import figure_columns, group_markdown, group_notes, group_rows, group_runs, run_figures
from clight.compare.plan import check_output, execute, plan_runs, require_distinct_names
from clight.compare.record import RunRecord, check_same_sequence, read_run
from clight.compare.table import build_rows, notes, to_csv, to_markdown
from clight.distributed import is_rank_zero
from clight.io import write_json_atomic, write_text_atomic

PathLike = Union[str, Path]
OUTPUTS = ("comparison.md", "comparison.csv", "comparison.json", "comparison.png")


@dataclass
class Comparison:
    records: list[RunRecord]
    rows: list[dict]
    layout: dict
    markdown: str
    out: Path
    #: runs from different environments (``clight.compare.environments``); also in the notes
    warnings: list[str] = field(default_factory=list)


def equivalent_command(
    sources: Sequence[PathLike],
    out: PathLike,
    runs: bool = False,
    overrides: Sequence[str] = (),
    run_root: Optional[PathLike] = None,
    names: Optional[Sequence[str]] = None,
    window: Optional[int] = None,
) -> str:
    """The ``clight compare`` command line that does what a Python call did (for the notes)."""
    args = (["--runs"] if runs else []) + [str(s) for s in sources] + ["--out", str(out)]
    args += (["--run_root", str(run_root)] if run_root is not None else []) + list(overrides)
    args += (["--names", *names] if names else []) + (["--window", str(window)] if window else [])
    return "clight compare " + shlex.join(args)


def write_comparison(records: list[RunRecord], out: PathLike, command: str, window: Optional[int] = None) -> Comparison:
    """Check that the runs share one task sequence, then write the table (with ``command``, the
    command that produced it), CSV, JSON and figure."""
    check_same_sequence([(r.name, r.sequence) for r in records])
    rows, layout = build_rows(records, window)
    groups = group_runs(records)
    for g in groups:
        for r in g.members:
            next(row for row in rows if row["method"] == r.name)["group"] = g.name
    table = to_markdown(rows, layout)
    environment, warnings = environment_notes(records)
    lines = notes(records, rows, layout) + environment
    text = "\n".join(
        ["# Comparison", "", "Produced by", "", "```bash", command, "```", "", table, "", *[f"- {n}" for n in lines], ""]
    )
    grouped: list[dict] = []
    if any(len(g.members) > 1 for g in groups):
        by_name = {r.name: run_figures(r, row) for r, row in zip(records, rows)}
        columns = figure_columns(records, layout)
        grouped = group_rows(groups, by_name, [key for _, key in columns])
        text += "\n".join(
            ["", "## Mean ± standard deviation over seeds and task orders", "", group_markdown(grouped, columns), ""]
        )
        text += "\n".join(["", *[f"- {n}" for n in group_notes(groups)], ""])
    out = Path(out)
    if is_rank_zero():  # compare_runs may be called on every rank of a distributed job
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "comparison.md", text)
        write_text_atomic(out / "comparison.csv", to_csv(rows))
        write_json_atomic(
            out / "comparison.json",
            {
                "command": command,
                "task_sequence": records[0].sequence,
                **layout,
                "notes": lines,
                "rows": rows,
                "groups": grouped,
                "runs": [_run_json(r) for r in records],
            },
        )
        plot_comparison(records, out / "comparison.png")
    return Comparison(records, rows, layout, text, out, warnings)


def _run_json(r: RunRecord) -> dict:
    trainable, source = r.trainable()
    return {
        "name": r.name,
        "run_dir": str(r.run_dir),
        "status": r.status,
        "schedule": r.schedule,
        "final_accuracy": r.final_accuracy,
        "new_task_accuracy": r.new_task_accuracy,
        "accuracy_matrix": [[None if v != v else v for v in row] for row in r.matrix.tolist()],
        "metrics": {k: v for k, v in r.metrics.items() if k not in ("model", "data", "methods")},
        "controls": [c.as_dict() for c in r.controls],
        "routing_shares": r.routing.as_dict() if r.routing is not None else None,
        "trainable_per_task": trainable,
        "trainable_source": source,
    }


def compare_runs(
    run_dirs: Sequence[PathLike],
    out: PathLike,
    names: Optional[Sequence[str]] = None,
    command: Optional[str] = None,
    window: Optional[int] = None,
) -> Comparison:
    """Tabulate finished run folders (an unfinished one is refused, with the command that resumes it)."""
    check_output(Path(out))
    if names is not None and len(names) != len(run_dirs):
        raise ValueError(f"--names gives {len(names)} names for {len(run_dirs)} run folders")
    records = [read_run(d, names[i] if names else None) for i, d in enumerate(run_dirs)]
    require_distinct_names([r.name for r in records], "pass --names with one name per run folder")
    return write_comparison(records, out, command or equivalent_command(run_dirs, out, True, names=names, window=window), window)


def compare_configs(
    configs: Sequence[PathLike],
    out: PathLike,
    overrides: Sequence[str] = (),
    run_root: Optional[PathLike] = None,
    names: Optional[Sequence[str]] = None,
    command: Optional[str] = None,
    window: Optional[int] = None,
) -> Comparison:
    """Run every config (``overrides`` applied to each, as ``clight fit --config C OVERRIDES`` would),
    reading finished runs and resuming unfinished ones, then tabulate them. Every config is checked
    (parse, run folder, task sequence) before any run starts. With several processes, only rank 0
    returns the comparison (the others return an empty one)."""
    check_output(Path(out))
    plans = plan_runs([str(c) for c in configs], overrides, None if run_root is None else str(run_root), names)
    sequences = [(p.name, p.sequence) for p in plans if p.sequence is not None]
    assert len(sequences) == len(plans)  # plan_runs reads every run's sequence
    check_same_sequence(sequences)
    execute(plans)
    if not is_rank_zero():  # rank 0 writes the run folders and the comparison; the others would race it
        return Comparison([], [], {}, "", Path(out))
    records = [read_run(p.run_dir, p.name, p.status) for p in plans]
    command = command or equivalent_command(configs, out, False, overrides, run_root, names, window)
    return write_comparison(records, out, command, window)
