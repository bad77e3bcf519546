"""Admission: which worker of a tracking server takes a request, and when.

``acquire`` gives the least-loaded healthy worker of a serving server, and ``release`` gives
its slot back. A worker process takes at most ``max_inflight_per_worker`` API requests at a
time (``capped``): the rest wait here for a slot, in arrival order, each counted once in the
server's throttled figure. MLflow's write handlers exhaust their database pool when one
process takes many more, and a worker bound by one interpreter lock gains nothing from them
but tail latency. Artifact transfers, which wait on I/O rather than on the database, are not
held back.

``until_serving`` decides for a server that does not serve: one that is (re)starting is waited
for up to ``gateway_start_wait_seconds``, one asleep (fleet.idle) is woken and waited for up to
``gateway_wake_wait_seconds`` (then 503 with Retry-After, which MLflow clients retry), one that
is not meant to run is refused (409).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from mlfleet.gateway.errors import mlflow_error, unavailable
from mlfleet.gateway.routing import ServerLookup, ServerRecord
from mlfleet.metrics import Recorder
from mlfleet.runtime.local import LocalRuntime, Worker
from mlfleet.settings import Settings

# Statuses in which a server has no worker and none is coming.
NEVER_SERVING = ("CreateFailed", "StartFailed", "StopFailed", "Stopped", "Stopping")
LOOKUP_SECONDS = 0.1
SERVING_POLL_SECONDS = 0.01


def capped(upstream_path: str) -> bool:
    """Whether a request counts against its worker's in-flight cap (artifact transfers do
    not)."""
    return "/mlflow-artifacts/" not in upstream_path


@dataclass
class ServerLoad:
    """In-flight requests per worker of one server, and the queue of those waiting for a slot."""

    inflight: dict[str, int] = field(default_factory=dict)
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class Admission:
    def __init__(
        self,
        settings: Settings,
        runtime: LocalRuntime,
        lookup: ServerLookup,
        metrics: Recorder,
        wake: Callable[[str, str], None],
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._lookup = lookup
        # Wakes a sleeping server (its id, why).
        self._wake = wake
        # Requests that had to wait, per server id, for the console's charts.
        self._metrics = metrics
        self._load: dict[str, ServerLoad] = {}

    def serving(self, server_id: str) -> bool:
        return self._runtime.is_serving(server_id)

    async def until_serving(self, name: str, server: ServerRecord) -> str | web.Response:
        """For a server that does not serve: its id once it does, or the refusal to answer."""
        status = server.status
        if server.desired_state == "Running" and status not in NEVER_SERVING:
            waited = await self._wait_until_serving(name)
            if waited is None:
                return unavailable(f"Tracking server {name} is not serving yet (status {status}).")
            return waited
        return mlflow_error(
            409,
            "INVALID_STATE",
            f"Tracking server {name} is {status}: it does not serve requests. "
            "Start it with StartMlflowTrackingServer.",
        )

    async def serving_id(self, name: str) -> str | web.Response:
        """The id of the server called ``name`` once it serves (woken if asleep), or the
        refusal to answer."""
        found = self._lookup(name)
        if found is None:
            return mlflow_error(
                404, "RESOURCE_DOES_NOT_EXIST", f"Tracking server {name} does not exist."
            )
        if self._runtime.is_serving(found.id):
            return found.id
        return await self.until_serving(name, found)

    async def _wait_until_serving(self, name: str) -> str | None:
        """For a server that is (re)starting or asleep, wait a bounded time (waking it if
        asleep); None means give up now. Its record is read every ``LOOKUP_SECONDS``; whether
        it serves, which a woken request waits on, more often."""
        start = time.monotonic()
        waits = self._settings.gateway_start_wait_seconds
        found: ServerRecord | None = None
        next_lookup = start
        while (now := time.monotonic()) - start < waits:
            if found is not None and self._runtime.is_serving(found.id):
                return found.id
            if now >= next_lookup:
                found = self._lookup(name)
                if found is None:
                    return None
                if self._runtime.is_serving(found.id):
                    return found.id
                if found.asleep:  # also one put to sleep while this request waited
                    self._wake(found.id, "a request arrived")
                    waits = max(waits, self._settings.gateway_wake_wait_seconds)
                elif found.desired_state != "Running" or found.status in NEVER_SERVING:
                    return None
                next_lookup = now + LOOKUP_SECONDS
            await asyncio.sleep(SERVING_POLL_SECONDS)
        return None

    async def acquire(self, server_id: str, capped: bool) -> Worker | None:
        """The least-loaded healthy worker, None if the server does not serve; a ``capped``
        request first waits for a free slot. Each worker acquired is released once."""
        load = self._load.setdefault(server_id, ServerLoad())
        cap = self._settings.max_inflight_per_worker
        throttled = False
        while True:
            procs = self._runtime.get(server_id)
            if procs is None or not procs.serving:
                return None
            best = min(
                (w for w in procs.workers if w.healthy),
                key=lambda w: load.inflight.get(w.name, 0),
            )
            taken = load.inflight.get(best.name, 0)
            if taken < cap or not capped:
                load.inflight[best.name] = taken + 1
                return best
            if not throttled:  # the charts count requests that wait, not rounds of waiting
                throttled = True
                self._metrics.throttled(server_id)
            turn = asyncio.get_running_loop().create_future()
            load.waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    _wake_next(load)  # woken, then cancelled: pass the free slot on
                raise

    def busy(self, server_id: str) -> bool:
        """Whether requests to the server are in its workers or waiting for one now."""
        load = self._load.get(server_id)
        return load is not None and (any(load.inflight.values()) or bool(load.waiting))

    def release(self, server_id: str, worker: Worker) -> None:
        load = self._load[server_id]
        load.inflight[worker.name] -= 1
        _wake_next(load)


def _wake_next(load: ServerLoad) -> None:
    while load.waiting:
        turn = load.waiting.popleft()
        if not turn.done():  # a waiter whose client went away was cancelled
            turn.set_result(None)
            return
