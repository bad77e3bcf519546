"""Durations as tags and settings write them (common.durations, common.tags.idle_timeout)."""

from __future__ import annotations

import pytest

from mlfleet.common.durations import parse_duration
from mlfleet.common.tags import IDLE_TIMEOUT_TAG, idle_timeout


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("45", 45), (" 1.5M ", 90)],
)
def test_durations_read_as_seconds(written: str, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["never", "OFF"])
def test_never_is_no_duration(written: str) -> None:
    assert parse_duration(written) is None


@pytest.mark.parametrize("written", ["", "soon", "-5m", "0s", "10 minutes", "1w"])
def test_anything_else_is_refused_with_what_is_accepted(written: str) -> None:
    with pytest.raises(ValueError, match=r"30s, 15m, 2h"):
        parse_duration(written)


def test_a_servers_tag_wins_over_the_default() -> None:
    assert idle_timeout([{"Key": IDLE_TIMEOUT_TAG, "Value": "30s"}], 900) == 30
    assert idle_timeout([{"Key": IDLE_TIMEOUT_TAG, "Value": "never"}], 900) is None
    assert idle_timeout([{"Key": "team", "Value": "a"}], 900) == 900
    assert idle_timeout([], None) is None
    with pytest.raises(ValueError, match=IDLE_TIMEOUT_TAG):
        idle_timeout([{"Key": IDLE_TIMEOUT_TAG, "Value": "later"}], None)
