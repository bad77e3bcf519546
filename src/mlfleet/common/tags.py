"""Per-server switches written as tags (``mlfleet:data-events``, ``mlfleet:egress``)."""

from __future__ import annotations

from collections.abc import Sequence


def switched_off(tags: Sequence[dict[str, str]], key: str) -> bool:
    """Whether the tag ``key`` says ``off`` (in any case): a switch is on unless turned off."""
    return any(t["Key"] == key and t.get("Value", "").lower() == "off" for t in tags)
