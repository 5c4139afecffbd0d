"""Hand-written instruction-task files for the language-model task tests: an O-LoRA-style
CL_Benchmark folder (two tasks, labels, instructions, orders), Alpaca, chat and prompt/completion
records. Small enough to read in full; every record is written out."""

from __future__ import annotations

import json
from pathlib import Path

NEWS_LABELS = ["World", "Sports", "Science"]
MOOD_LABELS = ["positive", "negative"]
TC_INSTRUCTION = "What is the topic of the following paragraph? Choose one from the option.\n"
SC_INSTRUCTION = "What is the sentiment of the following paragraph? Choose one from the option.\n"


def _news(i: int) -> dict:
    label = NEWS_LABELS[i % 3]
    return {"label": label, "sentence": f"Title: item {i}\nText: a short story about {label.lower()} number {i}.\n"}


def _mood(i: int) -> dict:
    label = MOOD_LABELS[i % 2]
    return {"label": label, "sentence": f"Text: I felt {'good' if label == 'positive' else 'bad'} about thing {i}."}


def write_json(path: Path, obj, indent=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent))
    return path


def cl_benchmark(root: Path, n_train: int = 12, n_test: int = 6) -> Path:
    """ROOT/{news,mood,reason}/{train,test,labels}.json, instructions.json, tasks.json, orders.json.
    ``reason`` has no instruction (O-LoRA's COPA rule); orders name the tasks in two orders."""
    for name, make, labels in (("news", _news, NEWS_LABELS), ("mood", _mood, MOOD_LABELS)):
        write_json(root / name / "labels.json", labels)
        write_json(root / name / "train.json", [make(i) for i in range(n_train)])
        write_json(root / name / "test.json", [make(100 + i) for i in range(n_test)])
    reason = [
        {"label": "AB"[i % 2], "sentence": f'Which is the cause of "x{i}"? Choose one between A and B.\nA: a\nB: b'}
        for i in range(8)
    ]
    write_json(root / "reason" / "labels.json", ["A", "B"])
    write_json(root / "reason" / "train.json", reason[:6])
    write_json(root / "reason" / "test.json", reason[6:])
    write_json(
        root / "instructions.json",
        {
            "TC": [{"instruction_type": "zero-shot", "instruction": TC_INSTRUCTION}],
            "SC": [{"instruction_type": "zero-shot", "instruction": SC_INSTRUCTION}],
        },
    )
    write_json(root / "tasks.json", {"news": {"category": "TC"}, "mood": {"category": "SC"}, "reason": {"category": "COPA"}})
    write_json(
        root / "orders.json",
        {"orders": {"order1": ["news", "mood"], "order2": ["mood", "news"], "all": ["news", "mood", "reason"]}},
        2,
    )
    return root


ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "output": "blue"},
    {"instruction": "Say hi.", "input": "", "output": "hi", "system": "You are terse."},
    {"instruction": "Double it.", "input": "4", "output": "8"},
    {"instruction": "Opposite of up?", "output": "down"},
    {"instruction": "Add the numbers.", "input": "1 and 1", "output": "2"},
]

CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
    {"messages": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "blue"}]},
    {"messages": [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "yes"}]},
]

PROMPT_COMPLETION = [
    {"prompt": "Q: capital of France?\nA:", "completion": " Paris"},
    {"prompt": "Q: 1+1?\nA:", "completion": " 2"},
    {"prompt": "Q: opposite of hot?\nA:", "completion": " cold"},
    {"prompt": "Q: sky colour?\nA:", "completion": " blue"},
]


def jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lm_config(
    path: Path, run_dir: Path, data: str, model_args: str = "{model: tiny, evaluation: generate, max_new_tokens: 4}"
) -> Path:
    """A `clight fit` config: the tiny random Llama on the data section ``data`` (YAML, indented 2)."""
    path.write_text(
        f"""seed_everything: 0
run_dir: {run_dir}
model:
  class_path: clight.ContinualCausalLM
  init_args: {model_args}
data:
  class_path: clight.InstructionSequence
  init_args:
{data}
trainer: {{accelerator: cpu, devices: 1, max_epochs: 1, enable_progress_bar: false, enable_model_summary: false}}
runner: {{max_steps_per_task: 1}}
"""
    )
    return path
