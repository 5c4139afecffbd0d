"""Every bad input of the "Bad inputs" table in docs/bad_inputs.md, one test per row: `clight`
stops with exit status 2 and one line that names the field or file and the fix, shows no
traceback, and leaves the run folder as it was (not created for a new run, byte for byte the
same for a resume)."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import shutil
import struct
from pathlib import Path
from typing import Callable

import pytest

from clight.cli import main

pytestmark = pytest.mark.xdist_group("test_bad_inputs.finished_run")  # its tests share the module's finished run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL = ["--data.scenario.init_args.num_tasks=2", "--trainer.enable_progress_bar=false"]


def _cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exit_:  # the config parser exits on its own errors
        return exit_.code


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert _cli(*_fit(), f"--run_dir={run}") == 0
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _idx_folder(folder: Path) -> Path:
    """Four small Fashion-MNIST-shaped IDX files, the training images cut short."""
    folder.mkdir()
    for stem, shape in {
        "train-images-idx3-ubyte": (20, 28, 28),
        "train-labels-idx1-ubyte": (20,),
        "t10k-images-idx3-ubyte": (10, 28, 28),
        "t10k-labels-idx1-ubyte": (10,),
    }.items():
        body = bytes(math.prod(shape))
        with gzip.open(folder / f"{stem}.gz", "wb") as f:
            f.write(struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(">" + "I" * len(shape), *shape) + body)
    _truncate(folder / "train-images-idx3-ubyte.gz")
    return folder


def _config_cut_before_trainer(tmp: Path) -> Path:
    text = QUICKSTART.read_text()
    cut = tmp / "cut.yaml"
    cut.write_text(text[: text.index("trainer:")])
    return cut


def _config_with_nan_lr(tmp: Path) -> Path:
    path = tmp / "nan.yaml"
    path.write_text(QUICKSTART.read_text().replace("lr: 0.001", "lr: .nan"))  # YAML's NaN
    return path


def _permuted_digits(tmp: Path, split: str) -> Path:
    """The quickstart on permuted digits whose tasks have no ``split`` samples."""
    path = tmp / f"no_{split}.yaml"
    scenario = f"""  scenario:
    class_path: clight.PermutedInputs
    init_args: {{source: digits, num_tasks: 2, {split}_samples_per_task: 0}}
"""
    text = QUICKSTART.read_text()
    start = text.index("  scenario:")
    path.write_text(text[:start] + scenario + text[text.index("  batch_size:", start) :])
    return path


TEXT_CONFIG = """seed_everything: 0
model:
  class_path: clight.models.causal_lm.ContinualCausalLM
  init_args: {{model: tiny, tokenizer: char}}
data:
  class_path: clight.data.text.TextTaskSequence
  init_args:
    tasks:
      - class_path: clight.data.text.tasks.TextTaskSpec
        init_args:
          source: {{class_path: clight.data.text.sources.{source}, init_args: {{path: {path}}}}}
    tokenizer: char
    general: null
trainer: {{accelerator: cpu, devices: 1, max_epochs: 1}}
"""


def _text_task(tmp: Path, suffix: str = "jsonl", content: bytes = b'{"text": "good", "label": "a"}\n') -> Path:
    """A tiny language model on one text task read from ``texts.SUFFIX`` holding ``content``."""
    data = tmp / f"texts.{suffix}"
    data.write_bytes(content)
    config = tmp / "text.yaml"
    config.write_text(TEXT_CONFIG.format(source="JsonlText" if suffix == "jsonl" else "CsvText", path=data))
    return config


def _alias_bomb(tmp: Path) -> Path:
    """300 bytes of YAML that expand to 59049 strings (anchors of anchors), given as the seed."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcd", "bcde")]
    path = tmp / "bomb.yaml"
    path.write_text(
        "anchors:\n"
        + "".join(f"  {line}\n" for line in lines)
        + QUICKSTART.read_text().replace("seed_everything: 0", "seed_everything: *e")
    )
    return path


def _fit(config: Path = QUICKSTART, *extra: str, epochs: bool = True) -> list[str]:
    """``clight fit`` arguments for a small run of ``config`` (``--run_dir`` is added by the test)."""
    return ["fit", "--config", str(config), *SMALL, *(["--trainer.max_epochs=1"] if epochs else []), *extra]


def _fit_text(config: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(config), *extra]


