"""Time stamps as the APIs answer them."""

from __future__ import annotations

from datetime import UTC, datetime


def when(timestamp: float) -> datetime:
    """A stored epoch time as the aware UTC datetime botocore serializes."""
    return datetime.fromtimestamp(timestamp, UTC)
