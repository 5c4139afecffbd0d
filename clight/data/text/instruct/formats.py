"""Record formats: how one record becomes a prompt and an answer (see docs/llm_tasks.md).

- ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``; written with
  the Alpaca template (``prompt_style: alpaca``) or as a chat (``prompt_style: chat``: the system
  message, then a user message ``instruction`` + blank line + ``input``);
- ``chat``: ``messages`` (``role``/``content``), the last one the assistant's answer;
- ``prompt_completion``: ``prompt`` and ``completion``, used verbatim (the prompt is never shortened);
- ``cl_benchmark``: O-LoRA's ``{"label", "sentence"}`` records (``clight.data.text.instruct.olora``).

``columns`` renames fields: ``{"output": "response"}`` reads a record's ``response`` as its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from clight.data.text.instruct.chat import Rendered, check_messages, render_chat
from clight.data.text.instruct.records import Record

RecordFormat = Literal["alpaca", "chat", "prompt_completion", "cl_benchmark"]
PromptStyle = Literal["alpaca", "chat"]

ALPACA_PREAMBLE = {
    True: (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
    ),
    False: "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
}


@dataclass
class FormatOptions:
    """What a format needs besides the record: the field names, the prompt and chat styles and
    the tokenizer (for its chat template)."""

    columns: dict[str, str] = field(default_factory=dict)
    prompt_style: str = "alpaca"
    chat_style: str = "plain"
    tokenizer: object = None

    def key(self, name: str) -> str:
        return self.columns.get(name, name)


def _text(record: Record, options: FormatOptions, name: str, fix: str, optional: bool = False) -> Optional[str]:
    return record.text(options.key(name), fix, optional)


def alpaca(record: Record, options: FormatOptions) -> Rendered:
    fix = 'An Alpaca record is {"instruction": ..., "input": ... (optional), "output": ...}; map other names with columns.'
    instruction = _text(record, options, "instruction", fix)
    given = _text(record, options, "input", fix, optional=True) or ""
    output = _text(record, options, "output", fix)
    system = _text(record, options, "system", fix, optional=True)
    if options.prompt_style == "chat":
        user = instruction + ("\n\n" + given if given else "")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": output},
        ]
        return render_chat(messages, options.tokenizer, options.chat_style, record)
    preamble = (system or ALPACA_PREAMBLE[bool(given)]) + "\n\n"
    if given:
        return Rendered(f"{preamble}### Instruction:\n{instruction}\n\n### Input:\n", given, "\n\n### Response:\n", output)
    return Rendered(f"{preamble}### Instruction:\n", instruction, "\n\n### Response:\n", output)


def chat(record: Record, options: FormatOptions) -> Rendered:
    key = options.key("messages")
    if key not in record.data:
        raise record.error(f'no {key!r} field (fields: {sorted(record.data)}). A chat record is {{"messages": [...]}}')
    return render_chat(check_messages(record, record.data[key]), options.tokenizer, options.chat_style, record)


def prompt_completion(record: Record, options: FormatOptions) -> Rendered:
    fix = 'A record is {"prompt": ..., "completion": ...}; map other names with columns.'
    return Rendered(_text(record, options, "prompt", fix), "", "", _text(record, options, "completion", fix))


FORMATS = {"alpaca": alpaca, "chat": chat, "prompt_completion": prompt_completion}


def gold_content(fmt: str, record: Record, options: FormatOptions) -> str:
    """The answer as the record writes it (before any template)."""
    if fmt == "chat":
        return record.data[options.key("messages")][-1]["content"]
    return record.data[options.key({"alpaca": "output", "prompt_completion": "completion"}[fmt])]
