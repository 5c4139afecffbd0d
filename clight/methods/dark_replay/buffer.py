"""DER++'s memory: a reservoir of the training stream's samples, their labels and the logits the
model gave them when they were seen, kept as tensors (the logits exist nowhere else)."""

from __future__ import annotations

from typing import Optional

import torch

from clight.distributed import gather_across_ranks


class LogitReservoir:
    """Reservoir sampling (Vitter's algorithm R) over every sample of the stream, in order.

    ``add`` takes this rank's share of a global batch; the shares of all ranks are gathered first,
    in rank order (the global batch as one process sees it), and the slots are drawn from
    ``generator``, which every rank holds in the same state, so every rank keeps the same memory.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"DER++ needs a memory capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.fields: dict[str, torch.Tensor] = {}  # batch fields and "logits", capacity rows each

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, batch: dict, logits: torch.Tensor, generator: torch.Generator) -> None:
        rows = {k: gather_across_ranks(v.detach()) for k, v in batch.items() if torch.is_tensor(v)}
        rows["logits"] = gather_across_ranks(logits.detach())
        n = len(rows["logits"])
        draws = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        slots: dict[int, int] = {}  # slot -> row of this batch (a later row may take an earlier one's slot)
        for i in range(n):
            slot = self.seen if self.seen < self.capacity else int(draws[i] * (self.seen + 1))
            if slot < self.capacity:
                slots[slot] = i
            self.seen += 1
        if not slots:
            return
        if not self.fields:
            self.fields = {k: v.new_zeros((self.capacity, *v.shape[1:])) for k, v in rows.items()}
        where = torch.tensor(list(slots), device=rows["logits"].device)
        which = torch.tensor(list(slots.values()), device=rows["logits"].device)
        for k, v in rows.items():
            self.fields[k].index_copy_(0, where, v.index_select(0, which))

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        index = rows.to(self.fields["logits"].device)
        return {k: v.index_select(0, index) for k, v in self.fields.items()}

    def state_dict(self) -> dict:
        return {"seen": self.seen, "fields": {k: v.clone() for k, v in self.fields.items()}}

    def load_state_dict(self, state: dict, device: Optional[torch.device] = None) -> None:
        self.seen = int(state["seen"])
        self.fields = {k: v.to(device) if device is not None else v.clone() for k, v in state["fields"].items()}
