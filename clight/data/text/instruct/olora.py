"""Labelled-classification folders in O-LoRA's ``CL_Benchmark`` layout, prompts built as O-LoRA builds them.

A task folder holds ``train.json`` and ``test.json`` (JSON arrays of ``{"label", "sentence"}``)
and ``labels.json`` (the label strings, in order). The folder is ``ROOT/<task>`` or, as in
O-LoRA's repository, ``ROOT/<category>/<task>``. The instruction of a task is the first
``zero-shot`` instruction of its category in ``ROOT/instructions.json`` or
``ROOT/instruction_config.json`` or, in O-LoRA's repository, ``ROOT/../configs/instruction_config.json``. The category
is given, or read from ``ROOT/tasks.json`` (``{task: {"category": ...}}``), or is the name of
the folder above the task folder.

The prompt (O-LoRA ``src/uie_dataset_lora.py`` and ``src/uie_collator.py`` with
``--add_task_name True --add_dataset_name True``, as its order scripts run)::

    [BOS] "Task:" category "\\n" "Dataset:" task "\\n" instruction "Option: " ", ".join(labels) " \\n" sentence "\\nAnswer:"

and the answer is the label string followed by EOS. A category without an instruction (COPA)
gets neither an instruction nor the option line: ``"Task:COPA\\nDataset:COPA\\n" sentence "\\nAnswer:"``.
Where clight differs: the prompt and the answer are tokenised separately (so the loss mask is
exact), and a too-long prompt is shortened inside the sentence, keeping ``\\nAnswer:``
(O-LoRA cuts the end of the whole input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clight.data.text.instruct.chat import Rendered
from clight.data.text.instruct.records import Record, RecordError, read_records

INSTRUCTION_FILES = ("instructions.json", "instruction_config.json", "../configs/instruction_config.json")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(path, f"is not valid JSON ({exc.msg})", exc.lineno) from None


def find_task_folder(root: Path, task: str) -> Optional[Path]:
    """``ROOT/<task>`` or ``ROOT/<category>/<task>`` (O-LoRA's layout), if it holds ``labels.json``."""
    for folder in [root / task, *sorted(root.glob(f"*/{task}"))]:
        if (folder / "labels.json").is_file():
            return folder
    return None


def task_names(root: Path) -> list[str]:
    return sorted({p.parent.name for pattern in ("*/labels.json", "*/*/labels.json") for p in root.glob(pattern)})


@dataclass
class CLBenchmarkTask:
    """One task folder: its label strings, category and instruction."""

    folder: Path
    name: str
    labels: list[str]
    category: str
    instruction: Optional[str]

    @classmethod
    def open(cls, root: Path, folder: Path, name: str, category: Optional[str] = None, instructions: Optional[Path] = None):
        labels_path = folder / "labels.json"
        if not labels_path.is_file():
            raise RecordError(
                folder, "has no labels.json: a CL_Benchmark task folder holds train.json, test.json and labels.json"
            )
        labels = _load_json(labels_path)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise RecordError(labels_path, "must be a non-empty JSON list of label strings")
        category = category or _category(root, folder, name)
        return cls(folder, name, labels, category, _instruction(root, category, instructions))

    def records(self, split: str) -> list[Record]:
        records = read_records(self.folder / f"{split}.json")
        for record in records:
            self.label_of(record)
            record.text("sentence", 'A CL_Benchmark record is {"label": ..., "sentence": ...}.')
        return records

    def label_of(self, record: Record) -> int:
        label = record.text("label", 'A CL_Benchmark record is {"label": ..., "sentence": ...}.')
        if label not in self.labels:
            raise record.error(
                f"label {label!r} is not in {self.folder / 'labels.json'} {self.labels}: fix the record or add the label there"
            )
        return self.labels.index(label)

    def render(self, record: Record, bos: str = "") -> Rendered:
        head = f"{bos}Task:{self.category}\nDataset:{self.name}\n"
        if self.instruction is not None:
            head += self.instruction + "Option: " + ", ".join(self.labels) + " \n"
        return Rendered(head, record.data["sentence"], "\nAnswer:", record.data["label"])


def _category(root: Path, folder: Path, name: str) -> str:
    tasks_file = root / "tasks.json"
    if tasks_file.is_file():
        entry = _load_json(tasks_file).get(name)
        if isinstance(entry, dict) and isinstance(entry.get("category"), str):
            return entry["category"]
    if folder.parent != root:  # O-LoRA's layout: ROOT/<category>/<task>
        return folder.parent.name
    raise RecordError(folder, f"has no category: give the task a category (e.g. TC, SC, NLI) or list it in {tasks_file}")


def _instruction(root: Path, category: str, given: Optional[Path]) -> Optional[str]:
    candidates = [given] if given is not None else [root / f for f in INSTRUCTION_FILES]
    path = next((p for p in candidates if p is not None and p.is_file()), None)
    if path is None:
        where = given if given is not None else root / INSTRUCTION_FILES[0]
        raise RecordError(where, "not found: a CL_Benchmark folder needs O-LoRA's instruction file (instructions.json)")
    entries = _load_json(path).get(category)
    if not entries:
        return None  # O-LoRA's COPA: no instruction, no option line
    zero_shot = [e["instruction"] for e in entries if e.get("instruction_type", "zero-shot") == "zero-shot"]
    if not zero_shot:
        raise RecordError(path, f"category {category!r} has no zero-shot instruction")
    return zero_shot[0]
