"""The two options every benchmark script takes (a helper module, not a benchmark itself).

``--smoke``: tiny sizes and a few steps, so the script runs in seconds (``tests/test_benchmarks.py``
runs every script this way); its figures mean nothing. ``--out DIR``: the folder the JSON goes
to (default ``benchmarks/results``). A smoke run never writes there: without ``--out`` it writes
to a new temporary folder, and ``--out benchmarks/results`` with ``--smoke`` is refused.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks the script runs (seconds)")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for the JSON (default {RESULTS})")


def smoke_sizes(args: argparse.Namespace, **sizes) -> None:
    """With ``--smoke``, replace the given options by their tiny values."""
    if args.smoke:
        for name, value in sizes.items():
            setattr(args, name, value)


def result_file(args: argparse.Namespace, name: str) -> Path:
    """``DIR/name``, the folder created; a smoke run's folder is never ``benchmarks/results``."""
    if args.out is None:
        folder = Path(tempfile.mkdtemp(prefix="clight-smoke-")) if args.smoke else RESULTS
    else:
        folder = Path(args.out)
    if folder.suffix == ".json":
        raise SystemExit(f"--out takes a folder (the JSON is {name} in it), got the file name {folder}")
    if args.smoke and folder.resolve() == RESULTS:
        raise SystemExit(f"a --smoke run never writes into {RESULTS}: give --out another folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
