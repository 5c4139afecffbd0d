"""`clight compare`: tables equal to the run folders, unfinished runs resumed, mismatched task
sequences refused, controls and trainable parameters as the runs recorded them."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runner import KillAt, SimulatedKill

from clight.cli import main, runner_from_config
from clight.compare import SequenceMismatch, compare_configs, compare_runs, config_differences, read_run, sequence_differences
from clight.compare.record import trainable_per_task
from clight.contract import ConfigError

pytestmark = pytest.mark.xdist_group("test_compare.finished")  # its tests share the module's finished runs

CONFIG = """seed_everything: {seed}
run_dir: {run_dir}
model:
  class_path: clight.ContinualClassifier
  init_args:
    backbone:
      class_path: clight.MLP
      init_args: {{hidden_sizes: [32]}}
data:
  scenario:
    class_path: clight.SplitClasses
    init_args: {{source: digits, num_tasks: {num_tasks}, setting: class_incremental}}
  batch_size: 64
trainer: {{accelerator: cpu, devices: 1, max_epochs: 1, enable_progress_bar: false, deterministic: true}}
{extra}"""


def write_config(folder: Path, name: str, seed: int = 0, num_tasks: int = 2, extra: str = "", run_dir=None) -> Path:
    path = folder / f"{name}.yaml"
    text = CONFIG.format(seed=seed, run_dir=run_dir or folder / "runs" / name, num_tasks=num_tasks, extra=extra)
    if name.startswith("replay"):
        text = text.replace(
            "  batch_size: 64\n", "  batch_size: 64\n  replay: {memory: reservoir, capacity: 100, batch_size: 32}\n"
        )
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Three finished runs of one 2-task sequence, made as `clight fit --config` makes them."""
    folder = tmp_path_factory.mktemp("compare")
    configs = {
        name: write_config(folder, name, extra="runner: {baseline: joint}\n" if name == "joint" else "")
        for name in ("finetune", "replay", "joint")
    }
    for config in configs.values():
        runner_from_config(config).run()
    return folder, configs


def _read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_table_equals_the_run_folders(finished, tmp_path):
    folder, _ = finished
    runs = [folder / "runs" / n for n in ("finetune", "replay", "joint")]
    compare_runs(runs, tmp_path / "out", command="clight compare --runs ...")
    rows = _read_csv(tmp_path / "out" / "comparison.csv")
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        manifest = json.loads((run / "manifest.json").read_text())
        row, json_row = rows[run.name], next(r for r in table["rows"] if r["method"] == run.name)
        assert row["status"] == "read" and row["schedule"] == metrics["schedule"]["kind"]
        for key in ("average_accuracy", "backward_transfer", "forgetting", "wall_time_seconds"):
            expected = metrics[key]
            assert json_row[key] == expected
            assert (row[key] == "") if expected is None else (float(row[key]) == expected), key
        last_row = manifest["matrices"]["correct"][-1]
        assert [float(row[f"task_{j + 1}"]) for j in range(2)] == last_row
        assert row["trainable_per_task"] == ";".join(str(n) for n in metrics["trainable_parameters_per_task"])
    # MLP 64-32 and one class-incremental head over all 10 digits, counted by hand
    assert rows["finetune"]["trainable_per_task"] == f"{64 * 32 + 32 + 10 * 33};{64 * 32 + 32 + 10 * 33}"
    # intransigence against the joint run: I_k = a*_k - a[k][k], a* the joint run's only row
    joint = json.loads((runs[2] / "manifest.json").read_text())["matrices"]["correct"][0]
    a = json.loads((runs[0] / "manifest.json").read_text())["matrices"]["correct"]
    assert float(rows["finetune"]["intransigence"]) == pytest.approx(((joint[0] - a[0][0]) + (joint[1] - a[1][1])) / 2)
    assert rows["joint"]["intransigence"] == ""
    assert "joint run joint" in table["intransigence_reference"]
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    assert f"| replay | {100 * a_last(runs[1])[0]:.1f} |" in markdown
    assert f"{100 * metrics['average_accuracy']:.2f}" in markdown and "clight compare --runs ..." in markdown
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000


def a_last(run: Path) -> list[float]:
    return json.loads((run / "manifest.json").read_text())["matrices"]["correct"][-1]


def test_cli_reads_finished_runs_and_writes_md_csv_png(finished, tmp_path, capsys):
    folder, configs = finished
    manifests = {n: (folder / "runs" / n / "manifest.json").read_bytes() for n in configs}
    out = tmp_path / "out"
    assert main(["compare", str(configs["finetune"]), str(configs["replay"]), "--out", str(out)]) == 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (out / name).exists(), name
    assert {n: (folder / "runs" / n / "manifest.json").read_bytes() for n in configs} == manifests  # read, not re-run
    assert {r["status"] for r in _read_csv(out / "comparison.csv").values()} == {"read"}
    assert f"clight compare {configs['finetune']} {configs['replay']} --out {out}" in (out / "comparison.md").read_text()
    assert "| finetune |" in capsys.readouterr().out


