"""Per-server settings written as tags: switches (``mlfleet:data-events``, ``mlfleet:egress``)
and the idle timeout (``mlfleet:idle-timeout``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mlfleet.common.durations import parse_duration

# How long a tracking server may go without a request before it sleeps (fleet.idle).
IDLE_TIMEOUT_TAG = "mlfleet:idle-timeout"


def switched_off(tags: Sequence[dict[str, str]], key: str) -> bool:
    """Whether the tag ``key`` says ``off`` (in any case): a switch is on unless turned off."""
    return any(t["Key"] == key and t.get("Value", "").lower() == "off" for t in tags)


def idle_timeout(tags: Sequence[Mapping[str, object]], default: float | None) -> float | None:
    """A server's idle timeout in seconds (None: it never sleeps): its tag, else ``default``.
    ValueError for a tag that is no duration."""
    for tag in tags:
        if tag["Key"] == IDLE_TIMEOUT_TAG:
            try:
                return parse_duration(str(tag.get("Value", "")))
            except ValueError as exc:
                raise ValueError(f"Tag {IDLE_TIMEOUT_TAG}: {exc}") from None
    return default
