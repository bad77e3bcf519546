"""Durations as people write them in tags and settings: ``30s``, ``15m``, ``2h``, ``1d``, or
plain seconds; ``never`` (or ``off``) for none."""

from __future__ import annotations

import re

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def parse_duration(text: str) -> float | None:
    """Seconds, or None for ``never``/``off``; ValueError says what is accepted."""
    written = text.strip().lower()
    if written in ("never", "off"):
        return None
    match = _DURATION.fullmatch(written)
    if match is None or float(match[1]) <= 0:
        raise ValueError(
            f"{text!r} is not a duration: write a positive number with s, m, h or d "
            "(30s, 15m, 2h), or never"
        )
    return float(match[1]) * _UNITS[match[2]]
