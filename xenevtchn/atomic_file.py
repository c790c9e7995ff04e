"""Output files that are either the old file or the whole new one, never half of either.

Every file the package writes goes through ``AtomicOutput``: the data goes to a new,
hidden file in the target's folder (``.NAME.RANDOM.tmp``), which is flushed to disk and
renamed over the target (``os.replace``, atomic on POSIX file systems) only when the
writer finishes. Until then a file already at the target path is untouched; an exception
of any kind (``KeyboardInterrupt`` too) removes the temporary file and leaves it so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Iterator


class AtomicOutput:
    """One output file being written: ``file`` now, ``commit()`` or ``discard()`` once.

    The temporary file is created at once (so a folder that does not exist or cannot be
    written fails before any work); a target that is a directory raises
    ``IsADirectoryError``. The new file gets the mode of the file it replaces, or the
    usual ``0o666`` less the umask.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "w") -> None:
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(self.path))
        try:
            keep_mode: int | None = stat.S_IMODE(os.stat(self.path).st_mode)
        except FileNotFoundError:
            keep_mode = None
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            if keep_mode is not None:
                os.fchmod(fd, keep_mode)
            self.file: IO[Any] = os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
        except BaseException:
            os.close(fd)
            os.unlink(self._tmp)
            raise
        self._done = False

    def commit(self) -> None:
        """Flush the data to disk and rename it over the target."""
        if self._done:
            raise ValueError("this output was already committed or discarded")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self._done = True

    def discard(self) -> None:
        """Drop what was written; the target is left as it was. Idempotent."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``with atomic_output(path) as f: ...``: the file appears whole when the block
    ends normally; on any exception the target is left as it was."""
    out = AtomicOutput(path, mode)
    try:
        yield out.file
    except BaseException:
        out.discard()
        raise
    out.commit()
