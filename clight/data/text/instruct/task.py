"""``InstructionTask``: one task of your own in a config, and its records read and rendered.

Records come from files (``path``: one file whose test items are cut off by ``test_fraction``;
or ``train`` and ``test``), from a Hugging Face source (``hf``), or, for ``cl_benchmark``, from
a task folder (``path``, else ``ROOT/<name>``). Every record is checked and rendered when the
task is read, so a bad one stops the run before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clight.data.text.instruct.chat import ChatStyle, Rendered, answer_variant, resolve_chat_style
from clight.data.text.instruct.formats import FORMATS, FormatOptions, PromptStyle, RecordFormat, gold_content
from clight.data.text.instruct.hf import HFSource
from clight.data.text.instruct.olora import CLBenchmarkTask, find_task_folder
from clight.data.text.instruct.records import Record, RecordError, read_records


@dataclass
class InstructionTask:
    """One task: its name, record ``format`` and where its records are (see docs/llm_tasks.md).

    ``labels``: the closed set of answers, for label accuracy and likelihood scoring (a
    ``cl_benchmark`` task reads them from ``labels.json``). ``columns``: field renames.
    ``prompt_style``: how an ``alpaca`` record is written (``alpaca`` template or ``chat``);
    ``chat_style``: how chats are written (``auto``, ``template``, ``plain``). ``category`` and
    ``instructions``: a ``cl_benchmark`` task's O-LoRA category and instruction file, when not
    found in the benchmark folder.
    """

    name: str
    format: RecordFormat = "alpaca"
    path: Optional[str] = None
    train: Optional[str] = None
    test: Optional[str] = None
    hf: Optional[HFSource] = None
    columns: dict[str, str] = field(default_factory=dict)
    labels: Optional[list[str]] = None
    prompt_style: PromptStyle = "alpaca"
    chat_style: ChatStyle = "auto"
    category: Optional[str] = None
    instructions: Optional[str] = None


@dataclass
class LoadedTask:
    """A task's records rendered: ``train`` and ``test`` (``None``: cut from ``train``), each
    ``(rendered, label index or -1)``; the label strings and their answers as rendered."""

    name: str
    train: list[tuple[Rendered, int]]
    test: Optional[list[tuple[Rendered, int]]]
    labels: Optional[list[str]]
    label_answers: Optional[list[Rendered]]
    bos: bool
    source: str


def _sources(task: InstructionTask) -> tuple[str, list[Record], Optional[list[Record]]]:
    given = [name for name in ("path", "train", "test", "hf") if getattr(task, name) is not None]
    if task.hf is not None and len(given) == 1:
        test = task.hf.records(task.hf.test_split) if task.hf.test_split else None
        return f"hf:{task.hf.path}", task.hf.records(task.hf.split), test
    if given == ["path"]:
        return task.path, read_records(task.path), None
    if sorted(given) == ["test", "train"]:
        return f"{task.train} + {task.test}", read_records(task.train), read_records(task.test)
    raise ValueError(f"task {task.name!r}: give its records as path (one file), or train and test, or hf (given: {given})")


def _nonempty(records: Optional[list[Record]], where: str, split: str) -> None:
    if records is not None and not records:
        raise RecordError(where, f"holds no {split} records: every task needs at least one training and one test record")


def load_task(task: InstructionTask, tokenizer, root: Optional[Path], add_bos: bool = True) -> LoadedTask:
    """Read and render every record of ``task`` (``root``: the folder of ``cl_benchmark`` tasks)."""
    if task.format == "cl_benchmark":
        return _load_cl_benchmark(task, root, add_bos)
    options = FormatOptions(dict(task.columns), task.prompt_style, resolve_chat_style(task.chat_style, tokenizer), tokenizer)
    source, train, test = _sources(task)
    _nonempty(train, task.train or task.path or source, "training")
    _nonempty(test, task.test or source, "test")
    render = FORMATS[task.format]
    labels = list(task.labels) if task.labels else None

    def rendered(records: Optional[list[Record]]) -> Optional[list[tuple[Rendered, int]]]:
        if records is None:
            return None
        out = []
        for record in records:
            sample = render(record, options)
            out.append((sample, _label_index(record, gold_content(task.format, record, options), labels)))
        return out

    train_rendered, test_rendered = rendered(train), rendered(test)
    label_answers = None
    if labels is not None:
        first, content = train_rendered[0][0], gold_content(task.format, train[0], options)
        label_answers = [Rendered("", "", "", answer_variant(first, label, content), first.eos) for label in labels]
    return LoadedTask(task.name, train_rendered, test_rendered, labels, label_answers, False, source)


def _label_index(record: Record, answer: str, labels: Optional[list[str]]) -> int:
    if labels is None:
        return -1
    if answer not in labels:
        raise record.error(f"the answer {answer!r} is not one of the task's labels {labels}: fix the record or the labels")
    return labels.index(answer)


def _load_cl_benchmark(task: InstructionTask, root: Optional[Path], add_bos: bool) -> LoadedTask:
    if task.path is not None:
        folder = Path(task.path)
        base = folder.parent
    elif root is not None:
        folder, base = find_task_folder(Path(root), task.name), Path(root)
        if folder is None:
            raise RecordError(root, f"has no folder for the task {task.name!r} (a folder {task.name}/ with labels.json)")
    else:
        raise ValueError(f"task {task.name!r} (cl_benchmark): give its folder as path, or the benchmark folder as data.root")
    bench = CLBenchmarkTask.open(base, folder, task.name, task.category, _path(task.instructions))
    train, test = bench.records("train"), bench.records("test")
    _nonempty(train, str(folder / "train.json"), "training")
    _nonempty(test, str(folder / "test.json"), "test")
    answers = [Rendered("", "", "", label) for label in bench.labels]
    return LoadedTask(
        task.name,
        [(bench.render(r), bench.label_of(r)) for r in train],
        [(bench.render(r), bench.label_of(r)) for r in test],
        bench.labels,
        answers,
        add_bos,
        str(folder),
    )


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value is not None else None
