"""One live run per run folder: an exclusive lock that the operating system drops when its process ends.

The lock is ``flock`` on the run folder itself, opened read-only, so taking it writes nothing and a
refused command leaves the folder as it was. The process that holds it writes its PID and host to
``.lock`` (after every check has passed), so that a refused command can name it. A process killed
with SIGKILL holds nothing any more: the next run takes the lock. Under DDP only rank 0 takes it;
the other ranks never write into the folder, and a rank 0 that is refused ends the run before the
other ranks are started (Lightning's launcher) or makes the launcher stop them (torchrun).
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Optional

from clight.io import write_text_atomic
from clight.runner.errors import RunFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
    fcntl = None

LOCK_FILE = ".lock"


class FolderLock:
    """``acquire`` (or ``RunFolderError`` naming the live run), ``record_holder``, ``release``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock on the folder (created if missing), or refuse in one line naming the live run."""
        if fcntl is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder, os.O_RDONLY)
        except OSError as exc:
            raise RunFolderError(f"cannot write the run folder {self.folder}: {exc}. Choose a run_dir you can write to.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(self.in_use()) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            warnings.warn(f"cannot lock {self.folder} ({exc}): nothing stops a second run from writing into it", stacklevel=2)
            return
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def record_holder(self) -> None:
        if self._fd is not None:
            write_text_atomic(self.folder / LOCK_FILE, f"{os.getpid()} {socket.gethostname()}\n")

    def live_holder(self) -> Optional[str]:
        """Who holds the folder now (without taking it), or ``None``."""
        if fcntl is None or not self.folder.is_dir():
            return None
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return self.holder()
        except OSError:
            return None
        finally:
            os.close(fd)  # drops the lock if it was taken

    def in_use(self) -> str:
        return (
            f"{self.folder} is in use by a live run ({self.holder()}). Wait for it to end, or stop it "
            "(Ctrl-C or kill PID: it can be resumed), then resume it."
        )

    def holder(self) -> str:
        try:
            pid, host = (self.folder / LOCK_FILE).read_text().split()[:2]
            return f"PID {int(pid)} on {host[:100]}"
        except (OSError, ValueError):
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None
