"""Chat messages rendered as a prompt and an answer.

``chat_style``:

- ``template``: the tokenizer's own chat template (``apply_chat_template``): the prompt is every
  message but the last, with the template's generation prompt; the answer is the last (assistant)
  message as the template writes it, with its end-of-turn text (no EOS is added);
- ``plain`` (for tokenizers without a template), one line per message and the answer after
  ``Assistant:``::

      System: {system}
      User: {user}
      Assistant: {earlier reply}
      User: {user}
      Assistant:{" " + answer + EOS}

- ``auto`` (the default): ``template`` when the tokenizer has one, else ``plain``.

The last user message is the part of the prompt cut first when a sample is too long (``body``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from clight.data.text.instruct.records import Record

ChatStyle = Literal["auto", "template", "plain"]
ROLES = ("system", "user", "assistant")
_BODY = "\x00clight-body\x00"  # stands for the last user message while the template renders
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Rendered:
    """A prompt as ``head + body + tail`` (only ``body`` may be shortened) and its answer text;
    ``eos``: whether the answer still needs the tokenizer's EOS token."""

    head: str
    body: str
    tail: str
    answer: str
    eos: bool = True


def resolve_chat_style(style: ChatStyle, tokenizer) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if style == "template" and not has_template:
        raise ValueError("chat_style 'template': this tokenizer has no chat template; use chat_style 'plain' (or 'auto')")
    if style == "auto":
        return "template" if has_template else "plain"
    return style


def check_messages(record: Record, messages) -> list[dict]:
    """The record's messages: a list of {role, content}, roles system/user/assistant, ending with
    the assistant's answer after at least one user message."""
    fix = 'Write "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]'
    if not isinstance(messages, list) or not messages:
        raise record.error(f"'messages' must be a non-empty list of {{role, content}} objects. {fix}")
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise record.error(f"message {i} is not a {{role, content}} object. {fix}")
        if message["role"] not in ROLES:
            raise record.error(f"message {i} has the unknown role {message['role']!r}: use one of {list(ROLES)}")
        if not isinstance(message["content"], str):
            raise record.error(f"message {i}'s content is a {type(message['content']).__name__}, not a string")
    if messages[-1]["role"] != "assistant":
        raise record.error("the last message must be the assistant's answer (the text trained on and scored)")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise record.error("no user message before the answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _last_user(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def render_chat(messages: list[dict], tokenizer, style: str, record: Optional[Record] = None) -> Rendered:
    """``messages`` (checked, ending with the answer) as prompt parts and answer, in ``style``."""
    body_at = _last_user(messages)
    body = messages[body_at]["content"]
    shown = [dict(m, content=_BODY) if i == body_at else m for i, m in enumerate(messages)]
    answer = messages[-1]["content"]
    if style == "plain":
        lines = "".join(f"{PLAIN_NAMES[m['role']]}: {m['content']}\n" for m in shown[:-1])
        head, tail = (lines + "Assistant:").split(_BODY)
        return Rendered(head, body, tail, " " + answer, eos=True)
    prompt = tokenizer.apply_chat_template(shown[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(shown, tokenize=False)
    if not full.startswith(prompt) or prompt.count(_BODY) != 1:
        problem = "the tokenizer's chat template does not write the conversation as prompt + answer: use chat_style 'plain'"
        raise record.error(problem) if record is not None else ValueError(problem)
    head, tail = prompt.split(_BODY)
    return Rendered(head, body, tail, full[len(prompt) :], eos=False)


def answer_variant(rendered: Rendered, answer: str, content: str) -> str:
    """The answer text ``rendered`` would have if the assistant had said ``answer`` instead of
    ``content`` (candidate labels are rendered like the gold answer)."""
    at = rendered.answer.find(content)
    if at < 0:
        return answer
    return rendered.answer[:at] + answer + rendered.answer[at + len(content) :]
