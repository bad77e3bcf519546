"""Processes as tests find them: their command lines."""

from __future__ import annotations

from pathlib import Path


def argv_of(pid: int) -> list[str]:
    """The command line of ``pid``; [] if it is gone. A warm-started worker (runtime.warm)
    rewrote its title to the command a cold one runs: one string, words separated by spaces."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    return parts[0].split(" ") if len(parts) == 1 else parts
