"""A small disk of its own for a test: a tmpfs mounted on a folder, which the test fills and
frees to see how mlfleet behaves when the disk under its data dir (or artifact store) is full.

Mounting needs root: ``SmallDisk`` skips the test, with the reason, where it cannot mount.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from types import TracebackType

import pytest

CHUNK = 1024 * 1024
FILLER = ".filler"


class SmallDisk:
    """``size_mib`` MiB of tmpfs on ``path`` while in use: ``with SmallDisk(p, 96) as disk``."""

    def __init__(self, path: Path, size_mib: int) -> None:
        self.path = path
        self.size_mib = size_mib
        self.filler = path / FILLER

    def __enter__(self) -> SmallDisk:
        if os.geteuid() != 0:
            pytest.skip("mounting a small disk (tmpfs) to fill needs root")
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"could not mount a tmpfs on {self.path}: {mounted.stderr.strip()}")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.free()
        if subprocess.run(["umount", str(self.path)], check=False).returncode != 0:
            # Still held by a process the test left (its failure shows above): detach it.
            subprocess.run(["umount", "--lazy", str(self.path)], check=False)

    def fill(self, leave: int = 0) -> None:
        """Fill the disk to its last byte with the filler file (again, if it was full before
        and something freed space since), then free ``leave`` bytes of it."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = bytes(CHUNK)
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as full:
                    if full.errno != errno.ENOSPC:
                        raise
                    break
            # os.write takes what fits and says how much: only a write with no room raises.
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give back all the space the filler took."""
        self.filler.unlink(missing_ok=True)
