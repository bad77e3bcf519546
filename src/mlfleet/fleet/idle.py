"""Scale to zero: a tracking server idle past its timeout sleeps, and its next request wakes it.

A server's idle timeout is its tag ``mlfleet:idle-timeout`` (``30s``, ``15m``, ``2h``, ``never``),
else the daemon's ``idle_timeout`` setting (empty: never; an MLflow App's default is
``apps.service.APP_IDLE_SECONDS``). A server is idle when no request to it (through the gateway,
a handed-over connection, the S3 endpoint or mlfleet's own calls) was answered for that long
and none is in flight. Asleep (``TrackingServer.asleep``) it holds no process; its status stays
what it was, and IsActive says Inactive. A server created with a timeout is created asleep: it
costs nothing until its first request.

The gateway holds a request for a sleeping server and calls ``wake`` (gateway.admission); the
reconciler starts its workers, and the request is answered once one serves. Control-plane
operations work on a sleeping server: Stop and Delete as on any, and an update is applied when
it next wakes. Sleeping and waking are audit records (``AwsServiceEvent``s named
``SleepMlflowTrackingServer`` and ``WakeMlflowTrackingServer``) and events (detail-types
``SageMaker Tracking Server Asleep`` and ``... Awake``).

The serving servers are looked at every ``CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.audit.trail import TRACKING_SERVER_TYPE, AuditTrail
from mlfleet.common.tags import idle_timeout
from mlfleet.fleet.lifecycle import Lifecycle
from mlfleet.fleet.service import SERVING
from mlfleet.metrics import Recorder
from mlfleet.runtime.local import LocalRuntime
from mlfleet.state.models import TrackingServer

CHECK_SECONDS = 1.0
SLEEP_EVENT, WAKE_EVENT = "SleepMlflowTrackingServer", "WakeMlflowTrackingServer"

log = logging.getLogger(__name__)


class IdleServers:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        runtime: LocalRuntime,
        requests: Recorder,
        busy: Callable[[str], bool],
        lifecycle: Lifecycle,
        trail: AuditTrail,
        kick: Callable[[str], None],
        default_timeouts: Mapping[str, float | None],
    ) -> None:
        self._sessions = sessions
        self._runtime = runtime
        # When each server last answered a request (the console's request figures).
        self._requests = requests
        # Whether a server has requests in flight in its workers now.
        self._busy = busy
        self._lifecycle = lifecycle
        self._trail = trail
        self._kick = kick
        # By kind (a server, an App: TrackingServer.kind), for one without the tag.
        self._defaults = default_timeouts
        # When each server last started serving: its idle time counts from then at the latest.
        self._serving_since: dict[str, float] = {}
        self._waking: set[str] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                self.put_idle_to_sleep(time.time())
            except Exception:
                log.exception("putting idle tracking servers to sleep failed; trying again")

    def put_idle_to_sleep(self, now: float) -> None:
        serving = [sid for sid in self._runtime.server_ids() if self._runtime.is_serving(sid)]
        if not serving:
            return
        with self._sessions() as session:
            rows = session.execute(
                select(TrackingServer.id, TrackingServer.tags, TrackingServer.kind).where(
                    TrackingServer.id.in_(serving),
                    TrackingServer.asleep.is_(False),
                    TrackingServer.desired_state == "Running",
                    TrackingServer.status.in_(SERVING),
                )
            ).all()
        for server_id, tags, kind in rows:
            try:
                timeout = idle_timeout(tags, self._defaults.get(kind))
            except ValueError:  # refused at the API: only a tag written before this release
                continue
            if timeout is None or self._busy(server_id):
                continue
            since = self._serving_since.setdefault(server_id, now)
            last = max(self._requests.last_request(server_id) or since, since)
            if now - last >= timeout:
                self.sleep(
                    server_id, f"no request for {now - last:.0f} s (idle timeout {timeout:g} s)"
                )

    def sleep(self, server_id: str, reason: str) -> None:
        """Put a serving server to sleep: recorded, then its workers stopped (the reconciler)."""
        with self._sessions.begin() as session:
            row = session.get(TrackingServer, server_id)
            if (
                row is None
                or row.asleep
                or row.desired_state != "Running"
                or row.status not in SERVING
            ):
                return
            row.asleep = True
            self._lifecycle.announce_sleep(session, row, awake=False)
            name, arn = row.name, row.arn
        self._serving_since.pop(server_id, None)
        self._trail.record_service_event(SLEEP_EVENT, arn, TRACKING_SERVER_TYPE, {"reason": reason})
        log.info("tracking server %s sleeps: %s", name, reason)
        self._kick(server_id)

    def wake(self, server_id: str, reason: str) -> None:
        """Wake a sleeping server (nothing for one awake or waking): its workers start."""
        if server_id in self._waking:
            return
        with self._sessions.begin() as session:
            row = session.get(TrackingServer, server_id)
            if row is None or not row.asleep:
                return
            row.asleep = False
            name, arn = row.name, row.arn
        self._waking.add(server_id)
        self._trail.record_service_event(WAKE_EVENT, arn, TRACKING_SERVER_TYPE, {"reason": reason})
        log.info("tracking server %s wakes: %s", name, reason)
        self._kick(server_id)

    def serving(self, row: TrackingServer) -> None:
        """Told by the reconciler each time a server (again) serves."""
        self._serving_since[row.id] = time.time()
        if row.id not in self._waking:
            return
        self._waking.discard(row.id)
        with self._sessions.begin() as session:
            current = session.get(TrackingServer, row.id)
            if current is not None:
                self._lifecycle.announce_sleep(session, current, awake=True)
