"""From configs to finished runs: where each config's run lives, what state it is in, whether
the folder holds the run the config asks for, then start or resume what is not finished.

Everything that can be refused is checked for every config before any run starts: the config
itself (parsed as ``clight fit`` parses it), two configs sharing one folder, a folder holding a
run of a different config, a folder that cannot be written or is in use by a live run, and task
sequences that differ (``--out`` is checked before all of them).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from clight.compare.record import read_manifest, task_sequence
from clight.contract import ConfigError
from clight.io import read_json, unwritable_reason
from clight.shorten import short_repr, shorten

#: keys whose value does not change what a run computes (where it is written, how it is shown)
NOT_COMPARED = ("run_dir", "resume", "trainer.enable_progress_bar")
STATUS_AFTER = {"finished": "read", "unfinished": "resumed", "missing": "started"}


@dataclass
class PlannedRun:
    name: str
    config: Path
    fit_args: list[str]  # the `clight fit` arguments that produce this run
    run_dir: Path
    state: str  # finished | unfinished | missing
    sequence: Optional[dict] = None

    @property
    def status(self) -> str:
        return STATUS_AFTER[self.state]


def run_state(run_dir: Path) -> str:
    manifest = read_manifest(run_dir)
    if manifest is None:  # nothing trained: a run writes its manifest before its first fit
        return "missing"
    return "finished" if manifest.get("status") == "finished" else "unfinished"


def config_differences(stored: Any, requested: Any, prefix: str = "") -> list[str]:
    """Keys set in both configs to different values (keys only one side has are new or retired
    options, not differences), as ``key: stored vs requested`` lines."""
    if isinstance(stored, dict) and isinstance(requested, dict):
        keys = [k for k in stored if k in requested and f"{prefix}{k}" not in NOT_COMPARED]
        return [d for k in keys for d in config_differences(stored[k], requested[k], f"{prefix}{k}.")]
    if isinstance(stored, list) and isinstance(requested, list) and len(stored) == len(requested):
        return [d for i, (a, b) in enumerate(zip(stored, requested)) for d in config_differences(a, b, f"{prefix[:-1]}[{i}].")]
    if stored != requested:
        return [f"{shorten(prefix[:-1])}: {short_repr(stored)} in the run folder, {short_repr(requested)} asked for"]
    return []


def _parse(parser: Any, config: Path, fit_args: list[str]) -> Any:
    from clight.fit_config import parse_fit_args

    try:
        return parse_fit_args(parser, fit_args)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{config}: {exc}") from None


def _data_sequence(cfg: Any) -> dict:
    """The task sequence a config describes, from its data section alone (no model is built)."""
    from jsonargparse import ArgumentParser, Namespace

    from clight.data.datamodule import TaskSequence

    parser = ArgumentParser()
    parser.add_subclass_arguments(TaskSequence, "data")
    return task_sequence(parser.instantiate(Namespace(data=cfg.data)).data.describe())


def plan_runs(
    configs: Sequence[str], overrides: Sequence[str] = (), run_root: Optional[str] = None, names: Optional[Sequence[str]] = None
) -> list[PlannedRun]:
    """Parse every config (with ``overrides``), find its run folder and its state, and refuse a
    folder that holds a run of a different config. Nothing is trained or written."""
    from clight.fit_config import build_fit_parser

    if names is not None and len(names) != len(configs):
        raise ConfigError(f"--names gives {len(names)} names for {len(configs)} configs")
    parser = build_fit_parser()
    parser.exit_on_error = False
    plans: list[PlannedRun] = []
    for i, config in enumerate(map(Path, configs)):
        if not config.exists():
            raise FileNotFoundError(f"config {config} does not exist")
        fit_args = ["--config", str(config), *overrides]
        if run_root is not None:
            fit_args.append(f"--run_dir={Path(run_root) / config.stem}")
        cfg = _parse(parser, config, fit_args)
        run_dir = Path(cfg.run_dir)
        plan = PlannedRun(names[i] if names else config.stem, config, fit_args, run_dir, run_state(run_dir))
        _check_folder(plan, yaml.safe_load(parser.dump(cfg, skip_unset=False)))
        _check_usable(plan)
        plan.sequence = (
            task_sequence(read_json(run_dir / "metrics.json")["data"]) if plan.state == "finished" else _data_sequence(cfg)
        )
        plans.append(plan)
    _check_distinct(plans)
    return plans


def _check_folder(plan: PlannedRun, requested: dict) -> None:
    stored_path = plan.run_dir / "config.yaml"
    if plan.state == "missing" or not stored_path.exists():
        return
    diffs = config_differences(yaml.safe_load(stored_path.read_text()), requested)
    if diffs:
        raise ConfigError(
            f"{plan.run_dir} holds a run of another config than {plan.config} (with these overrides) asks for:\n  "
            + "\n  ".join(diffs)
            + "\nGive the comparison its own folders with --run_root FOLDER, or remove the old run folder."
        )


def _check_usable(plan: PlannedRun) -> None:
    """A folder a run will write to must be writable, and no folder may be in use by a live run."""
    from clight.runner.lock import FolderLock
    from clight.runner.run_folder import RunFolder, RunFolderError

    if plan.state != "finished":
        RunFolder(plan.run_dir).check_writable()
    lock = FolderLock(plan.run_dir)
    if lock.live_holder() is not None:
        raise RunFolderError(lock.in_use())


def check_output(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written (a file, inside a file, not writable) before anything runs."""
    reason = unwritable_reason(out)
    if reason is not None:
        raise ConfigError(f"--out {out}: {reason}. Choose a folder you can write to.")


def _check_distinct(plans: list[PlannedRun]) -> None:
    seen: dict[Path, str] = {}
    for plan in plans:
        folder = plan.run_dir.resolve()
        if folder in seen:
            raise ConfigError(
                f"{seen[folder]} and {plan.config} both write to {plan.run_dir}: give them their own "
                "run_dir, or use --run_root FOLDER (one subfolder per config)"
            )
        seen[folder] = str(plan.config)
    require_distinct_names([p.name for p in plans], "rename a config or pass --names")


def require_distinct_names(names: Sequence[str], remedy: str) -> None:
    """Every run needs its own name: the table's rows, the CSV's keys and the figure's colours go by it."""
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs would share a name in the table ({list(names)}): {remedy}")


def execute(plans: list[PlannedRun]) -> None:
    """Start the missing runs and resume the unfinished ones, in order; finished runs are left as they are."""
    from rich.console import Console

    from clight.distributed import is_rank_zero
    from clight.fit_config import runner_from_args

    console = Console(stderr=True)
    todo = [p for p in plans if p.state != "finished"]
    for n, plan in enumerate(todo, 1):
        if is_rank_zero():
            verb = "resuming" if plan.state == "unfinished" else "starting"
            console.rule(f"[bold magenta]compare: run {n}/{len(todo)} · {verb} {plan.name} ({plan.config} → {plan.run_dir})")
        resume = [f"--resume={plan.run_dir}"] if plan.state == "unfinished" else []
        runner_from_args(plan.fit_args + resume).run()
