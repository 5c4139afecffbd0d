"""The base model's per-entry threshold state, packed at 2 bits per entry.

For every token of the general set and every hidden dimension, the threshold-margin loss needs
only which of three states the base model was in (docs/methods/gere.md): NEU (between the
thresholds), NEG (at or below ``neg``) or POS (at or above ``pos``). Four entries share a byte.
Rows are tokens: ``packed[t]`` holds the ``d`` states of token ``t`` in ``ceil(d / 4)`` bytes,
so gathering the tokens of a replayed sample is one row index.
"""

from __future__ import annotations

import torch

NEU, NEG, POS = 0, 1, 2
ENTRIES_PER_BYTE = 4
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def classify(hidden: torch.Tensor, neg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """States (uint8 codes) of hidden states ``[..., d]``: NEG where h <= neg, else POS where h >= pos, else NEU."""
    states = torch.full(hidden.shape, NEU, dtype=torch.uint8, device=hidden.device)
    states[hidden >= pos] = POS
    states[hidden <= neg] = NEG  # wins when neg == pos (a dimension with zero spread)
    return states


def pack(states: torch.Tensor) -> torch.Tensor:
    """``[T, d]`` codes in {0, 1, 2} -> ``[T, ceil(d / 4)]`` uint8, entry ``j`` in bits ``2 * (j % 4)``."""
    if states.dim() != 2:
        raise ValueError(f"pack expects [tokens, dims] states, got shape {tuple(states.shape)}")
    t, d = states.shape
    pad = (-d) % ENTRIES_PER_BYTE
    codes = torch.nn.functional.pad(states.to(torch.uint8), (0, pad)).view(t, -1, ENTRIES_PER_BYTE)
    shifts = _SHIFTS.to(states.device)
    return _or_reduce(codes << shifts)


def _or_reduce(parts: torch.Tensor) -> torch.Tensor:
    # the four 2-bit fields never overlap, so OR equals their sum; bitwise_or keeps it exact in uint8
    out = parts[..., 0]
    for k in range(1, ENTRIES_PER_BYTE):
        out = out | parts[..., k]
    return out


def unpack(packed: torch.Tensor, dims: int) -> torch.Tensor:
    """Inverse of ``pack``: ``[T, ceil(d / 4)]`` uint8 -> ``[T, d]`` uint8 codes."""
    shifts = _SHIFTS.to(packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 3
    return codes.reshape(packed.shape[0], -1)[:, :dims]


def token_rows(offsets: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets[i] .. offsets[i] + lengths[k]`` of samples ``indices``, concatenated in order.

    Checks that every replayed sample has exactly the tokens it had when its rows were stored.
    """
    indices = indices.to(offsets.device).long()
    lengths = lengths.to(offsets.device).long()
    stored = offsets[indices + 1] - offsets[indices]
    if not torch.equal(stored, lengths):
        bad = (stored != lengths).nonzero().flatten()[0]
        raise ValueError(
            f"general sample {int(indices[bad])} has {int(lengths[bad])} tokens in this batch but "
            f"{int(stored[bad])} when its states were computed: the general set must be tokenised and "
            "truncated the same way every time (same tokenizer, same general_max_length)"
        )
    local = torch.arange(int(lengths.sum()), device=offsets.device) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    return torch.repeat_interleave(offsets[indices], lengths) + local


class PackedStates:
    """The states of every token of the general set, with each sample's token range.

    ``offsets[i]:offsets[i + 1]`` are the rows of general sample ``i``. ``gather(indices,
    lengths)`` returns the states of the first ``lengths[k]`` tokens of sample ``indices[k]``,
    in order, after checking that the replayed sample has as many tokens as were classified.
    """

    def __init__(self, packed: torch.Tensor, offsets: torch.Tensor, dims: int) -> None:
        if packed.dtype != torch.uint8:
            raise TypeError(f"packed states must be uint8, got {packed.dtype}")
        self.packed = packed
        self.offsets = offsets.long()
        self.dims = int(dims)

    @classmethod
    def from_states(cls, states: torch.Tensor, lengths: torch.Tensor) -> "PackedStates":
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.as_tensor(lengths).long().cumsum(0)])
        return cls(pack(states), offsets, states.shape[1])

    @property
    def num_samples(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def state_bytes(self) -> int:
        """Bytes of the packed codes (the per-entry state; compare with 4 bytes per entry for float32)."""
        return self.packed.numel() * self.packed.element_size()

    def nbytes(self) -> int:
        """All bytes held: the packed codes and the sample offsets (an index any layout needs)."""
        return self.state_bytes() + self.offsets.numel() * self.offsets.element_size()

    def to(self, device) -> "PackedStates":
        return PackedStates(self.packed.to(device), self.offsets.to(device), self.dims)

    def rows(self, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return token_rows(self.offsets, indices, lengths)

    def gather(self, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[sum(lengths), d]`` uint8 codes of the given samples' leading tokens."""
        return unpack(self.packed[self.rows(indices, lengths)], self.dims)

    def state_dict(self) -> dict:
        return {"packed": self.packed, "offsets": self.offsets, "dims": torch.tensor(self.dims)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PackedStates":
        return cls(state["packed"], state["offsets"], int(state["dims"]))
