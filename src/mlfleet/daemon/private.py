"""The data dir is the daemon's alone: its keys, credentials, every server's database and logs.

From start on, the daemon's umask keeps everything it creates owner-only, and so does everything
its MLflow workers and endpoint instances create (child processes inherit the umask). A data dir
left open by an older mlfleet (0755, files 0644) is tightened at start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def make_private(data_dir: Path) -> int:
    """Create `data_dir` owner-only, or tighten an open one and all in it; how many changed."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not data_dir.stat().st_mode & PRIVATE_UMASK:
        # A private dir hides everything below it (no other user can traverse it), and what was
        # created since it became private obeyed the umask: no walk over every artifact again.
        return 0
    changed = 0
    # fwalk with follow_symlinks=False descends only into real directories, by descriptor, so a
    # symbolic link (to /etc, say) is never followed, nor its target's mode changed; only the
    # data dir itself may be a link (to where the operator keeps it).
    top = os.path.realpath(data_dir)
    for _path, _dirs, files, dir_fd in os.fwalk(top, follow_symlinks=False):
        changed += _tighten(dir_fd)
        for name in files:
            try:
                fd = os.open(name, _OPEN, dir_fd=dir_fd)
            except OSError:
                continue  # a symbolic link (ELOOP), a socket, a file gone since the listing
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    changed += _tighten(fd)
            finally:
                os.close(fd)
    return changed


def _tighten(fd: int) -> int:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & PRIVATE_UMASK:
        return 0
    # Group and others lose everything; the owner keeps its bits (an executable stays one).
    os.fchmod(fd, mode & ~PRIVATE_UMASK)
    return 1
