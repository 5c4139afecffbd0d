"""Where images come from: bundled, on-disk and downloadable data sets, or the user's own.

A source's ``load()`` returns a ``SourceData``: train and test data sets (and a validation set
where the source has one), the number of classes and their names. Scenarios cut tasks out of it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clight.data.samples import as_pairs, dataset_targets
from clight.data.views import ArrayDataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path(os.environ.get("CLIGHT_DATA", Path.home() / ".cache" / "clight" / "data"))

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class SourceData:
    train: Dataset
    test: Dataset
    num_classes: int
    val: Optional[Dataset] = None
    class_names: list[str] = field(default_factory=list)
    name: str = "data"


class Source:
    """A data set provider. Subclasses implement ``load``; results are cached per instance."""

    name = "source"

    def load(self) -> SourceData:  # pragma: no cover - interface
        raise NotImplementedError

    def data(self) -> SourceData:
        if getattr(self, "_data", None) is None:
            self._data = self.load()
        return self._data


class Digits(Source):
    """scikit-learn's bundled 8x8 digits (1797 images): the embedded default, no download.

    There is no official test split, so a stratified ``test_fraction`` is held out with a
    fixed ``split_seed`` (independent of the run seed, so every run sees the same test set).
    """

    name = "digits"

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"Digits.test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def load(self) -> SourceData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(digits.target, dtype=torch.long)
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=self.test_fraction, stratify=digits.target, random_state=self.split_seed
        )
        return SourceData(
            train=ArrayDataset(x[train_idx], y[train_idx]),
            test=ArrayDataset(x[test_idx], y[test_idx]),
            num_classes=10,
            class_names=[str(i) for i in range(10)],
            name=self.name,
        )


IDX_FIX = "Replace the file (reinstall dataset-fashion-mnist, or download it again) or point `root` elsewhere."


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not; a damaged file is a ``ValueError`` naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise ValueError(f"{path} is not an unsigned-byte IDX file (header {zero:#x} {dtype_code:#x}). {IDX_FIX}")
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}): it is truncated, corrupt or unreadable. {IDX_FIX}"
        ) from exc
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes. {IDX_FIX}")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "raw" / f"{stem}.gz", folder / "raw" / stem):
        if candidate.exists():
            return candidate
    return None


class FashionMNIST(Source):
    """Fashion-MNIST (60k train, 10k test, 28x28 grey).

    Looked up in order: ``root`` (a folder of the four IDX files, gzipped or not), the Debian
    package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then a
    torchvision download into ``root`` or ``~/.cache/clight/data`` when ``download`` is true.
    """

    name = "fashion_mnist"
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }

    def __init__(self, root: Optional[str] = None, download: bool = True) -> None:
        self.root = Path(root) if root else None
        self.download = download

    def _folders(self) -> list[Path]:
        folders = [self.root, self.root / "FashionMNIST"] if self.root else []
        return folders + [DEBIAN_FASHION_MNIST, DEFAULT_DOWNLOAD_ROOT / "FashionMNIST"]

    def _load_folder(self, folder: Path) -> Optional[SourceData]:
        found = {key: _find_idx(folder, stem) for key, stem in self.stems.items()}
        paths = {key: p for key, p in found.items() if p is not None}
        if len(paths) < len(found):
            return None
        arrays = {key: torch.from_numpy(read_idx(p).copy()) for key, p in paths.items()}
        for split in ("train", "test"):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if x.dim() != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
                raise ValueError(
                    f"Fashion-MNIST {split} files in {folder} have shape {tuple(x.shape)} with {len(y)} labels; "
                    "expected [N, 28, 28] images and N labels. Replace the files or point `root` elsewhere."
                )
        return SourceData(
            train=ArrayDataset(arrays["train_x"].unsqueeze(1), arrays["train_y"]),
            test=ArrayDataset(arrays["test_x"].unsqueeze(1), arrays["test_y"]),
            num_classes=10,
            class_names=list(FASHION_MNIST_CLASSES),
            name=self.name,
        )

    def load(self) -> SourceData:
        for folder in self._folders():
            data = self._load_folder(folder)
            if data is not None:
                return data
        download_root = self.root or DEFAULT_DOWNLOAD_ROOT
        error = None
        if self.download:
            try:
                import torchvision

                torchvision.datasets.FashionMNIST(str(download_root), train=True, download=True)
                torchvision.datasets.FashionMNIST(str(download_root), train=False, download=True)
                data = self._load_folder(download_root / "FashionMNIST")
                if data is not None:
                    return data
            except Exception as exc:  # the network is often closed; report it below
                error = exc
        raise FileNotFoundError(
            "Fashion-MNIST was not found. clight looked for the four IDX files in:\n"
            f"  1. the folder you gave (data.source.init_args.root = {self.root}),\n"
            f"  2. the Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST}; "
            "install it with `sudo apt-get install dataset-fashion-mnist`),\n"
            f"  3. a torchvision download into {download_root} "
            + (f"(failed: {error})" if error else "(disabled: download=false)")
            + "."
        )


class Torchvision(Source):
    """A torchvision data set by name (MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100, SVHN).

    Needs the network the first time (``download``); images are kept as uint8 tensors.
    """

    name = "torchvision"

    def __init__(self, dataset: str = "MNIST", root: Optional[str] = None, download: bool = True) -> None:
        self.dataset = dataset
        self.root = Path(root) if root else DEFAULT_DOWNLOAD_ROOT
        self.download = download
        self.name = dataset.lower()

    def _split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        import torchvision

        if not hasattr(torchvision.datasets, self.dataset):
            raise ValueError(f"torchvision has no data set named {self.dataset!r}")
        cls = getattr(torchvision.datasets, self.dataset)
        try:
            if self.dataset == "SVHN":
                ds = cls(str(self.root), split="train" if train else "test", download=self.download)
                x, y = torch.from_numpy(ds.data), torch.from_numpy(ds.labels)
            else:
                ds = cls(str(self.root), train=train, download=self.download)
                x = torch.as_tensor(np.asarray(ds.data))
                y = torch.as_tensor(np.asarray(ds.targets))
        except Exception as exc:
            raise FileNotFoundError(
                f"could not load torchvision {self.dataset} from {self.root} (download={self.download}): {exc}. "
                "Download it on a machine with network access and set `root` to that folder."
            ) from exc
        if x.dim() == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2).contiguous()
        return x, y, list(getattr(ds, "classes", []))

    def load(self) -> SourceData:
        train_x, train_y, names = self._split(True)
        test_x, test_y, _ = self._split(False)
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        return SourceData(
            train=ArrayDataset(train_x, train_y),
            test=ArrayDataset(test_x, test_y),
            num_classes=num_classes,
            class_names=names or [str(i) for i in range(num_classes)],
            name=self.name,
        )


class DatasetSource(Source):
    """Any map-style torch data sets the user passes: ``torchvision.datasets.ImageFolder``, a
    ``TensorDataset``, a ``Subset`` from ``random_split``, a ``ConcatDataset``, one's own.

    Samples are ``(input, target, ...)`` tuples or dicts; ``keys`` names a dict's input and target
    keys (default: the first pair of ``clight.data.samples.DICT_KEYS`` found, such as
    ``input``/``target`` or ``image``/``label``). Inputs are tensors or arrays of one shape,
    targets integer class ids ``0..num_classes-1``. ``num_classes`` defaults to the largest
    target plus one, ``class_names`` to the train set's ``classes`` (as ``ImageFolder`` has).
    ``load()`` checks a sample of each data set and every target, and refuses one that cannot
    be used in one line: what it holds and what is needed (see docs/own_data.md).
    """

    name = "custom"

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        num_classes: Optional[int] = None,
        val: Optional[Dataset] = None,
        class_names: Optional[Sequence[str]] = None,
        name: str = "custom",
        keys: Optional[Sequence[str]] = None,
    ) -> None:
        if keys is not None and len(keys) != 2:
            raise ValueError(f"DatasetSource.keys names the input key and the target key (two names), got {list(keys)}")
        self.train, self.test, self.val = train, test, val
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.name, self.keys = name, keys

    def load(self) -> SourceData:
        splits = {"train": self.train, "test": self.test, "val": self.val}
        ready = {
            split: as_pairs(data, f"DatasetSource.{split}", self.keys, self.num_classes)
            for split, data in splits.items()
            if data is not None
        }
        num_classes = self.num_classes
        if num_classes is None:
            num_classes = 1 + max((int(dataset_targets(d).max()) for d in ready.values() if len(d)), default=-1)  # type: ignore[arg-type]
        names = self.class_names or list(getattr(self.train, "classes", None) or [str(i) for i in range(num_classes)])
        return SourceData(ready["train"], ready["test"], num_classes, ready.get("val"), names, self.name)


SOURCES = {"digits": Digits, "fashion_mnist": FashionMNIST}


def resolve_source(source: "Source | str") -> Source:
    """A ``Source`` instance from an instance or a short name (``digits``, ``fashion_mnist``)."""
    if isinstance(source, Source):
        return source
    if source in SOURCES:
        return SOURCES[source]()
    raise ValueError(f"unknown data source {source!r}; use one of {sorted(SOURCES)} or a Source instance")
