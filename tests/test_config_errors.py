"""A mistyped or bad config is one line: the key, where it was given (the YAML file and line, or
the command line), the nearest valid names for an unknown key, the innermost reason for a bad
value inside a nested class; exit status 2, no usage block, no run folder. ``clight fit --help``
names every method and model class clight ships and describes every runner option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clight.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _edited_quickstart(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The quickstart config with ``old`` replaced by ``new``, and the line ``new`` is on."""
    text = QUICKSTART.read_text()
    assert text.count(old) == 1
    config = tmp_path / "typo.yaml"
    config.write_text(text.replace(old, new))
    return config, text[: text.index(old)].count("\n") + 1


def _one_line_error(capsys, tmp_path: Path, *args: str) -> str:
    run = tmp_path / "run"
    code = main(["fit", *args, f"--run_dir={run}"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.out == "", captured.err  # one line, no usage block
    assert "Does not validate" not in captured.err and "usage" not in captured.err
    assert not run.exists()
    return captured.err.strip()


def test_a_yaml_key_typo_names_file_line_and_the_key_meant(tmp_path, capsys):
    config, line = _edited_quickstart(tmp_path, "max_epochs: 10", "max_epoch: 10")
    error = _one_line_error(capsys, tmp_path, "--config", str(config))
    assert error.startswith(
        f"clight fit: error: unknown key trainer.max_epoch in {config} (line {line}): did you mean max_epochs"
    )


def test_a_flag_typo_names_the_flag_meant(tmp_path, capsys):
    error = _one_line_error(capsys, tmp_path, "--config", str(QUICKSTART), "--trainer.max_epoch=3")
    assert "unknown option --trainer.max_epoch on the command line: did you mean --trainer.max_epochs" in error


def test_a_mistyped_section_suggests_the_section(tmp_path, capsys):
    config, line = _edited_quickstart(tmp_path, "trainer:", "trainr:")
    error = _one_line_error(capsys, tmp_path, "--config", str(config))
    assert f"unknown key trainr in {config} (line {line}): did you mean trainer?" in error


def test_an_unknown_option_of_a_nested_class_names_the_class_and_its_option(tmp_path, capsys):
    config, line = _edited_quickstart(tmp_path, "hidden_sizes:", "hidden_size:")
    error = _one_line_error(capsys, tmp_path, "--config", str(config))
    assert (
        f"unknown key model.init_args.backbone.init_args.hidden_size in {config} (line {line}): "
        "clight.MLP has no option 'hidden_size'; did you mean hidden_sizes?"
    ) in error


def test_an_unknown_option_of_a_class_given_as_a_flag_suggests_the_whole_flag(tmp_path, capsys):
    error = _one_line_error(capsys, tmp_path, "--config", str(QUICKSTART), "--model.init_args.optimizer.init_args.lrr=0.1")
    assert "torch.optim.Adam has no option 'lrr'; did you mean --model.init_args.optimizer.init_args.lr?" in error


def test_a_bad_nested_value_gives_the_innermost_reason(tmp_path, capsys):
    config, line = _edited_quickstart(tmp_path, "num_tasks: 5", "num_tasks: five")
    error = _one_line_error(capsys, tmp_path, "--config", str(config))
    assert error.startswith(
        "clight fit: error: data.init_args.scenario.init_args.num_tasks (clight.SplitClasses) "
        f"in {config} (line {line}): Expected a <class 'int'>. Got value: five"
    )


def test_a_name_far_from_any_option_gets_no_guess(tmp_path, capsys):
    error = _one_line_error(capsys, tmp_path, "--config", str(QUICKSTART), "--zzz=3")
    assert "unknown option --zzz on the command line (clight fit --help" in error


@pytest.mark.parametrize("command", ["report", "test", "predict", "export", "compare"])
def test_other_commands_print_one_line_without_the_usage_block(capsys, command):
    assert main([command, "--no-such-option"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"clight {command}: error: ")
    assert "usage" not in captured.err and captured.out == ""


def test_fit_help_lists_every_shipped_class_and_describes_the_runner_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    methods = help_text[help_text.index("method callbacks, kept for the whole run") :]
    for name in ["EWC", "LwF", "SI", "MAS", "DERpp", "AGEM", "ICaRL", "GDumb", "SeqLoRA", "InfLoRA", "SimpleCIL", "MoEAdapters"]:
        assert f"clight.{name}," in methods[: methods.index("(type:")] or f"clight.{name} (type:" in methods
    models = help_text[help_text.index("the model (class_path, init_args)") :]
    for name in ["ContinualClassifier", "ContinualCausalLM", "ContinualCLIP", "L2P", "CODAPrompt", "CLRClassifier"]:
        assert re.search(rf"clight\.{name}[, ]", models[: models.index("(type:") + 1])
    from clight.runner import RunnerSettings

    for option in RunnerSettings.__dataclass_fields__:
        described = re.search(rf"--runner\.{option} \S+ (.*?)\(type:", help_text)
        assert described and len(described[1].strip()) > 10, option


def test_a_negative_epoch_checkpoint_interval_is_refused_in_one_line(tmp_path, capsys):
    error = _one_line_error(capsys, tmp_path, "--config", str(QUICKSTART), "--runner.epoch_checkpoint_min_s=-1")
    assert "runner.epoch_checkpoint_min_s must be 0 or more seconds, got -1" in error
