"""Which disk a file is on, and a write error that says so (a full disk, an I/O error)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]

#: the errors that are the disk's, not the program's
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


class StorageError(OSError):
    """A write that failed because of the disk (full, over quota, read-only, failing), naming the
    file and the disk. ``errno`` is the original error's; ``hint`` says how to continue."""

    def __init__(self, path: PathLike, cause: OSError) -> None:
        device, mount = disk_of(path)
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = "no space left" if cause.errno == errno.ENOSPC else "disk quota exceeded"
            advice = "free space there, or choose another folder"
        else:
            problem = f"{os.strerror(cause.errno or 0).lower()} (errno {cause.errno})"
            advice = "check the disk, or choose another folder"
        disk = f"{device} (mounted at {mount})" if device != "?" else f"the disk mounted at {mount}"
        super().__init__(f"{problem} on {disk}, the disk holding {path}: {advice}")
        self.errno, self.path, self.device = cause.errno, Path(path), device
        self.hint = ""  # what the caller adds (how to continue)

    def __str__(self) -> str:
        return f"{self.args[0]}. {self.hint}" if self.hint else self.args[0]


def disk_error(path: PathLike, exc: BaseException) -> Optional[StorageError]:
    """A ``StorageError`` for ``path`` if the disk caused ``exc``: an ``OSError`` with a disk's errno
    anywhere in its chain (torch turns a failed write into ``RuntimeError: unexpected pos``, with
    the ``OSError`` as its context)."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return StorageError(path, current)
        current = current.__cause__ or current.__context__
    return None


def disk_of(path: PathLike) -> tuple[str, str]:
    """(device, mount point) of the file system holding ``path`` (or its nearest existing parent)."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    mount = existing
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = "?"
    try:
        dev = os.stat(existing).st_dev
        key = f"{os.major(dev)}:{os.minor(dev)}"
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[2] == key and "-" in fields:
                    device = _unescape(fields[fields.index("-") + 2])
                    if _unescape(fields[4]) == str(mount):
                        break
    except (OSError, ValueError, IndexError):
        pass
    return device, str(mount)


def _unescape(field: str) -> str:
    """mountinfo writes spaces, tabs and backslashes as octal escapes (\\040)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
