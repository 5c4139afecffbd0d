"""DualPrompt: complementary prompting for rehearsal-free continual learning (Wang et al., ECCV 2022)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clight.choices import check_choice
from clight.contract import ConfigError
from clight.data.task import SequenceInfo, Task
from clight.methods.prompts.model import Pooling, PromptClassifier
from clight.methods.prompts.pool import batch_majority, cosine_similarity, uniform_parameter
from clight.methods.prompts.vit import Prompting
from clight.models.module import default_optimizer

KeySet = Literal["seen", "all"]


class DualPromptPrompts(nn.Module):
    """G-prompts ``[G layers, 2, g_length, D]`` (keys, values) shared by all tasks; one E-prompt per
    task ``[E layers, T, 2, e_length, D]`` with one key per task ``[T, D]``, shared by its layers."""

    def __init__(self, g_layers: int, e_layers: int, num_tasks: int, g_length: int, e_length: int, dim: int) -> None:
        super().__init__()
        self.general = uniform_parameter(g_layers, 2, g_length, dim)
        self.expert = uniform_parameter(e_layers, num_tasks, 2, e_length, dim)
        self.keys = uniform_parameter(num_tasks, dim)


class DualPrompt(PromptClassifier):
    """DualPrompt on a frozen timm ViT: a G(eneral)-prompt in blocks ``g_layers`` and task-specific
    E(xpert)-prompts in blocks ``e_layers``, both by prefix tuning (``g_length`` / ``e_length`` tokens
    prepended to the keys and as many to the values of the block's attention). In training a sample
    uses its own task's E-prompt and the loss adds ``match_weight`` x ``1 - cos(q, k_task)``; at test
    the E-prompt whose key is nearest the query (cosine) is used, among the tasks seen so far
    (``key_set: all``: among every task's keys, as the released code does), per sample or by batch
    majority (``batchwise_selection``, released code). ``init_from_previous`` starts each task's
    E-prompt from the previous task's (the released code's ``shared_prompt_pool``).
    The head reads the [CLS] token. Defaults: the paper's placement (G: blocks 1-2, E: blocks 3-5,
    1-indexed), the released config's lengths (5) and weight (1.0); see ``docs/methods/prompts.md``.
    """

    method_name = "DualPrompt (Wang et al., ECCV 2022)"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        g_layers: Sequence[int] = (0, 1),
        e_layers: Sequence[int] = (2, 3, 4),
        g_length: int = 5,
        e_length: int = 5,
        match_weight: float = 1.0,
        key_set: KeySet = "seen",
        batchwise_selection: bool = False,
        init_from_previous: bool = False,
        pooling: Pooling = "token",
        train_mask: bool = True,
    ) -> None:
        check_choice("DualPrompt.key_set", key_set, KeySet)
        if g_length < 1 or e_length < 1 or not e_layers:
            raise ValueError("DualPrompt needs e_layers and positive g_length and e_length")
        if match_weight < 0:
            raise ValueError(f"DualPrompt.match_weight must be >= 0, got {match_weight}")
        super().__init__(backbone, optimizer, lr_scheduler, pooling, train_mask)
        self.match_weight = match_weight
        self.g_layers, self.e_layers = [int(i) for i in g_layers], [int(i) for i in e_layers]
        self.g_length, self.e_length = g_length, e_length
        self.key_set, self.batchwise_selection, self.init_from_previous = key_set, batchwise_selection, init_from_previous

    def check_prompts(self, info: SequenceInfo) -> None:
        outside = [i for i in self.g_layers + self.e_layers if not 0 <= i < self.depth]
        if outside or len(set(self.g_layers)) < len(self.g_layers) or len(set(self.e_layers)) < len(self.e_layers):
            raise ConfigError(
                f"DualPrompt: g_layers {self.g_layers} and e_layers {self.e_layers} must each list distinct blocks of the "
                f"ViT's {self.depth} (0-based); pick layers below {self.depth}"
            )

    def build_prompts(self, info: SequenceInfo) -> nn.Module:
        return DualPromptPrompts(
            len(self.g_layers), len(self.e_layers), info.num_tasks, self.g_length, self.e_length, self.embed_dim
        )

    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)
        if self.init_from_previous and task.index > 0:
            with torch.no_grad():
                self.prompts.expert[:, task.index] = self.prompts.expert[:, task.index - 1]

    def has_prompt_loss(self) -> bool:
        return self.match_weight > 0

    def expert_choice(self, query: torch.Tensor) -> torch.Tensor:
        """The task whose E-prompt each sample uses at test: its key nearest the query."""
        keys = self.prompts.keys if self.key_set == "all" else self.prompts.keys[: self.current_task + 1]
        chosen = cosine_similarity(query, keys).argmax(dim=1, keepdim=True)
        return (batch_majority(chosen, 1) if self.batchwise_selection else chosen)[:, 0]

    def compose(self, query: torch.Tensor, task_id: Optional[torch.Tensor]) -> tuple[Prompting, Optional[torch.Tensor]]:
        batch = len(query)
        match = None
        if task_id is not None:
            experts = task_id.long()
            match = self.match_weight * (1 - cosine_similarity(query, self.prompts.keys).gather(1, experts[:, None])).mean()
        else:
            experts = self.expert_choice(query)
        prefixes: dict[int, list[torch.Tensor]] = {}
        for i, layer in enumerate(self.g_layers):
            general = self.prompts.general[i].expand(batch, -1, -1, -1)
            prefixes[layer] = [general[:, 0], general[:, 1]]
        for i, layer in enumerate(self.e_layers):
            expert = self.prompts.expert[i, experts]  # [B, 2, e_length, D]
            keys, values = expert[:, 0], expert[:, 1]
            if layer in prefixes:  # the G-prompt first, as the released code concatenates them
                keys, values = torch.cat([prefixes[layer][0], keys], 1), torch.cat([prefixes[layer][1], values], 1)
            prefixes[layer] = [keys, values]
        return Prompting(prefixes={layer: (k, v) for layer, (k, v) in prefixes.items()}), match

    def describe(self) -> dict:
        return {
            **super().describe(),
            "g_layers": self.g_layers,
            "e_layers": self.e_layers,
            "g_length": self.g_length,
            "e_length": self.e_length,
            "match_weight": self.match_weight,
            "placement": "prefix tuning (g_length / e_length tokens prepended to the keys and as many to the values)",
            "test_selection": f"nearest key among {'every task' if self.key_set == 'all' else 'the tasks seen so far'}, "
            + ("batch majority (released code)" if self.batchwise_selection else "per sample (paper)"),
            "init_from_previous": self.init_from_previous,
        }
