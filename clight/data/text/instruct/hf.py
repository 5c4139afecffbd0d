"""Records from a Hugging Face ``datasets`` source: a hub name, a local dataset folder (files the
``datasets`` library reads, or a folder written by ``save_to_disk``), or one local data file
(``.json``, ``.jsonl``, ``.csv``, ``.parquet``). Nothing is downloaded for a local path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clight.data.text.instruct.records import Record

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class HFSource:
    """``path``: hub name or local path; ``name``: the dataset's config; ``split`` the training
    split; ``test_split`` the test split (``null``: the task's test items are cut from ``split``
    by ``test_fraction``)."""

    path: str
    name: Optional[str] = None
    split: str = "train"
    test_split: Optional[str] = "test"

    def _load(self, split: str):
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a dependency
            raise ImportError("a Hugging Face source needs the datasets package: pip install datasets") from None
        local = Path(self.path)
        if local.is_file():
            builder = FILE_BUILDERS.get(local.suffix)
            if builder is None:
                raise ValueError(f"{local}: a local data file must end in one of {sorted(FILE_BUILDERS)}")
            return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            saved = datasets.load_from_disk(str(local))
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        return datasets.load_dataset(self.path, self.name, split=split)

    def records(self, split: str) -> list[Record]:
        """Every row of ``split`` as a record located by its row number."""
        try:
            rows = self._load(split)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"Hugging Face source {self.path!r} split {split!r}: {str(exc).splitlines()[0]}") from None
        where = f"{self.path} [{split}]"
        return [Record(dict(row), where, None, number) for number, row in enumerate(rows, 1)]
