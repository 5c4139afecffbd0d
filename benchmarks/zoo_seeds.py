"""Mean and standard deviation over seeds of ``clight compare`` tables that differ only in the seed.

``clight compare`` puts runs of one task sequence side by side, and the seed is part of the
sequence, so every seed gets its own comparison (``--seed_everything=S --run_root ...``). This
script reads their ``comparison.json`` files and writes one table per setting: for every method
(the same names in every comparison), AA, BWT, forgetting, intransigence and wall time as
mean +- standard deviation over the seeds (sample standard deviation, n - 1), and AA per seed.

    python benchmarks/zoo_seeds.py --name class_incremental --out benchmarks/results/zoo \\
        benchmarks/results/zoo/ci_seed0 benchmarks/results/zoo/ci_seed1 benchmarks/results/zoo/ci_seed2
    python benchmarks/zoo_seeds.py --smoke --out /tmp/zoo_seeds   # the committed comparisons, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "results" / "zoo"
FIGURES = {
    "average_accuracy": ("AA", 100.0),
    "backward_transfer": ("BWT", 100.0),
    "forgetting": ("forgetting", 100.0),
    "intransigence": ("intransigence", 100.0),
    "wall_time_seconds": ("wall time (s)", 1.0),
}


def summary(values: list[Optional[float]]) -> Optional[dict]:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"mean": statistics.fmean(present), "std": statistics.stdev(present) if len(present) > 1 else 0.0, "n": len(present)}


def aggregate(folders: list[Path]) -> dict:
    comparisons = [json.loads((folder / "comparison.json").read_text()) for folder in folders]
    seeds = [c["task_sequence"]["seed"] for c in comparisons]
    names = [row["method"] for row in comparisons[0]["rows"]]
    for folder, c in zip(folders, comparisons):
        if [row["method"] for row in c["rows"]] != names:
            raise SystemExit(f"{folder} compares other methods than {folders[0]}: give every seed the same configs and --names")
    methods = {}
    for i, name in enumerate(names):
        rows = [c["rows"][i] for c in comparisons]
        methods[name] = {key: summary([row.get(key) for row in rows]) for key in FIGURES}
        methods[name]["average_accuracy_per_seed"] = [row.get("average_accuracy") for row in rows]
    return {
        "seeds": seeds,
        "comparisons": [str(f) for f in folders],
        "commands": [c["command"] for c in comparisons],
        "methods": methods,
    }


def markdown(result: dict, name: str) -> str:
    head = ["method", *(label for label, _ in FIGURES.values()), "AA per seed"]
    lines = [f"# {name}: mean +- std over seeds {result['seeds']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, figures in result["methods"].items():
        cells = [method]
        for key, (_, scale) in FIGURES.items():
            s = figures[key]
            cells.append("n/a" if s is None else f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}")
        cells.append(", ".join("n/a" if v is None else f"{100 * v:.1f}" for v in figures["average_accuracy_per_seed"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracies in %, BWT, forgetting and intransigence in percentage points; std is the sample standard deviation.",
    ]
    lines += ["", "Produced from:", ""] + [f"- `{c}`" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="clight compare output folders, one per seed")
    parser.add_argument("--name", default="class_incremental", help="the setting, for the file names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="aggregate the committed class-incremental comparisons")
    args = parser.parse_args()
    folders = args.folders or sorted(RESULTS.glob("ci_seed*"))
    if len(folders) < 1 or not all((f / "comparison.json").exists() for f in folders):
        raise SystemExit(f"no comparison.json in {[str(f) for f in folders]}: run the clight compare commands first")
    result = aggregate(folders)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}_seeds.md").write_text(markdown(result, args.name))
    print(markdown(result, args.name))


if __name__ == "__main__":
    main()
