"""How a method's state lives across ranks: the declaration every method makes in the contract.

Each entry of a method's ``state_dict`` has one layout (``ContinualCallback.state_layout``):

- ``replicated``: identical on every rank, whatever the strategy; saved once (by rank 0). Made
  so by computing it alike on every rank from the same data (GeRe's thresholds), by seeding
  alike, or by broadcasting rank 0's result (SPU's masks, MoE adapters' DDAS).
- ``reduced``: computed from every rank's own batches and reduced across ranks before it is
  used (summed or averaged), so identical on every rank from then on (SPU's importance, the
  unit statistics of the plasticity methods, MoE adapters' expert picks).
- ``sharded``: belongs to a parameter and lives like it: whole on every rank under DDP, this
  rank's shard when parameters are sharded (EWC's Fisher and anchor, LwF's frozen copy).

A method that cannot run when parameters are sharded says why in ``unshardable`` (or, where it
depends on its options and the model, in ``sharding_refusal``): the runner refuses the run
before it starts, naming the strategy. ``clight.rank_check`` compares the replicated and
reduced state (and every unsharded tensor) across ranks after every task.
"""

from __future__ import annotations

from typing import Literal

StateLayout = Literal["replicated", "reduced", "sharded"]
LAYOUTS: tuple[str, ...] = ("replicated", "reduced", "sharded")
