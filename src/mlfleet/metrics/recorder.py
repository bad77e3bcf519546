"""Requests, throttled requests, errors and latency per minute, for the last hour.

The figures live in this process's memory and a restarted daemon starts empty: they are for
looking at the last hour, and a store would cost every gateway request a write. Recording runs on
the data path, so it is a dict lookup and a few integer increments into a ring of per-minute
slots allocated once per key; latency goes into a fixed-bucket histogram, enough for p50 and p99
without keeping samples. Everything runs on the event loop, so nothing is locked.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

MINUTES = 60
# Upper bounds of the latency buckets in seconds, 1 ms to 75 s in steps of at most 2x (the last
# bucket is open-ended): a percentile read from them is within one step of the truth.
BOUNDS = tuple(round(m * 10.0**e, 4) for e in range(-3, 2) for m in (1, 1.5, 2, 3, 5, 7.5))
_EMPTY = (0,) * (len(BOUNDS) + 1)


class _Minute:
    __slots__ = ("errors", "latency", "minute", "requests", "slowest", "throttled")

    def __init__(self) -> None:
        self.minute = -1
        self.requests = self.throttled = self.errors = 0
        self.slowest = 0.0
        self.latency = list(_EMPTY)

    def reset(self, minute: int) -> None:
        self.minute = minute
        self.requests = self.throttled = self.errors = 0
        self.slowest = 0.0
        self.latency[:] = _EMPTY

    def percentile(self, q: float) -> float | None:
        """The bucket bound below which a fraction ``q`` of the latencies fall (at most the
        slowest one seen, so a quiet minute's single request reads exactly)."""
        count = sum(self.latency)
        if count == 0:
            return None
        rank = max(1, math.ceil(q * count - 1e-9))  # 0.99 * 100 is 99.00000000000001
        seen = 0
        for index, in_bucket in enumerate(self.latency):
            seen += in_bucket
            if seen >= rank:
                bound = BOUNDS[index] if index < len(BOUNDS) else self.slowest
                return min(bound, self.slowest)
        return self.slowest


@dataclass(frozen=True)
class MinuteFigures:
    """One minute of one resource; ``start`` is the minute's first second (Unix time)."""

    start: float
    requests: int = 0
    throttled: int = 0
    errors: int = 0
    p50: float | None = None
    p99: float | None = None


class Recorder:
    """Per-key rings of ``MINUTES`` minutes; ``clock`` gives Unix time (tests pass their own)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rings: dict[str, list[_Minute]] = {}
        self._last: dict[str, float] = {}

    def _now(self, key: str) -> _Minute:
        minute = int(self._clock() // 60)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = [_Minute() for _ in range(MINUTES)]
        slot = ring[minute % MINUTES]
        if slot.minute != minute:
            slot.reset(minute)  # the slot held the minute an hour ago
        return slot

    def request(self, key: str, status: int, seconds: float) -> None:
        """One answered request: its HTTP status (5xx is an error) and how long it took."""
        slot = self._now(key)
        self._last[key] = self._clock()
        slot.requests += 1
        if status >= 500:
            slot.errors += 1
        slot.latency[bisect_left(BOUNDS, seconds)] += 1
        if seconds > slot.slowest:
            slot.slowest = seconds

    def last_request(self, key: str) -> float | None:
        """When the last request of ``key`` was answered (``clock`` time), None if none was."""
        return self._last.get(key)

    def throttled(self, key: str) -> None:
        """A request that had to wait for capacity."""
        self._now(key).throttled += 1

    def window(self, key: str) -> list[MinuteFigures]:
        """The last ``MINUTES`` minutes, oldest first and ending with the current one."""
        now = int(self._clock() // 60)
        ring = self._rings.get(key)
        figures = []
        for minute in range(now - MINUTES + 1, now + 1):
            slot = ring[minute % MINUTES] if ring is not None else None
            if slot is None or slot.minute != minute:
                figures.append(MinuteFigures(minute * 60.0))
                continue
            figures.append(
                MinuteFigures(
                    minute * 60.0,
                    slot.requests,
                    slot.throttled,
                    slot.errors,
                    slot.percentile(0.5),
                    slot.percentile(0.99),
                )
            )
        return figures
