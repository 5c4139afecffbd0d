"""The ``clight fit`` config: the parser jsonargparse builds from the classes' type hints (the
same machinery as LightningCLI), and the runner a config describes. ``clight fit`` and
``clight compare`` both build their runs here.

Lightning and jsonargparse are imported inside the functions, so importing this module (as
``clight --help`` does) costs nothing.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

    from clight.runner import SequenceRunner


def build_fit_parser(list_classes: bool = False) -> ArgumentParser:
    """The ``clight fit`` parser; with ``list_classes`` (for ``--help``: it imports every model
    and method) the help of ``--model`` and ``--methods`` names every class clight ships."""
    import lightning as L
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, lazy_instance

    from clight.data.datamodule import TaskSequence
    from clight.methods.base import ContinualCallback
    from clight.models.module import ContinualModule
    from clight.runner import RESERVED_TRAINER_KEYS, RunnerSettings

    parser = ArgumentParser(
        prog="clight fit",
        description="Train a model on a sequence of tasks (add --debug to see the traceback of an error).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_argument("--seed_everything", type=int, default=0, help="seed for model init, data and methods")
    parser.add_argument("--run_dir", type=str, default="runs/run", help="folder for the run's outputs")
    parser.add_argument("--resume", type=Optional[str], default=None, help="resume the run in this folder")
    parser.add_argument(
        "--allow_config_change",
        action=ActionYesNo,
        default=False,
        help="resume even though this config differs from the run's (the change is recorded in config_changes.json)",
    )
    shipped = _shipped_help() if list_classes else {"models": "", "methods": ""}
    parser.add_subclass_arguments(
        ContinualModule, "model", required=True, help=f"the model (class_path, init_args){shipped['models']}"
    )
    parser.add_subclass_arguments(
        TaskSequence, "data", default=lazy_instance(TaskSequence), help="the task sequence (class_path optional: TaskSequence)"
    )
    parser.add_argument(
        "--methods",
        type=list[ContinualCallback],
        default=[],
        help=f"method callbacks, kept for the whole run{shipped['methods']}",
    )
    parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, skip=set(RESERVED_TRAINER_KEYS))
    parser.add_class_arguments(RunnerSettings, "runner", instantiate=False, help="how every task is trained and scored")
    parser.link_arguments("seed_everything", "data.init_args.seed")
    return parser


def _shipped_help() -> dict[str, str]:
    from clight.shipped import shipped_classes

    return {kind: f"; clight ships {', '.join(names)}" for kind, names in shipped_classes().items()}


def _trainer_kwargs(cfg: Namespace, parser: ArgumentParser) -> dict:
    defaults = parser.get_defaults().trainer.as_dict()
    given = cfg.trainer.as_dict()
    # Only what differs from Trainer's own defaults, so the config stays readable and portable.
    return {k: v for k, v in given.items() if defaults.get(k) != v}


def runner_from_args(argv: list[str]) -> SequenceRunner:
    """Parse ``clight fit`` arguments (``--config X.yaml``, ``--key=value`` overrides) into a runner."""
    import lightning as L

    from clight.runner import RunnerSettings, SequenceRunner
    from clight.runner.preflight import check_finite

    parser = build_fit_parser(list_classes=any(a in ("-h", "--help") for a in argv))
    cfg = parse_fit_args(parser, argv)
    check_finite(cfg.as_dict())
    L.seed_everything(cfg.seed_everything, verbose=False)
    init = parser.instantiate(cfg)
    trainer = _trainer_kwargs(cfg, parser)
    for key in ("logger", "callbacks"):  # the user's Lightning loggers and callbacks, built
        if key in trainer:
            trainer[key] = init.trainer[key]
    runner = SequenceRunner(
        model=init.model,
        data=init.data,
        methods=init.methods,
        trainer=trainer,
        run_dir=cfg.resume or cfg.run_dir,
        seed=cfg.seed_everything,
        resume=cfg.resume is not None,
        config=parser.dump(cfg, skip_unset=False),
        settings=RunnerSettings(**cfg.runner.as_dict()),
        allow_config_change=cfg.allow_config_change,
    )
    runner.resume_command = resume_command(argv, cfg.resume or cfg.run_dir)
    return runner


def parse_fit_args(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    """``argv`` parsed, or an ``ArgumentError`` of one line (see clight.config_errors) that
    ``clight`` prints without the usage block."""
    from argparse import ArgumentError

    from clight.config_errors import explain_parse_error

    parser.exit_on_error = False
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as exc:
        raise ArgumentError(None, explain_parse_error(exc, parser, argv)) from exc


def resume_command(argv: list[str], run_dir: str) -> str:
    """The ``clight fit`` command that continues a run started or resumed with ``argv``: the same
    config and overrides (the user's own, never the run folder's copy) with ``--resume RUN_DIR``."""
    kept, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip or name in ("--run_dir", "--resume", "--allow_config_change", "--no_allow_config_change"):
            skip = not skip and name in ("--run_dir", "--resume") and "=" not in arg
            continue
        kept.append(arg)
    return "clight fit " + shlex.join([*kept, "--resume", str(run_dir)])


def runner_from_config(config: str, *overrides: str) -> SequenceRunner:
    """The runner ``clight fit --config CONFIG OVERRIDES...`` would run (for notebooks and scripts)."""
    return runner_from_args(["--config", str(config), *overrides])
