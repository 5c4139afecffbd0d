"""``clight compare``: the command line of ``compare_configs`` and ``compare_runs``."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional, Sequence

from clight.config_errors import OneLineParser

DESCRIPTION = """Run (or resume) configs that share one task sequence and seed, then write one
comparison table (comparison.md, comparison.csv, comparison.json) and one figure
(comparison.png) to --out. Finished runs are read, not re-run; unfinished ones are resumed;
missing ones are started. Any `clight fit` override (--key=value, or --set key=value) applies
to every config.

  clight compare configs/fmnist_*.yaml --out benchmarks/results/fmnist
  clight compare configs/fmnist_*.yaml --out /tmp/fmnist_small --run_root runs/small --trainer.max_epochs=1
  clight compare --runs runs/a runs/b --out /tmp/ab            # finished run folders, no configs
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="clight compare", description=DESCRIPTION, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="*", help="config files (as for clight fit --config)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="RUN_DIR", help="finished run folders to tabulate instead")
    parser.add_argument("--out", required=True, help="folder for comparison.{md,csv,json,png}")
    parser.add_argument("--run_root", default=None, help="run every config in RUN_ROOT/<config stem> instead of its own run_dir")
    parser.add_argument(
        "--names", nargs="+", default=None, help="the runs' names in the table (default: config stems or folder names)"
    )
    parser.add_argument(
        "--window", type=int, default=None, help="tasks averaged for new-task accuracy, first and last (default: min(10, T/2))"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a clight fit override for every config")
    return parser


def fit_overrides(unknown: Sequence[str], sets: Sequence[str]) -> list[str]:
    """``--key=value`` arguments passed through to ``clight fit``; ``--set key=value`` becomes ``--key=value``."""
    overrides = []
    for arg in unknown:
        if not (arg.startswith("--") and "=" in arg):
            raise ValueError(
                f"clight compare: {arg!r} is not an option; write clight fit overrides as --key=value "
                "(e.g. --trainer.max_epochs=1), or --set key=value"
            )
        overrides.append(arg)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set trainer.max_epochs=1")
        overrides.append("--" + item.lstrip("-"))
    return overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    from clight.compare.comparison import OUTPUTS, compare_configs, compare_runs

    argv = list(argv or [])
    args, unknown = build_parser().parse_known_intermixed_args(argv)
    overrides = fit_overrides(unknown, args.set)
    command = "clight compare " + shlex.join(argv)
    if args.runs is not None:
        if args.configs or overrides or args.run_root:
            raise ValueError(
                "clight compare --runs tabulates finished run folders: configs, overrides and --run_root "
                "do not apply (pass configs without --runs to run them)"
            )
        result = compare_runs(args.runs, args.out, args.names, command, args.window)
    elif args.configs:
        result = compare_configs(args.configs, args.out, overrides, args.run_root, args.names, command, args.window)
    else:
        raise ValueError("clight compare needs configs (clight compare A.yaml B.yaml --out DIR) or --runs RUN_DIR ... --out DIR")
    from clight.distributed import is_rank_zero

    if is_rank_zero():
        for warning in result.warnings:
            print(f"clight compare: warning: {warning}", file=sys.stderr)
        print(result.markdown)
        print("written: " + ", ".join(str(result.out / name) for name in OUTPUTS))
    return 0
