"""OLoRA: IncLoRA plus a penalty keeping each new adapter's A orthogonal to the earlier ones'.

Objective of task t: ``L_task + lambda_1 * sum_layers L_orth(A_t, A_<t) + lambda_2 * L2``, with
``L_orth`` from ``loss.py`` and ``L2`` the sum of the Frobenius norms of the new adapter's A and B
(the released code's term; the paper's objective has no L2 term, and lambda_2 = 0 by default as
in the released scripts). Earlier adapters are frozen and applied. Each weighted term is logged on
its own (``train/o_lora_orthogonality``, ``train/o_lora_l2``): the orthogonality term can dwarf the
language-model loss (O-LoRA issue 33).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from clight.choices import check_choice
from clight.contract import RunContext
from clight.data.task import Task
from clight.methods.lora_family import TaskLoRAMethod
from clight.methods.o_lora.loss import OrthogonalityLoss, Penalty, l2_norms

PENALTIES = {
    "squared": "sum of squared entries of A_t A_i^T (paper)",
    "abs": "sum of absolute entries of A_t A_i^T (released code)",
}


class OLoRA(TaskLoRAMethod):
    """O-LoRA (Wang et al., 2023): a new LoRA per task, orthogonal to the earlier tasks' subspaces.

    ``lambda_1`` (0.5, the released scripts'): weight of the orthogonality term; ``penalty``:
    ``squared`` (paper) or ``abs`` (released code). ``lambda_2`` (0): weight of the L2 term on the
    new adapter (released code only).
    """

    per_task = True

    def __init__(
        self,
        lambda_1: float = 0.5,
        lambda_2: float = 0.0,
        penalty: Penalty = "squared",
        save_adapters: bool = True,
        fuse_earlier: bool = True,
    ) -> None:
        check_choice("OLoRA.penalty", penalty, Penalty)
        if lambda_1 < 0 or lambda_2 < 0:
            raise ValueError(f"OLoRA.lambda_1 and lambda_2 must be >= 0, got {lambda_1} and {lambda_2}")
        super().__init__(save_adapters, fuse_earlier)
        self.lambda_1, self.lambda_2, self.penalty = lambda_1, lambda_2, penalty
        self.orthogonality: Optional[OrthogonalityLoss] = None
        self._new: list[torch.nn.Parameter] = []

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        super().setup_sequence(module, datamodule, context)
        suffix = self._state_key_suffix
        module.add_loss_term(f"o_lora_orthogonality{suffix}", self.orthogonality_term)
        if self.lambda_2 > 0:
            module.add_loss_term(f"o_lora_l2{suffix}", self.l2_term)

    def on_task_start(self, module: Any, task: Task) -> None:
        super().on_task_start(module, task)
        assert self.adapters is not None, "setup_sequence comes first"
        new = self.adapters.weights(task.index, "lora_A")
        earlier = [self.adapters.weights(i, "lora_A") for i in range(task.index)]
        pairs = [(a, torch.cat([e[name] for e in earlier]) if earlier else a.new_zeros(0, a.shape[1])) for name, a in new.items()]
        self.orthogonality = OrthogonalityLoss(pairs, self.penalty)
        self._new = list(new.values()) + list(self.adapters.weights(task.index, "lora_B").values())

    def orthogonality_term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        if self.orthogonality is None or self.orthogonality.empty or self.lambda_1 == 0:
            return outputs["logits"].new_zeros(())
        return self.lambda_1 * self.orthogonality()

    def l2_term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        return self.lambda_2 * l2_norms(self._new)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "lambda_1": self.lambda_1,
            "lambda_2": self.lambda_2,
            "penalty": PENALTIES[self.penalty],
            "subspace": "rows of each layer's lora_A (down-projection), as the released code and the authors' issue 9",
            "l2": "sum of Frobenius norms of the new adapter's A and B (released code)" if self.lambda_2 > 0 else "off",
        }
