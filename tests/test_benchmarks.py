"""Every benchmark script runs: each ``benchmarks/*.py`` (found by glob, so a script added later is
included) in its smoke mode (``--smoke``: tiny sizes, a few steps) in a subprocess, writing its
JSON into a temporary ``--out`` folder and never into benchmarks/results."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

#: modules under benchmarks/ that are not benchmark scripts, and where they are exercised
NOT_SCRIPTS = {
    "common.py": "the --smoke / --out options every script takes (imported by each)",
    "handwritten_cl.py": "overhead.py's hand-written baseline: run in-process and as a process by overhead.py's smoke run",
    "bare_lightning.py": "overhead.py's smallest Lightning program: run by overhead.py's smoke run",
    "handwritten_plasticity.py": "overhead.py's hand-written plasticity loop: run in-process by overhead.py's smoke run",
    "clight_arms.py": "overhead.py's clight runs (split and plasticity protocols, Fisher passes): run by overhead.py",
    "costs.py": "overhead.py's per-row timing of a clight run: run by overhead.py's smoke run",
}
#: every benchmark script, each run below in its smoke mode (the glob finds them; this list makes a
#: script that disappears, or one added without a look at its smoke mode, fail by name)
SCRIPTS = {
    "clr.py",
    "ddas_calibration.py",
    "gere.py",
    "lm_eval.py",
    "lora_family.py",
    "moe_adapters.py",
    "overhead.py",
    "plasticity.py",
    "scale.py",
    "seed_summary.py",
    "spu.py",
    "zoo_cost.py",
}
#: scripts whose smoke run starts two processes (ranks)
DDP = {"scale.py"}
#: scripts that read Fashion-MNIST (skipped, with the reason, where it is not installed)
NEEDS_FASHION_MNIST = {"overhead.py"}


def scripts() -> list:
    """Every script, marked slow: a smoke run is a process that pays its own imports (torch,
    Lightning, transformers: 7 to 9 s of CPU before its first step), so none is under ~10 s."""
    found = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in NOT_SCRIPTS)
    return [pytest.param(name, marks=[pytest.mark.slow, *([pytest.mark.ddp] if name in DDP else [])]) for name in found]


def test_the_scripts_found_are_the_listed_ones():
    found = {p.name for p in BENCHMARKS.glob("*.py") if p.name not in NOT_SCRIPTS}
    assert found == SCRIPTS, f"update SCRIPTS: found {sorted(found - SCRIPTS)} new, {sorted(SCRIPTS - found)} gone"


def test_the_modules_that_are_not_scripts_exist():
    assert all((BENCHMARKS / name).exists() for name in NOT_SCRIPTS), "remove a deleted helper from NOT_SCRIPTS"


@pytest.mark.parametrize("script", scripts())
def test_every_benchmark_script_runs_in_smoke_mode(tmp_path, script):
    if script in NEEDS_FASHION_MNIST and not FASHION_MNIST.exists():
        pytest.skip(f"{script} reads Fashion-MNIST ({FASHION_MNIST.parent}): apt-get install dataset-fashion-mnist")
    before = {p: p.stat().st_mtime_ns for p in RESULTS.rglob("*")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCHMARKS.parent)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stderr[-3000:]}"
    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1, f"{script} wrote {written} into --out"
    assert json.loads(written[0].read_text())
    assert {p: p.stat().st_mtime_ns for p in RESULTS.rglob("*")} == before  # benchmarks/results untouched


def test_a_smoke_run_never_writes_into_the_results(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_common", BENCHMARKS / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    with pytest.raises(SystemExit, match="never writes into"):
        common.result_file(argparse.Namespace(smoke=True, out=RESULTS), "x.json")
    assert common.result_file(argparse.Namespace(smoke=True, out=None), "x.json").parent != RESULTS
    assert common.result_file(argparse.Namespace(smoke=False, out=tmp_path / "r"), "x.json") == tmp_path / "r" / "x.json"
    with pytest.raises(SystemExit, match="takes a folder"):
        common.result_file(argparse.Namespace(smoke=False, out=tmp_path / "x.json"), "x.json")