# (row, the `clight` arguments given a temporary folder, text the error line must hold)
NEW_RUN: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "max_epochs 0",
        lambda t: _fit(QUICKSTART, "--trainer.max_epochs=0"),
        "trainer.max_epochs=0: every task would end untrained",
    ),
    ("max_steps 0", lambda t: _fit(QUICKSTART, "--trainer.max_steps=0"), "trainer.max_steps=0: every task would end untrained"),
    (
        "config cut before its trainer section",
        lambda t: _fit(_config_cut_before_trainer(t), epochs=False),
        "trainer.max_epochs is not set, so Lightning would train 1000 epochs per task",
    ),
    (
        "learning rate NaN in the YAML file",
        lambda t: _fit(_config_with_nan_lr(t)),
        "model.init_args.optimizer.init_args.lr is NaN",
    ),
    (
        "negative learning rate",
        lambda t: _fit(QUICKSTART, "--model.init_args.optimizer.init_args.lr=-0.1"),
        "model.init_args.optimizer is refused by the optimizer: Invalid learning rate: -0.1",
    ),
    (
        "truncated data file",
        lambda t: _fit(
            QUICKSTART,
            "--data.scenario.init_args.source.class_path=clight.FashionMNIST",
            f"--data.scenario.init_args.source.init_args.root={_idx_folder(t / 'idx')}",
            "--data.scenario.init_args.source.init_args.download=false",
        ),
        "train-images-idx3-ubyte.gz cannot be read",
    ),
    ("run_dir inside a file", lambda t: _fit(QUICKSTART, f"--run_dir={t / 'file' / 'run'}"), "is a file. Choose another run_dir"),
    (
        "run_dir that cannot be written",
        lambda t: _fit(QUICKSTART, "--run_dir=/proc/clight-run"),
        "cannot write the run folder /proc/clight-run",
    ),
    (
        "a task with no training samples",
        lambda t: _fit(_permuted_digits(t, "train"), epochs=False),
        "task 1 (digits[perm 0]) has no training samples",
    ),
    (
        "a task with no test samples",
        lambda t: _fit(_permuted_digits(t, "test"), epochs=False),
        "task 1 (digits[perm 0]) has no test samples",
    ),
    (
        "empty JSONL text file",
        lambda t: _fit_text(_text_task(t, "jsonl", b"")),
        "texts.jsonl cannot be read: it holds no",
    ),
    (
        "blank CSV text file",
        lambda t: _fit_text(_text_task(t, "csv", b" \n\n")),
        "texts.csv cannot be read: it holds no",
    ),
    (
        "JSONL text file with bytes that are not UTF-8",
        lambda t: _fit_text(_text_task(t, "jsonl", b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')),
        "texts.jsonl cannot be read: line 2 (byte 42) holds b'\\xe9', which is not utf-8 text",
    ),
    (
        "CSV text file with bytes that are not UTF-8",
        lambda t: _fit_text(_text_task(t, "csv", b"text,label\nok,a\ncaf\xe9,b\n")),
        "texts.csv cannot be read: line 3 (byte 19) holds b'\\xe9', which is not utf-8 text",
    ),
    (
        "CSV field over 16 MiB",
        lambda t: _fit_text(_text_task(t, "csv", b'text,label\nok,a\n"' + b"x" * (2**24 + 1) + b'",b\n')),
        "texts.csv cannot be read: line 3: field larger than field limit (16777216) (over 16 MiB: is a quote left open?)",
    ),
    (
        "MoEAdapters freeze_top above num_experts",
        lambda t: _fit(
            QUICKSTART,
            '--methods=[{"class_path": "clight.methods.moe_adapters.MoEAdapters", '
            '"init_args": {"num_experts": 8, "freeze_top": 9}}]',
        ),
        "MoEAdapters.freeze_top=9 is more than num_experts (8)",
    ),
    (
        "tokenizer not found offline",
        lambda t: _fit_text(_text_task(t), "--model.init_args.tokenizer=someone/no-such-tokenizer"),
        "tokenizer 'someone/no-such-tokenizer' is not in the local Hugging Face cache",
    ),
    (
        "model folder that does not exist",
        lambda t: _fit_text(_text_task(t), f"--model.init_args.model={t / 'no-such-model'}"),
        "no-such-model': no such file or folder",
    ),
    (
        "LoRA option that does not exist",
        lambda t: _fit_text(_text_task(t), '--model.init_args.lora={"rank": 8}'),
        "model.init_args.lora has unknown keys ['rank']: use r, alpha, dropout, target_modules",
    ),
    (
        "YAML alias bomb",
        lambda t: _fit(_alias_bomb(t)),
        "seed_everything in TMP/bomb.yaml (line 10): Expected a <class 'int'>. Got value: [[[[['lol', 'lol',",
    ),
    (
        "compare --out inside a file",
        lambda t: ["compare", str(QUICKSTART), "--out", str(t / "file" / "out"), *SMALL],
        "--out TMP/file/out: TMP/file is a file. Choose a folder you can write to.",
    ),
]

RESUME: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("--resume a mistyped folder", lambda run: [f"--resume={run}-typo"], "there is no run to resume in"),
    (
        "--resume with another learning rate",
        lambda run: ["--model.init_args.optimizer.init_args.lr=0.01"],
        "model.init_args.optimizer.init_args.lr: 0.001 -> 0.01",
    ),
    (
        "--resume with another model width",
        lambda run: ["--model.init_args.backbone.init_args.hidden_sizes=[128]"],
        "model.init_args.backbone.init_args.hidden_sizes: [256, 256] -> [128]",
    ),
    ("--resume with more epochs", lambda run: ["--trainer.max_epochs=3"], "trainer.max_epochs: 1 -> 3"),
    (
        "--resume, manifest.json truncated",
        lambda run: _truncate(run / "manifest.json") or [],
        "manifest.json cannot be read: not valid JSON",
    ),
    (
        "--resume, last_task.pt truncated",
        lambda run: _truncate(run / "checkpoints" / "last_task.pt") or [],
        "last_task.pt cannot be read: truncated or corrupt",
    ),
    (
        "--resume, config.yaml gone",
        lambda run: (run / "config.yaml").unlink() or [],
        "has no config.yaml to compare this config with",
    ),
]

