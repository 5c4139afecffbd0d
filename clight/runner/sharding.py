"""Which strategy a run uses, and what clight does when it shards parameters.

``trainer.strategy: sharded`` is clight's name for Lightning's ``ModelParallelStrategy`` with
every process in one data-parallel group (``data_parallel_size`` = all processes,
``tensor_parallel_size=1``): FSDP2's ``fully_shard`` on every transformer block, then on the
model's top-level parts (``clight.models.sharding``). Each fit gets a fresh strategy object;
the processes and the process group are started once (``processes.py``) and reused.

The rule between tasks: the model is sharded once, in the first fit's ``configure_model``, and
stays sharded (the same module objects, its parameters DTensors) for the rest of the run. A
later fit's ``configure_model`` shards only modules a task added since (a new head), each as a
unit of its own, and costs nothing otherwise (``ShardingRecord``). Everything a method creates
up front (LoRA adapters, MoE experts and routers) exists before the first fit and is sharded
with its block.

Lightning's ``fsdp`` and ``deepspeed`` strategies need CUDA: on the CPU they are refused here
with one line naming what to use instead. On GPUs they are passed to Lightning as given but
clight has never run them (docs/scaling.md): they would re-wrap the model in every fit.
"""

from __future__ import annotations

import warnings
from typing import Any

from clight.contract import ConfigError
from clight.distributed import is_model_parallel, shards_parameters, strategy_name

SHARDED = "sharded"
_GPU_ONLY = ("fsdp", "deepspeed")  # Lightning strategies needing CUDA, by the start of their registered names


def _on_cpu(trainer: dict) -> bool:
    accelerator = trainer.get("accelerator", "auto")
    if isinstance(accelerator, str) and accelerator in ("cpu",):
        return True
    if accelerator in ("auto", None):
        import torch

        return not torch.cuda.is_available()
    return False


def check_strategy(trainer: dict) -> None:
    """Refuse, before anything runs, a strategy clight cannot run with these settings."""
    strategy = trainer.get("strategy", "auto")
    name = strategy_name(strategy)
    if isinstance(strategy, str) and strategy.startswith(_GPU_ONLY):
        if _on_cpu(trainer):
            raise ConfigError(
                f"trainer.strategy={strategy!r} needs CUDA GPUs (Lightning refuses it on the CPU): on the CPU use "
                f"strategy: {SHARDED} (FSDP2 through Lightning's ModelParallelStrategy) or ddp."
            )
        warnings.warn(
            f"clight has never run trainer.strategy={strategy!r} (docs/scaling.md): it is passed to Lightning untested. "
            f"strategy: {SHARDED} is the tested way to shard parameters.",
            stacklevel=2,
        )
    if not isinstance(strategy, str) and is_model_parallel(strategy):
        tp = getattr(strategy, "_tensor_parallel_size", "auto")
        if isinstance(tp, int) and tp > 1:
            raise ConfigError(
                f"{name} with tensor_parallel_size={tp}: clight shards parameters across data-parallel ranks only. "
                f"Use strategy: {SHARDED} (every process in one data-parallel group)."
            )


def fit_strategy(strategy: Any, processes: int) -> Any:
    """The strategy object one fit's Trainer gets: ``sharded`` or a ModelParallelStrategy -> a fresh
    ``ShardedStrategy`` over all ``processes`` (data-parallel only)."""
    if strategy != SHARDED and (isinstance(strategy, str) or not is_model_parallel(strategy)):
        return strategy
    from clight.runner.sharded_strategy import ShardedStrategy  # imports Lightning: only when a run shards

    given = {} if isinstance(strategy, str) else {"process_group_backend": strategy.process_group_backend}
    return ShardedStrategy(data_parallel_size=processes, tensor_parallel_size=1, **given)


def launch_strategy(strategy: Any) -> Any:
    """What Fabric starts the processes and the process group with for ``strategy`` (Fabric
    takes its own strategy classes; any data-parallel launcher starts the same processes)."""
    if strategy == SHARDED or not isinstance(strategy, str):
        return "ddp"
    return strategy


def check_sharding(trainer: dict, model: Any, methods: list) -> None:
    """The strategy (``check_strategy``) and every method's ability to run under it, before anything runs."""
    check_strategy(trainer)
    check_methods_shard(methods, model, trainer.get("strategy", "auto"))


def check_methods_shard(methods: list, model: Any, strategy: Any) -> None:
    """A method that cannot run with sharded parameters is refused before the run starts."""
    if not shards_parameters(strategy):
        return
    reason = getattr(model, "unshardable", None)
    if reason:
        raise ConfigError(
            f"{type(model).__name__} cannot be trained under trainer.strategy={strategy_name(strategy)!r} (parameters "
            f"sharded across ranks): {reason}. Use strategy: ddp (or one device)."
        )
    for method in methods:
        reason = method.sharding_refusal(model)
        if reason:
            raise ConfigError(
                f"{type(method).__name__} cannot run under trainer.strategy={strategy_name(strategy)!r} (parameters sharded "
                f"across ranks): {reason}. Use strategy: ddp (or one device), or drop {type(method).__name__} from `methods`."
            )
