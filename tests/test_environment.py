"""The environment a run ran in: recorded in manifest.json (and again when resumed elsewhere),
shown by clight report, compared by clight compare."""

import json
import platform
import sys
from types import SimpleNamespace

import lightning
import numpy
import torch
from conftest import small_model, small_sequence
from rich.console import Console

from clight import SequenceRunner
from clight.compare.environments import environment_notes
from clight.environment import differences, environment, with_current
from clight.report import format_report


def test_the_environment_is_in_the_manifest_and_the_report(tmp_path):
    run_dir = tmp_path / "run"
    trainer = dict(accelerator="cpu", max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    SequenceRunner(small_model(), small_sequence(2), trainer=trainer, run_dir=str(run_dir), max_steps_per_task=2).run()
    (env,) = json.loads((run_dir / "manifest.json").read_text())["environments"]
    assert env["python"] == platform.python_version() and env["executable"] == sys.executable
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["packages"]["lightning"] == lightning.__version__ and env["packages"]["numpy"] == numpy.__version__
    assert env["torch_threads"] == torch.get_num_threads() and env["gpus"] == []
    console = Console(width=400, record=True)
    console.print(format_report(run_dir))
    line = next(row for row in console.export_text().splitlines() if row.lstrip("│ ").startswith("environment"))
    assert f"torch {env['packages']['torch']}" in line and f"Python {env['python']}" in line


def test_a_resume_elsewhere_is_recorded_and_only_result_keys_count():
    here = environment()
    assert with_current([here]) == [here]  # resumed in the same environment: nothing added
    other = {**here, "hostname": "elsewhere", "packages": {**here["packages"], "numpy": "1.0.0"}}
    assert differences(here, other) == {"packages.numpy": (here["packages"]["numpy"], "1.0.0")}  # hostname is not one
    assert with_current([other]) == [other, here]


def _record(tmp_path, name: str, environments: list) -> SimpleNamespace:
    (tmp_path / name).mkdir()
    (tmp_path / name / "manifest.json").write_text(json.dumps({"environments": environments}))
    return SimpleNamespace(name=name, run_dir=tmp_path / name)


def test_compare_warns_when_runs_come_from_different_environments(tmp_path):
    here = environment()
    older = {**here, "torch_threads": here["torch_threads"] + 3}
    same = [_record(tmp_path, "a", [here]), _record(tmp_path, "b", [here])]
    notes, warnings = environment_notes(same)
    assert warnings == [] and notes[0].startswith("Environment (every run): Python")
    mixed = [_record(tmp_path, "c", [here]), _record(tmp_path, "d", [older]), _record(tmp_path, "e", [])]
    notes, warnings = environment_notes(mixed)
    assert warnings == [
        f"d ran in another environment than c: torch_threads {here['torch_threads']} vs {older['torch_threads']}",
        "e: no environment recorded (a run folder written before clight recorded it)",
    ]
    assert all(n.startswith("Warning: ") for n in notes)