ROWS = [row[0] for row in NEW_RUN + RESUME] + ["report, manifest.json truncated"]


def _assert_one_clean_line(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert len(err) < 2000  # values cut short (an expanded YAML alias bomb is 400 kB)
    assert expected in err, err[-2000:]
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "error" in line)
    assert expected in line  # the field or file and the fix, on the error line itself
    return line


@pytest.mark.parametrize("row, args, expected", NEW_RUN, ids=[r[0] for r in NEW_RUN])
def test_a_bad_input_stops_a_new_run_before_its_folder_exists(tmp_path, capsys, monkeypatch, row, args, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a name not on this machine is refused at once, as offline
    (tmp_path / "file").write_text("not a folder")
    run = tmp_path / "new"
    argv = args(tmp_path)
    expected = expected.replace("TMP", str(tmp_path))
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("--run_dir=")] or [str(run)]
    code = _cli(*argv, f"--run_dir={run_dirs[-1]}")
    _assert_one_clean_line(capsys, code, expected)
    assert not Path(run_dirs[-1]).exists()
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("row, args, expected", RESUME, ids=[r[0] for r in RESUME])
def test_a_bad_resume_leaves_the_run_folder_untouched(tmp_path, capsys, finished_run, row, args, expected):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    extra = args(run)
    before = _snapshot(run)
    resume = [a for a in extra if a.startswith("--resume=")] or [f"--resume={run}"]
    code = _cli(*_fit(QUICKSTART, *[a for a in extra if not a.startswith("--resume=")]), *resume)
    _assert_one_clean_line(capsys, code, expected)
    assert _snapshot(run) == before


def test_report_names_a_truncated_manifest(tmp_path, capsys, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _truncate(run / "manifest.json")
    before = _snapshot(run)
    _assert_one_clean_line(capsys, _cli("report", str(run)), "manifest.json cannot be read: not valid JSON")
    assert _snapshot(run) == before


def test_debug_shows_the_traceback(tmp_path):
    from clight import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_epochs=0"):
        main([*_fit(QUICKSTART, "--trainer.max_epochs=0"), f"--run_dir={tmp_path / 'run'}", "--debug"])


def test_the_docs_table_has_a_row_per_test():
    page = (ROOT / "docs" / "bad_inputs.md").read_text()
    table = page[page.index("# Bad inputs") :] + "\n\n"  # the table may end the page
    table = table[: table.index("\n\n", table.index("| input"))]
    listed = [cell for cell in re.findall(r"^\| ([^|]+?) \|", table, flags=re.M) if cell != "input"]
    assert listed == ROWS
