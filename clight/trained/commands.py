"""``clight test``, ``clight predict`` and ``clight export``: a finished run's model scored on its
task sequence, run on new inputs, written as files (Lightning's subcommand names)."""

from __future__ import annotations

import argparse
from typing import Sequence

from clight.config_errors import OneLineParser


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"clight {prog}", description=description, allow_abbrev=False)
    parser.add_argument("run_dir", help="the run folder (its run_dir)")
    parser.add_argument("--config", default=None, help="the config to rebuild it with (default: the run folder's)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)} ({parser.prog} --help lists the options)")
    return args


def test(argv: Sequence[str]) -> int:
    """Score the run's model on every task's test split and print the row beside the one the run recorded."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from clight.evaluation import evaluate_tasks
    from clight.trained.restore import open_run

    args = _parse(_parser("test", "Score a finished run's model on every task's test split."), argv)
    run = open_run(args.run_dir, args.config)
    row = evaluate_tasks(run.model, run.data)["correct"]
    recorded = run.progress.matrices["correct"][-1] if run.progress.matrices.get("correct") else None
    table = Table(title=f"test accuracy (%) of {args.run_dir} after {len(run.finished_tasks)} task(s)")
    table.add_column("")
    for task in run.data.tasks:
        table.add_column(task.name[:12])
    table.add_row("now", *[f"{100 * a:.1f}" for a in row])
    if recorded is not None:
        table.add_row("recorded", *[f"{100 * a:.1f}" for a in recorded])
    Console().print(table)
    if recorded is not None and not np.allclose(row, recorded, equal_nan=True):
        print("clight test: the scores differ from the recorded row (another environment or config: clight report shows both)")
    return 0


def predict(argv: Sequence[str]) -> int:
    """Print the run's predictions for the inputs in a file, one per line."""
    from clight.trained.predict import predict as run_predict
    from clight.trained.predict import read_inputs
    from clight.trained.restore import load_run

    parser = _parser("predict", "A finished run's predictions on new inputs, one per line.")
    parser.add_argument("--inputs", required=True, help=".pt or .npy tensor of inputs (a classifier), or text: one prompt a line")
    parser.add_argument("--task", type=int, default=None, help="the task id of every input (a task-incremental model)")
    args = _parse(parser, argv)
    inputs = read_inputs(args.inputs)
    for prediction in run_predict(load_run(args.run_dir, args.config), inputs, args.task):
        print(prediction if isinstance(prediction, int) else repr(prediction)[1:-1])
    return 0


def export(argv: Sequence[str]) -> int:
    """Write the run's model as files (``clight.export_run``)."""
    from clight.trained.export import export_run

    parser = _parser("export", "Write a finished run's model as files anyone can load without clight.")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--no_merge", action="store_true", help="keep LoRA out of hf/ (it is in adapter/ either way)")
    args = _parse(parser, argv)
    for name, what in export_run(args.run_dir, args.out, merge=not args.no_merge, config=args.config).items():
        print(f"{args.out}/{name}: {what}")
    return 0
