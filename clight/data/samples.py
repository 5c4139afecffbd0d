"""Reading any map-style torch data set as clight's batches of ``(inputs, targets)``.

clight's own data sets (``ArrayDataset``, and anything with ``batched_pairs = True``) answer
``__getitems__`` with two batched tensors. Any other data set is read sample by sample; its
samples are ``(input, target, ...)`` tuples or dicts (the keys are found among
``DICT_KEYS``, or named). ``torch.utils.data.Subset`` (what ``random_split`` returns) and
``ConcatDataset`` are read through to the data sets under them, so their targets come from
those data sets' ``targets`` and a subset of an in-memory data set is one tensor gather.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

#: the (input, target) key pairs looked for in dict samples, in this order
DICT_KEYS: tuple[tuple[str, str], ...] = (
    ("input", "target"),
    ("image", "label"),
    ("img", "label"),
    ("x", "y"),
    ("inputs", "targets"),
    ("pixel_values", "labels"),
    ("features", "label"),
)

Keys = Optional[Sequence[str]]


def pair_keys(sample: Mapping, keys: Keys = None) -> tuple[str, str]:
    """The (input, target) keys of a dict sample: ``keys`` if given, else the first of ``DICT_KEYS`` it has."""
    candidates = [tuple(keys)] if keys else DICT_KEYS
    for pair in candidates:
        if all(k in sample for k in pair):
            return pair[0], pair[1]
    found = sorted(map(str, sample))[:8]
    if keys:
        raise ValueError(f"a sample is a dict with keys {found}, without the keys {list(keys)} given. Name the keys it has.")
    raise ValueError(
        f"a sample is a dict with keys {found}, none of the (input, target) pairs clight knows "
        f"({', '.join('/'.join(p) for p in DICT_KEYS[:4])}, ...). Name yours: DatasetSource(..., keys=[INPUT_KEY, TARGET_KEY])."
    )


def split_sample(sample: Any, keys: Keys = None) -> tuple[Any, Any]:
    """``(input, target)`` of one sample: a tuple or list of at least two items, or a dict."""
    if isinstance(sample, Mapping):
        input_key, target_key = pair_keys(sample, keys)
        return sample[input_key], sample[target_key]
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        return sample[0], sample[1]
    shape = f"a {type(sample).__name__}" + (f" of {len(sample)} item(s)" if isinstance(sample, (tuple, list)) else "")
    raise ValueError(
        f"a sample is {shape}; clight needs (input, target) pairs, or dicts holding an input and an integer target "
        "(DatasetSource(..., keys=[INPUT_KEY, TARGET_KEY]) names their keys)"
    )


def _as_input(value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    if isinstance(value, (np.ndarray, int, float)) or (
        isinstance(value, (list, tuple)) and value and not isinstance(value[0], str)
    ):
        return torch.as_tensor(np.asarray(value))
    hint = (
        "give the data set a transform that makes tensors (torchvision.transforms.ToTensor())"
        if type(value).__module__.startswith("PIL")
        else "clight's image and tabular tasks need tensors or arrays (text goes through TextTaskSequence)"
    )
    raise ValueError(f"a sample's input is of type {type(value).__name__}, not a tensor: {hint}")


def _as_target(value: Any) -> int:
    if (torch.is_tensor(value) and value.numel() == 1) or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"a sample's target is {value!r} ({type(value).__name__}): clight needs an integer class id")


def stack_inputs(inputs: list[Any]) -> torch.Tensor:
    """One float batch from per-sample inputs (uint8 scaled to [0, 1], as ``ArrayDataset`` does)."""
    tensors = [_as_input(x) for x in inputs]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        listed = " and ".join("x".join(map(str, s)) or "scalar" for s in sorted(shapes)[:2])
        raise ValueError(
            f"samples have inputs of different shapes ({listed}): give every input one shape (ImageFolders.size, or a Resize in the data set's transform)"
        )
    x = torch.stack(tensors)
    return x.div(255.0) if x.dtype == torch.uint8 else x.float()


def fetch_pairs(base: Dataset, indices: torch.Tensor, keys: Keys = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of ``base`` at the positions in the long tensor ``indices``."""
    if getattr(base, "batched_pairs", False):
        return base.__getitems__(indices)  # type: ignore[attr-defined]
    if isinstance(base, Subset):
        return fetch_pairs(base.dataset, torch.as_tensor(base.indices, dtype=torch.long)[indices], keys)
    if isinstance(base, ConcatDataset):
        return _fetch_concat(base, indices, keys)
    if isinstance(base, TensorDataset) and len(base.tensors) >= 2:
        x, y = base.tensors[0][indices], base.tensors[1][indices]
        return (x.div(255.0) if x.dtype == torch.uint8 else x.float()), y.long()
    pairs = [split_sample(base[i], keys) for i in indices.tolist()]
    return stack_inputs([p[0] for p in pairs]), torch.as_tensor([_as_target(p[1]) for p in pairs], dtype=torch.long)


