"""ReDo: recycling dormant neurons (Sokar et al., ICML 2023) as a Lightning callback."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from clight.methods.plasticity.chain import ForwardFn
from clight.methods.plasticity.discovery import default_forward
from clight.methods.plasticity.hooked import UnitCallback


def dormancy_scores(abs_mean: torch.Tensor) -> torch.Tensor:
    """``s_i = E|h_i| / mean_k E|h_k|`` within one layer (0 for an all-silent layer)."""
    return abs_mean / abs_mean.mean().clamp_min(1e-12)


class ReDo(UnitCallback):
    """Every ``frequency`` optimizer steps, units of every hidden layer whose score
    ``s_i <= threshold`` are recycled: incoming weights from the initialiser, bias 0, outgoing
    weights 0, norm entries and optimizer moments reset. The output layer is never recycled (it
    has no consumer). Paper defaults: ``threshold=0.025``, ``frequency=1000``.

    The paper scores on a separately drawn batch of 64; clight scores on the training batch of
    the step at which it acts (averaged over ranks), which needs no extra forward pass.
    """

    seed_salt = 72
    log_prefix = "redo"
    hook_stats = ("abs",)

    def __init__(
        self,
        threshold: float = 0.025,
        frequency: int = 1000,
        layers: Optional[Sequence[str]] = None,
        chains: Optional[Sequence[dict]] = None,
        exclude: Sequence[str] = (),
        init: str = "default",
        seed: Optional[int] = None,
        verify_chains: bool = True,
        forward: ForwardFn = default_forward,
    ) -> None:
        super().__init__(layers, chains, exclude, init, seed, verify_chains, forward)
        if threshold < 0:
            raise ValueError(f"ReDo.threshold must be >= 0, got {threshold}")
        if frequency < 1:
            raise ValueError(f"ReDo.frequency must be >= 1 optimizer steps, got {frequency}")
        self.threshold = float(threshold)
        self.frequency = int(frequency)

    def wants_statistics(self) -> bool:
        return (self.step_count + 1) % self.frequency == 0

    def after_step(self, stats, optimizer) -> int:
        if self.step_count % self.frequency != 0:
            return 0
        total = 0
        for k, chain in enumerate(self.chains or []):
            if chain.unit_name not in stats:
                continue
            scores = dormancy_scores(stats[chain.unit_name]["abs"])
            index = (scores <= self.threshold).nonzero().flatten()
            if index.numel():
                self.replace(chain, k, index.cpu(), optimizer)
                total += int(index.numel())
        return total

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "paper": "Sokar et al., The dormant neuron phenomenon in deep RL, ICML 2023",
                "threshold": self.threshold,
                "frequency": self.frequency,
                "score_batch": "the training batch of the acting step",
            }
        )
        return info
