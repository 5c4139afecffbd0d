"""A config parser error as one line: the key or value at fault, where it was given (the YAML
file and its line, or the command line), and for an unknown key the nearest valid names.

jsonargparse reports an error inside a nested class as a tree (every type of a Union it tried,
the whole value given) and chains one exception per level; the levels name the keys on the way
down (``Parser key "model"``, ``Problem with given class_path 'clight.MLP'``) and the last one
holds the reason. ``explain_parse_error`` follows that chain.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from clight.shorten import shorten

PARSER_KEY = re.compile(r'^Parser key "([^"]+)":')
CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':")
CALLABLE_CLASS = re.compile(r"expects a function or a callable class: .*class_path='([^']+)'", re.S)
GROUP_OPTION = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'")
NOT_ACCEPTED = re.compile(r"^Option '([^']+)' is not accepted")
UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.*)")
#: how jsonargparse begins a level that only wraps the next one
WRAPPERS = ("Does not validate against any of the Union subtypes",)


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are raised (``clight`` prints them as one line) instead of
    printed under the usage block: the usage is for ``--help``."""

    def error(self, message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)


@dataclass
class _Fault:
    """What the chain of a parser error says: the config path, the class whose options it is
    inside (and where that class's options begin in the path), and the reason."""

    path: list[str] = field(default_factory=list)
    class_path: Optional[str] = None
    class_start: int = 0
    unknown: bool = False
    flags: list[str] = field(default_factory=list)  # unrecognized command-line arguments
    reason: str = ""

    def enter_class(self, class_path: str) -> None:
        self.path.append("init_args")
        self.class_path, self.class_start = class_path, len(self.path)


def _messages(exc: BaseException) -> list[str]:
    seen: list[str] = []
    ids: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in ids:
        ids.add(id(current))
        text = str(current).strip()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        current = current.__cause__ or current.__context__
    return seen


def _read_fault(exc: BaseException) -> _Fault:
    fault = _Fault()
    for text in _messages(exc):
        first = text.splitlines()[0]
        if match := PARSER_KEY.match(first):
            fault.path.extend(match[1].split("."))
        elif match := CLASS_PATH.match(first):
            fault.enter_class(match[1])
        elif (match := CALLABLE_CLASS.search(text)) and NOT_ACCEPTED.search(text.split(": ", 1)[-1]):
            fault.enter_class(match[1])
        elif match := GROUP_OPTION.match(first):
            fault.path.extend([*match[1].split("."), *match[2].split(".")])
            fault.unknown = True
            break
        elif match := NOT_ACCEPTED.match(first):
            fault.path.extend(match[1].split("."))
            fault.unknown = True
            break
        elif match := UNRECOGNIZED.match(first):
            fault.flags = match[1].split()
            fault.unknown = True
            break
        elif not first.startswith(WRAPPERS):
            fault.reason = shorten(" ".join(text.split()))
    return fault


def _option_names(parser: Any) -> list[str]:
    names = [a.dest for a in parser._actions if a.dest not in ("help", "config", "print_config")]
    return [n for n in names if not n.endswith(".help") and n != argparse.SUPPRESS]


def _class_options(class_path: str) -> list[str]:
    """The options jsonargparse accepts in a class's ``init_args`` (empty if it cannot tell)."""
    from jsonargparse import ArgumentParser

    try:
        module, name = class_path.rsplit(".", 1)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    except Exception:
        return []
    return _option_names(parser)


def _nearest(path: Sequence[str], valid: Sequence[str]) -> tuple[list[str], str, list[list[str]]]:
    """(the valid part of ``path``, its first unknown name, the nearest valid paths in its place:
    with the rest of ``path`` where that makes a valid key)."""
    known = [v.split(".") for v in valid]
    depth = 0
    while depth < len(path) - 1 and any(k[: depth + 1] == list(path[: depth + 1]) for k in known):
        depth += 1
    prefix, bad, rest = list(path[:depth]), path[depth], list(path[depth + 1 :])
    siblings = sorted({k[depth] for k in known if len(k) > depth and k[:depth] == prefix})
    near = difflib.get_close_matches(bad, siblings, n=3, cutoff=0.7)
    return prefix, bad, [[*prefix, n, *rest] if [*prefix, n, *rest] in known else [*prefix, n] for n in near]


def _config_files(argv: Sequence[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _where(name: str, argv: Sequence[str]) -> tuple[str, bool]:
    """Where ``name`` was given: (a description, whether it is a flag's name on the command line)."""
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    for arg in argv:
        flag, _, value = arg.partition("=")
        if arg.startswith("--") and flag != "--config" and name in flag[2:].split("."):
            return f"on the command line ({flag})", True
        if arg.startswith("--") and flag != "--config" and word.search(value):
            return f"on the command line (in {flag})", False
    key = re.compile(rf"(?:^|[\s{{,-]){re.escape(name)}\s*:")
    for config in _config_files(argv):
        try:
            lines = Path(config).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(lines, 1):
            if key.search(line.split("#", 1)[0]):
                return f"in {config} (line {number})", False
    return "", False


def _unknown_option(fault: _Fault, parser: Any, argv: Sequence[str]) -> str:
    if fault.flags:
        flag = next((f for f in fault.flags if f.startswith("--")), fault.flags[0])
        name = flag.split("=", 1)[0]
        if not name.startswith("--"):
            return f"unexpected argument {flag!r} on the command line"
        _, _, near = _nearest(name[2:].split("."), _option_names(parser))
        hint = f": did you mean {' or '.join('--' + '.'.join(n) for n in near)}?" if near else ""
        return f"unknown option {name} on the command line{hint}"
    outer = fault.path[: fault.class_start] if fault.class_path else []
    valid = _class_options(fault.class_path) if fault.class_path else _option_names(parser)
    prefix, bad, near = _nearest(fault.path[len(outer) :], valid)
    where, as_flag = _where(bad, argv)
    text = f"unknown key {'.'.join([*outer, *prefix, bad])}{' ' + where if where else ''}"
    if fault.class_path:
        text += f": {fault.class_path} has no option {bad!r}"
    if near:
        shown = ["--" + ".".join([*outer, *n]) if as_flag else n[len(prefix)] for n in near]
        text += f"{';' if fault.class_path else ':'} did you mean {' or '.join(shown)}?"
    return text


def explain_parse_error(exc: BaseException, parser: Any, argv: Sequence[str]) -> str:
    """One line for a ``clight fit`` parser error: the key, where it was given, the nearest valid
    names for an unknown one, the innermost reason for a bad value."""
    fault = _read_fault(exc)
    if fault.unknown:
        return _unknown_option(fault, parser, argv)
    if not fault.path:
        return " ".join(str(exc).split())
    where, _ = _where(fault.path[-1], argv)
    owner = f" ({fault.class_path})" if fault.class_path else ""
    return f"{'.'.join(fault.path)}{owner}{' ' + where if where else ''}: {fault.reason or ' '.join(str(exc).split())}"