def _fetch_concat(base: ConcatDataset, indices: torch.Tensor, keys: Keys) -> tuple[torch.Tensor, torch.Tensor]:
    ends = torch.as_tensor(base.cumulative_sizes, dtype=torch.long)
    which = torch.searchsorted(ends, indices, right=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
    xs, ys, positions = [], [], []
    for part in which.unique().tolist():
        where = (which == part).nonzero().flatten()
        x, y = fetch_pairs(base.datasets[part], indices[where] - starts[part], keys)
        xs.append(x)
        ys.append(y)
        positions.append(where)
    order = torch.argsort(torch.cat(positions))
    return torch.cat(xs)[order], torch.cat(ys)[order]


def dataset_targets(dataset: Dataset, keys: Keys = None) -> torch.Tensor:
    """Integer class targets of a data set: its ``targets`` attribute (through ``Subset`` and
    ``ConcatDataset``), else read sample by sample."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets).long()
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset, keys)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([dataset_targets(d, keys) for d in dataset.datasets])
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long()
    return torch.as_tensor([_as_target(split_sample(dataset[i], keys)[1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


class PairsDataset(Dataset):
    """A user's data set as clight reads it: ``__getitems__`` gives ``(inputs, targets)``
    batches, ``targets`` every target, read once. A sample that cannot be read is a one-line
    ``ValueError`` naming ``where`` the data set is (``DatasetSource.train``)."""

    batched_pairs = True

    def __init__(self, dataset: Dataset, keys: Keys = None, where: str = "data set") -> None:
        self.dataset, self.keys = dataset, list(keys) if keys else None
        self.where = f"{where} ({type(dataset).__name__})"
        with self._named():
            self.targets = dataset_targets(dataset, self.keys)

    @contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(f"{self.where}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._named():
            return fetch_pairs(self.dataset, torch.as_tensor(indices, dtype=torch.long), self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([int(i)])
        return x[0], y[0]


def as_pairs(dataset: Dataset, where: str, keys: Keys = None, num_classes: Optional[int] = None) -> Dataset:
    """``dataset`` ready for clight's views (a ``PairsDataset`` unless it is one of clight's own),
    with its first sample and its targets checked: a data set that cannot be used is a one-line
    ``ValueError`` naming ``where`` it is, what was found and what is needed."""
    if getattr(dataset, "batched_pairs", False) or len(dataset) == 0:  # type: ignore[arg-type]
        return dataset
    pairs = PairsDataset(dataset, keys, where)
    pairs.__getitems__([0])
    targets = pairs.targets
    if num_classes is not None and len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < num_classes):
        raise ValueError(
            f"{pairs.where} has targets from {int(targets.min())} to {int(targets.max())}, outside 0..{num_classes - 1} "
            f"(num_classes={num_classes}). Number the classes 0..num_classes-1, or raise num_classes."
        )
    return pairs
