"""Continual backpropagation (Dohare et al., Nature 2024) as a Lightning callback."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from clight.methods.plasticity.chain import Chain, ForwardFn
from clight.methods.plasticity.discovery import default_forward
from clight.methods.plasticity.hooked import UnitCallback
from clight.methods.plasticity.optim_state import STEP_COUNT_KINDS, step_count_kind
from clight.methods.plasticity.utility import UTILITIES, instant_utility


class ContinualBackprop(UnitCallback):
    """After every optimizer step, per hidden layer: ages +1, running utility and mean
    activation updated, and ``replacement_rate * (#units older than maturity_threshold)``
    accumulated; whenever the accumulator reaches 1, that many eligible units with the lowest
    utility are replaced (fresh incoming weights, zero bias and outgoing weights, norm entries
    and optimizer state reset; age, utility and mean activation 0).

    Paper defaults: ``utility="contribution"``, ``decay=0.99``, ``maturity_threshold=100``,
    ``replacement_rate=1e-4`` (MLPs; 1e-5 with maturity 1000 for CNNs). Released-code options:
    ``utility`` ``zero_contribution`` / ``adaptable_contribution``, ``bias_correction=True``
    (rank by ``u / (1 - decay**age)``), ``bias_compensation=True`` (move ``w_out[:, i] * mean_h_i``
    into the consumer's bias before zeroing).

    Zeroing the outgoing weights removes the unit's contribution: the output is unchanged when
    the unit was dead (it output 0), and moves by that contribution otherwise (with
    ``bias_compensation`` only by its deviation from the unit's running mean).

    The released code trains with a per-entry-step Adam, which ``clight.optim.AdamPerEntryStep``
    provides; ``describe()`` records which step counting ran at the replacements
    (``optimizer_step_count``).
    """

    seed_salt = 71
    log_prefix = "cbp"
    cpu_keys = ("age", "accumulator")

    state_layout = {**UnitCallback.state_layout, "optimizer_step_counts": "replicated"}

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay: float = 0.99,
        utility: str = "contribution",
        bias_correction: bool = False,
        bias_compensation: bool = False,
        layers: Optional[Sequence[str]] = None,
        chains: Optional[Sequence[dict]] = None,
        exclude: Sequence[str] = (),
        init: str = "default",
        seed: Optional[int] = None,
        verify_chains: bool = True,
        forward: ForwardFn = default_forward,
    ) -> None:
        super().__init__(layers, chains, exclude, init, seed, verify_chains, forward)
        if utility not in UTILITIES:
            raise ValueError(f"ContinualBackprop.utility must be one of {UTILITIES}, got {utility!r}")
        if not 0 <= replacement_rate <= 1:
            raise ValueError(f"ContinualBackprop.replacement_rate must be in [0, 1], got {replacement_rate}")
        if not 0 <= decay < 1:
            raise ValueError(f"ContinualBackprop.decay must be in [0, 1), got {decay}")
        if maturity_threshold < 0:
            raise ValueError(f"ContinualBackprop.maturity_threshold must be >= 0, got {maturity_threshold}")
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay = float(decay)
        self.utility = utility
        self.bias_correction = bias_correction
        self.bias_compensation = bias_compensation
        centred = utility != "contribution"
        self.hook_stats = ("abs", "mean", "centered") if centred else (("abs", "mean") if bias_compensation else ("abs",))
        self.optimizer_step_counts: set[str] = set()  # how the optimizer counted steps at the replacements

    def new_layer_state(self, chain: Chain, device: torch.device) -> dict[str, torch.Tensor]:
        n = chain.num_units
        return {
            "age": torch.zeros(n, dtype=torch.long),
            "utility": torch.zeros(n, device=device),
            "mean_activation": torch.zeros(n, device=device),
            "accumulator": torch.zeros((), dtype=torch.float64),
        }

    def _correction(self, age: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (1 - self.decay ** age.double()).clamp_min(1e-12).to(like)

    def _corrected(self, st: dict, key: str) -> torch.Tensor:
        """The running average ``key``, bias-corrected by ``1 - decay**age`` when enabled."""
        return st[key] / self._correction(st["age"], st[key]) if self.bias_correction else st[key]

    def reference_mean(self, chain: Chain) -> torch.Tensor:
        return self._corrected(self.unit_state[chain.unit_name], "mean_activation")

    def after_step(self, stats: dict[str, dict[str, torch.Tensor]], optimizer) -> int:
        total = 0
        for k, chain in enumerate(self.chains or []):
            if chain.unit_name not in stats:
                continue
            st = self.unit_state[chain.unit_name]
            s = {key: v.to(st["utility"].device) for key, v in stats[chain.unit_name].items()}
            st["age"] += 1
            if "mean" in s:
                st["mean_activation"].mul_(self.decay).add_((1 - self.decay) * s["mean"])
            st["utility"].mul_(self.decay).add_((1 - self.decay) * instant_utility(self.utility, chain, s))
            eligible = (st["age"] > self.maturity_threshold).nonzero().flatten()  # on the CPU: no device sync
            if eligible.numel() == 0:
                continue
            st["accumulator"] += self.replacement_rate * eligible.numel()
            count = int(st["accumulator"].floor())
            if count < 1:
                continue
            st["accumulator"] -= count
            count = min(count, eligible.numel())
            utility = self._corrected(st, "utility")
            order = torch.sort(utility[eligible.to(utility.device)], stable=True).indices[:count]
            index = eligible[order.cpu()]
            mean = self._corrected(st, "mean_activation") if self.bias_compensation else None
            kind = step_count_kind(optimizer)
            if kind is not None:
                self.optimizer_step_counts.add(kind)
            self.replace(chain, k, index, optimizer, mean)
            st["age"][index] = 0
            index = index.to(st["utility"].device)
            st["utility"][index] = 0
            st["mean_activation"][index] = 0
            total += int(index.numel())
        return total

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "paper": "Dohare et al., Loss of plasticity in deep continual learning, Nature 2024",
                "variant": "paper"
                if (self.utility == "contribution" and not self.bias_correction and not self.bias_compensation)
                else "released_code_options",
                "utility": self.utility,
                "replacement_rate": self.replacement_rate,
                "maturity_threshold": self.maturity_threshold,
                "decay": self.decay,
                "bias_correction": self.bias_correction,
                "bias_compensation": self.bias_compensation,
                "optimizer_step_count": {kind: STEP_COUNT_KINDS[kind] for kind in sorted(self.optimizer_step_counts)}
                or "no replacement with an optimizer yet",
            }
        )
        return info

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizer_step_counts": sorted(self.optimizer_step_counts)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer_step_counts = set(state.get("optimizer_step_counts", []))
