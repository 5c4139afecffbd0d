"""Start the run's processes and their process group before anything else happens.

Lightning starts the other DDP processes (and the process group) inside the first
``Trainer.fit``. clight's methods act before that (``setup_sequence``: GeRe computes and
broadcasts its thresholds there), so the runner starts them first, with Fabric and the same
accelerator, devices, strategy and number of nodes as the Trainer section. Each later
Trainer then finds the processes running (``LOCAL_RANK`` is set) and the group initialised,
and reuses both. A sharded run (``strategy: sharded``, Lightning's ModelParallelStrategy) starts
the same processes as DDP: Fabric takes only its own strategy classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from clight.distributed import barrier, global_rank, world_size
from clight.runner.sharding import launch_strategy

LAUNCH_KEYS = ("accelerator", "devices", "strategy", "num_nodes")


@dataclass(frozen=True)
class World:
    rank: int
    size: int


def start_processes(trainer_kwargs: dict) -> World:
    """Launch the other processes (if the Trainer section asks for several) and set up the group."""
    if world_size() > 1:  # a later run in the same processes: every rank has read the run folder before rank 0 writes
        barrier()
        return World(global_rank(), world_size())
    from lightning.fabric import Fabric

    kwargs = {k: trainer_kwargs[k] for k in LAUNCH_KEYS if k in trainer_kwargs}
    if "strategy" in kwargs:
        kwargs["strategy"] = launch_strategy(kwargs["strategy"])
    fabric = Fabric(**kwargs)
    if fabric.world_size > 1:
        fabric.launch()
    return World(fabric.global_rank, fabric.world_size)
