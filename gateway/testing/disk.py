"""A small real tmpfs that a test can fill to the last byte and free again (needs root).

    with SmallDisk(size=2 * 1024 * 1024) as disk:
        db = disk.path / "outbox.db"
        ...
        disk.fill()     # ENOSPC for every write that needs a new block
        ...
        disk.free()     # room again

The mount is always undone, even when the test fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

_CHUNK = 64 * 1024


class DiskError(RuntimeError):
    """The tmpfs could not be mounted (not root, no `mount`)."""


def can_mount() -> bool:
    """True if this process may mount a tmpfs (root with `mount` on PATH)."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


class SmallDisk:
    """A tmpfs of `size` bytes mounted on a fresh temporary directory (`path`)."""

    def __init__(self, size: int = 4 * 1024 * 1024) -> None:
        self.size = size
        self.path = Path()
        self._base: Path | None = None

    def __enter__(self) -> SmallDisk:
        self._base = Path(tempfile.mkdtemp(prefix="stationgw-disk-"))
        self.path = self._base / "mnt"
        self.path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs",
             str(self.path)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self._base, ignore_errors=True)
            raise DiskError(f"cannot mount a tmpfs on {self.path}: {result.stderr.strip()}")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._base is not None
        try:
            # Lazy: a file a test left open (a crashed daemon's database) must not keep the
            # mount, and with it the memory, alive.
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        finally:
            shutil.rmtree(self._base, ignore_errors=True)

    def fill(self) -> int:
        """Write a filler file until the disk is full; returns the bytes written."""
        filler = self.path / f".filler-{len(list(self.path.glob('.filler-*')))}"
        written = 0
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = _CHUNK
            while chunk:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2  # the last blocks: smaller writes, down to one byte
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        """Remove every filler file: the disk has room again."""
        for filler in self.path.glob(".filler-*"):
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()

    @property
    def available(self) -> int:
        """Bytes still free on the disk."""
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize
