"""Images in class folders (``root/<class>/<image>``), as a source a config can name."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import Subset

from clight.data.samples import as_pairs
from clight.data.sources import Source, SourceData


class ImageFolders(Source):
    """Images sorted into one folder per class, read with ``torchvision.datasets.ImageFolder``.

    ``train``: the folder of class folders to train on; ``test``: another such folder with the
    same class folders (default: a stratified ``test_fraction`` of ``train`` held out by
    ``split_seed``, independent of the run seed). Class ids follow the class folders' names in
    sorted order, and those names are the class names. ``size`` (height, width) resizes every
    image (needed when they differ in size); ``grayscale`` reads one channel instead of three.
    Images are read from disk batch by batch (a ``DataLoader``'s ``num_workers`` spreads it).
    """

    name = "images"

    def __init__(
        self,
        train: str,
        test: Optional[str] = None,
        test_fraction: float = 0.2,
        size: Optional[tuple[int, int]] = None,
        grayscale: bool = False,
        split_seed: int = 0,
    ) -> None:
        if test is None and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"ImageFolders.test_fraction must be in (0, 1), got {test_fraction}")
        self.train, self.test, self.test_fraction = train, test, test_fraction
        self.size, self.grayscale, self.split_seed = size, grayscale, split_seed
        self.name = Path(train).name or "images"

    def _folder(self, root: str, role: str):
        from torchvision import datasets, transforms

        if not Path(root).is_dir():
            raise FileNotFoundError(f"ImageFolders.{role}: {root} is not a folder. Give a folder holding one folder per class.")
        steps = [transforms.Grayscale()] if self.grayscale else []
        steps += [transforms.Resize(list(self.size))] if self.size else []
        try:
            return datasets.ImageFolder(root, transform=transforms.Compose([*steps, transforms.ToTensor()]))
        except (FileNotFoundError, RuntimeError) as exc:
            raise FileNotFoundError(
                f"ImageFolders.{role}: {exc}. Put each class's images in a folder of its own under {root}."
            ) from exc

    def load(self) -> SourceData:
        train = self._folder(self.train, "train")
        if self.test is not None:
            test = self._folder(self.test, "test")
            if test.classes != train.classes:
                raise ValueError(
                    f"ImageFolders: the class folders of {self.test} ({test.classes[:6]}) differ from those of "
                    f"{self.train} ({train.classes[:6]}). Give both the same class folders."
                )
            train_part, test_part = train, test
        else:
            from sklearn.model_selection import train_test_split

            positions = np.arange(len(train.targets))
            keep, held = train_test_split(
                positions, test_size=self.test_fraction, stratify=train.targets, random_state=self.split_seed
            )
            train_part, test_part = Subset(train, sorted(keep.tolist())), Subset(train, sorted(held.tolist()))
        classes = len(train.classes)
        return SourceData(
            train=as_pairs(train_part, f"ImageFolders.train ({self.train})", num_classes=classes),
            test=as_pairs(test_part, f"ImageFolders.test ({self.test or self.train})", num_classes=classes),
            num_classes=classes,
            class_names=list(train.classes),
            name=self.name,
        )
