"""Compare plasticity runs: new-task accuracy and the PlasticityMonitor's statistics over a long
sequence. A thin wrapper over ``clight compare`` (``clight.compare``), kept for scripts and the
notebook; the command that writes the full comparison (md, CSV, JSON, figure) is

    clight compare configs/plasticity_*.yaml --out benchmarks/results/plasticity_sequence
    clight compare --runs runs/plasticity/* --out plasticity_comparison      # finished runs only

This module prints the markdown table of finished run folders and writes the figure to ``--plot``:

    python -m clight.methods.plasticity.compare runs/plasticity/* --plot plasticity.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence, Union

from clight.compare.figure import plot_comparison
from clight.compare.record import RunRecord, check_same_sequence, read_run
from clight.compare.table import build_rows, to_markdown


def load_run(run_dir: Union[str, Path]) -> RunRecord:
    """A finished run folder (metrics.json, manifest.json, plasticity.json)."""
    return read_run(Path(run_dir))


def compare(runs: Sequence[RunRecord], plot: Path, window: Optional[int] = 10) -> str:
    """The markdown table of ``runs`` (new-task accuracy over the first and last ``window`` tasks,
    every plasticity statistic first -> last); the figure is written to ``plot``."""
    runs = list(runs)
    check_same_sequence([(r.name, r.sequence) for r in runs])
    plot_comparison(runs, plot)
    rows, layout = build_rows(runs, window)
    return to_markdown(rows, layout)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--plot", type=Path, default=Path("plasticity_sequence.png"))
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args(argv)
    print(compare([load_run(r) for r in args.runs], args.plot, args.window))


if __name__ == "__main__":
    main()