def test_a_folder_holding_another_config_is_refused(finished, tmp_path, capsys):
    folder, configs = finished
    before = (folder / "runs" / "finetune" / "manifest.json").read_bytes()
    assert main(["compare", str(configs["finetune"]), "--out", str(tmp_path / "out"), "--trainer.max_epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs: 1 in the run folder, 2 asked for" in err and "--run_root" in err
    assert (folder / "runs" / "finetune" / "manifest.json").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_unfinished_run_is_resumed_not_restarted(tmp_path):
    config = write_config(tmp_path, "replay_killed")
    other = write_config(tmp_path, "finetune")
    runner = runner_from_config(config)
    runner.methods.append(KillAt(task=1, epoch=0, batch=2))  # killed inside the second task
    with pytest.raises(SimulatedKill):
        runner.run()
    run = tmp_path / "runs" / "replay_killed"
    killed = json.loads((run / "manifest.json").read_text())
    assert (
        killed["status"] == "failed" and killed["finished_fits"] == 1
    )  # an exception marks it failed (a SIGKILL leaves "running")
    result = compare_configs([config, other], tmp_path / "out")
    assert [r.status for r in result.records] == ["resumed", "started"]
    assert f"clight compare {config} {other} --out {tmp_path / 'out'}\n" in result.markdown  # the command line equivalent
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["finished_fits"] == 2
    assert manifest["wall_time_per_task"][0] == killed["wall_time_per_task"][0]  # task 1 was not trained again
    assert manifest["matrices"]["correct"][0] == killed["matrices"]["correct"][0]
    log = (run / "logs" / "metrics.csv").read_text().splitlines()
    column = log[0].split(",").index("cl/tasks_finished")
    assert [r.split(",")[column] for r in log[1:] if r.split(",")[column]] == ["1", "2"]
    # the resumed run ends where an uninterrupted run ends
    reference = runner_from_config(config, f"--run_dir={tmp_path / 'reference'}").run()
    np.testing.assert_array_equal(np.array(manifest["matrices"]["correct"], dtype=float), reference.accuracy_matrix)


def test_different_task_sequences_are_refused_before_anything_runs(tmp_path):
    a = write_config(tmp_path, "finetune")
    b = write_config(tmp_path, "other_seed", seed=1)  # the same tasks: a replicate, grouped, not refused
    c = write_config(tmp_path, "three_tasks", num_tasks=3)
    with pytest.raises(SequenceMismatch) as caught:
        compare_configs([a, b, c], tmp_path / "out")
    message = str(caught.value)
    assert "other_seed" not in message
    assert "three_tasks differs from finetune" in message and "number of tasks: 2 vs 3" in message
    assert "task 1 classes: [0, 1, 2, 3, 4] vs [0, 1, 2, 3]"  # 10 classes in 3 tasks: 4, 3, 3 in message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_sequence_differences_name_the_fields():
    task = {"name": "digits[0,1]", "classes": [0, 1], "train": 300, "val": 30, "test": 70}
    a = {"scenario": "SplitClasses", "setting": "class_incremental", "seed": 0, "tasks": [task, dict(task, name="digits[2,3]")]}
    b = dict(a, tasks=[dict(task, val=33), a["tasks"][1]])
    assert sequence_differences(a, a) == []
    assert sequence_differences(a, b) == ["task 1 val: 30 vs 33"]
    assert sequence_differences(a, dict(a, setting="task_incremental", tasks=a["tasks"][:1])) == [
        "setting: 'class_incremental' vs 'task_incremental'",
        "number of tasks: 2 vs 1",
    ]


def test_config_differences_ignore_where_a_run_is_written():
    stored = {
        "run_dir": "a",
        "trainer": {"max_epochs": 2, "enable_progress_bar": True},
        "methods": [{"init_args": {"alpha": 1.0}}],
        "model": {"retired_option": 1},
    }
    requested = {
        "run_dir": "b",
        "trainer": {"max_epochs": 2, "enable_progress_bar": False},
        "methods": [{"init_args": {"alpha": 0.5}}],
        "model": {"new_option": 2},
    }
    assert config_differences(stored, requested) == ["methods[0].init_args.alpha: 1.0 in the run folder, 0.5 asked for"]


def test_trainable_per_task_takes_what_the_run_recorded():
    runner_count = {"trainable_parameters_per_task": [10, 12], "model": {"class": "M", "trainable_parameters": 0}}
    assert trainable_per_task(runner_count) == ([10, 12], "trainable_parameters() counted by the runner at each task start")
    declared = dict(runner_count, methods=[{"class": "SPU", "trainable_per_task": 5}])
    assert trainable_per_task(declared) == (5, "SPU.describe()['trainable_per_task']")
    clr = dict(runner_count, model={"class": "CLRClassifier", "budget_per_task": {"trainable": 7}})
    assert trainable_per_task(clr)[0] == 7
    assert trainable_per_task({"model": {"trainable_parameters": 3}}) == (
        3,
        "trainable_parameters() at the end of the run (not per task)",
    )
    assert trainable_per_task({}) == (None, "not recorded")


def test_new_task_only_runs_and_plasticity_statistics(tmp_path):
    from conftest import QUIET_TRAINER, small_model

    from clight import PermutedInputs, SequenceRunner, TaskSequence
    from clight.methods.plasticity import PlasticityMonitor

    runs = []
    for evaluate in ("current", "all"):
        data = TaskSequence(PermutedInputs("digits", num_tasks=3, train_samples_per_task=96), batch_size=32, seed=0)
        runner = SequenceRunner(
            small_model(),
            data,
            [PlasticityMonitor(probe_size=32, plot=False)],
            trainer=dict(QUIET_TRAINER, max_epochs=1),
            run_dir=str(tmp_path / evaluate),
            evaluate=evaluate,
        )
        runs.append(runner.run().run_dir)
    result = compare_runs(runs, tmp_path / "out", window=2)
    row = result.rows[0]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    history = json.loads((runs[0] / "plasticity.json").read_text())
    assert row["new_task_accuracy_first_2"] == pytest.approx(np.mean(metrics["new_task_accuracy"][:2]))
    assert row["new_task_accuracy_last_2"] == pytest.approx(np.mean(metrics["new_task_accuracy"][1:]))
    assert "task_1" in row and row["task_1"] is None  # scored only the new task: no final row
    for key in ("dead_fraction", "effective_rank", "weight_magnitude"):
        assert (row[f"{key}_start"], row[f"{key}_after"]) == (history[0][key], history[-1][key])
        assert row[f"{key}_change"] == history[-1][key] - history[0][key]
    diagonal = np.diag(np.array(json.loads((runs[1] / "manifest.json").read_text())["matrices"]["correct"]))
    assert result.rows[1]["new_task_accuracy_first_2"] == pytest.approx(diagonal[:2].mean())
    assert "effective rank: start → end (change)" in result.markdown


def test_general_perplexity_is_the_control_of_a_language_model_run(tmp_path):
    from contract_examples import TRAINER, text, tiny_lm

    from clight import SequenceRunner
    from clight.methods.general_replay import GeneralPerplexity

    run = (
        SequenceRunner(
            tiny_lm(),
            text(),
            [GeneralPerplexity(batch_size=2)],
            trainer=dict(TRAINER, max_epochs=1),
            run_dir=str(tmp_path / "lm"),
        )
        .run()
        .run_dir
    )
    result = compare_runs([run], tmp_path / "out")
    logged = json.loads((run / "general_perplexity.json").read_text())
    row = result.rows[0]
    assert row["general_perplexity_start"] == logged["before_first_task"]
    assert row["general_perplexity_after"] == logged["after_task"][-1] and len(logged["after_task"]) == 2
    assert f"{logged['before_first_task']:.4g} → {logged['after_task'][-1]:.4g}" in result.markdown
    assert "general_perplexity: perplexity on held-out general text" in result.markdown


def test_runs_mode_refuses_an_unfinished_run_and_mixed_arguments(tmp_path, capsys):
    config = write_config(tmp_path, "killed")
    runner = runner_from_config(config)
    runner.methods.append(KillAt(task=1, epoch=0, batch=1))
    with pytest.raises(SimulatedKill):
        runner.run()
    with pytest.raises(ValueError, match=r"not finished \(1 of 2 fits done\).*--resume"):
        read_run(tmp_path / "runs" / "killed")
    assert (
        main(["compare", "--runs", str(tmp_path / "runs" / "killed"), "--out", str(tmp_path / "o"), "--trainer.max_epochs=1"])
        == 2
    )
    assert "do not apply" in capsys.readouterr().err
    assert main(["compare", str(config), "--out", str(tmp_path / "o"), "--trainer.max_epochs", "1"]) == 2
    assert "--key=value" in capsys.readouterr().err


def test_two_configs_writing_to_one_folder_are_refused(tmp_path):
    a = write_config(tmp_path, "finetune")
    b = write_config(tmp_path, "replay", run_dir=tmp_path / "runs" / "finetune")
    with pytest.raises(ConfigError, match="both write to"):
        compare_configs([a, b], tmp_path / "out")


def test_runs_mode_refuses_two_folders_that_would_share_a_name(finished, tmp_path, capsys):
    folder, _ = finished
    copy = tmp_path / "elsewhere" / "finetune"
    shutil.copytree(folder / "runs" / "finetune", copy)
    out = tmp_path / "out"
    assert main(["compare", "--runs", str(folder / "runs" / "finetune"), str(copy), "--out", str(out)]) == 2
    assert "two runs would share a name in the table" in capsys.readouterr().err and not out.exists()
    assert main(["compare", "--runs", str(folder / "runs" / "finetune"), str(copy), "--out", str(out), "--names", "a", "b"]) == 0
