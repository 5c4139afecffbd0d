"""The ``clight`` command: ``clight fit --config X.yaml``, ``clight report RUN_DIR``,
``clight compare CONFIG ... --out DIR`` and, on a finished run, ``clight test``, ``predict``
and ``export`` (``clight.trained.commands``).

Configs are parsed by jsonargparse from the type hints of the classes (the same machinery as
LightningCLI), so an unknown key, a wrong type or a bad value fails before anything runs, with
the field named. The trainer section holds ``lightning.Trainer`` arguments; the runner builds a
fresh Trainer from it for every task.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

# The config's parser and runner live in clight.fit_config (clight compare builds runs with them
# too); notebooks and scripts import them from here. Lightning and jsonargparse are imported by
# the commands that use them: `clight --help` starts at once.
from clight.fit_config import build_fit_parser, runner_from_args, runner_from_config  # noqa: F401

if TYPE_CHECKING:
    from clight.runner.interrupt import RunInterrupted

USAGE = """usage: clight {fit,report,compare,test,predict,export} ... [--debug]

  clight fit --config CONFIG.yaml [--key=value ...]   train a model on a task sequence
  clight fit --config CONFIG.yaml --resume RUN_DIR    continue a stopped run where it stopped
  clight report RUN_DIR                               print the metrics, rebuild tables and plots
  clight compare CONFIG [CONFIG ...] --out DIR        run/resume/read configs, one table + figure
  clight test RUN_DIR                                 score a finished run's model on every task's test split
  clight predict RUN_DIR --inputs FILE [--task N]     its predictions on new inputs (.pt/.npy, or prompts)
  clight export RUN_DIR --out DIR [--no_merge]        its weights as files (a language model: a Hugging Face folder)

Run `clight fit --help` for every option, `clight fit --config X --print_config` for the resolved config.
Errors are one line; --debug shows the traceback.
"""

#: errors in what the user gave (config, data, run folder): one line, exit status 2
BUILTIN_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    TypeError,
    KeyError,
    FloatingPointError,
    NotADirectoryError,
    PermissionError,
)


def fit(argv: list[str]) -> int:
    result = runner_from_args(argv).run()
    _print_report(result.run_dir)
    return 0


def _print_report(run_dir: Path) -> None:
    from rich.console import Console

    from clight.distributed import is_rank_zero
    from clight.report import format_report

    if is_rank_zero():
        Console().print(format_report(run_dir))
        Console().print(f"run folder: {run_dir}")


def report(argv: list[str]) -> int:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="clight report", description="Print a run's metrics and rebuild its tables and plots.", exit_on_error=False
    )
    parser.add_argument("run_dir", type=str)
    args = parser.parse_args(argv)
    from clight.report import write_report

    write_report(args.run_dir)
    _print_report(Path(args.run_dir))
    return 0


def compare(argv: list[str]) -> int:
    from clight.compare.command import main as compare_main

    return compare_main(argv)


def _trained(name: str):
    def command(argv: list[str]) -> int:
        from clight.trained import commands

        return getattr(commands, name)(argv)

    return command


COMMANDS = {"fit": fit, "report": report, "compare": compare, **{n: _trained(n) for n in ("test", "predict", "export")}}


DEBUG = "--debug"


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"clight: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    debug = DEBUG in rest
    rest = [a for a in rest if a != DEBUG]
    try:
        return COMMANDS[command](rest)
    except Exception as exc:
        interrupted: Optional[type[RunInterrupted]] = _loaded("clight.runner.interrupt", "RunInterrupted")
        if interrupted and isinstance(exc, interrupted):
            print(f"clight {command}: {exc}", file=sys.stderr)
            return exc.exit_code
        if debug:
            raise
        return _report_error(command, exc)


#: the most characters an error message prints (--debug shows the whole exception)
MESSAGE_LIMIT = 1500


def _report_error(command: str, exc: Exception) -> int:
    """Print the error on one line (a file or a disk: what to do; a bad value: cut to a readable
    length) and return the exit status: 2 for bad input, 1 for anything else."""
    from argparse import ArgumentError

    from clight.io import StorageError, UnreadableFileError
    from clight.shorten import shorten

    error = exc if isinstance(exc, ArgumentError) else _root_cause(exc)
    code = 2
    if isinstance(error, UnreadableFileError):
        text = (
            f"{error}. {error.advice or 'Restore it from a copy (clight writes its files whole, so something else damaged it)'}."
        )
    elif isinstance(error, ArgumentError):
        lines = [shorten(" ".join(line.split())) for line in str(error).splitlines()]  # each value cut short, one line
        text = f"{' '.join(line for line in lines if line)} (clight {command} --help lists the options)"
    elif isinstance(error, ImportError) and not str(error).lower().count("pip install"):
        text = f"{error}: a package is missing (docs/install.md says what to install for language models, pretrained backbones, tests)"
    elif isinstance(error, (*_user_errors(), ImportError)):
        text = str(error)
    else:
        code = 1
        text = (
            str(error)
            if isinstance(error, StorageError)
            else f"{type(error).__name__}: {error} (run again with --debug for the traceback)"
        )
    print(f"clight {command}: error: {shorten(text, MESSAGE_LIMIT)}", file=sys.stderr)
    return code


#: how the config parser (jsonargparse) begins a message that wraps the error a class raised
PARSER_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def _root_cause(exc: BaseException) -> BaseException:
    """The error a class raised while the config parser built it: the parser reports it in a
    message of many lines (every type it tried, the whole value given), with the class's own
    error at the end of the chain."""
    seen = set()
    while str(exc).startswith(PARSER_WRAPPERS) and id(exc) not in seen:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        seen.add(id(exc))
        exc = inner
    return exc


def _loaded(module: str, name: str) -> Optional[type]:
    """A class from a module only if that module is already imported: an exception of that class
    can only have been raised if it is, and importing it here would import Lightning for nothing."""
    return getattr(sys.modules.get(module), name, None)


def _user_errors() -> tuple[type, ...]:
    clight_errors = (_loaded("clight.contract", "ConfigError"), _loaded("clight.runner.errors", "RunFolderError"))
    return tuple(c for c in clight_errors if c is not None) + BUILTIN_USER_ERRORS


if __name__ == "__main__":
    sys.exit(main())
