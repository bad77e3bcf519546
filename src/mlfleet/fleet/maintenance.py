"""Weekly maintenance windows: at a server's ``WeeklyMaintenanceWindowStart`` (``Tue:03:30``,
UTC) its maintenance begins, as ``StartTrackingServerMaintenance`` begins it; the reconciler does
the work (``Reconciler._maintain``): a backup, the metadata database checked and compacted, the
workers restarted, then ``MaintenanceComplete`` or ``MaintenanceFailed``.

The windows are looked at every ``CHECK_SECONDS``; a window begins one maintenance: none
begins within ``QUIET_SECONDS`` of the last one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.fleet.service import SERVING, FleetService
from mlfleet.protocol.errors import AwsError
from mlfleet.state.models import TrackingServer

CHECK_SECONDS = 20.0
QUIET_SECONDS = 3600.0
# Who begins a scheduled maintenance, in the server's LastModifiedBy and the trail.
WINDOW = Principal(
    arn="sagemaker.amazonaws.com",
    user_id="sagemaker.amazonaws.com",
    name="maintenance-window",
    kind="service",
)

log = logging.getLogger(__name__)


def window_of(moment: float) -> str:
    """The window a moment falls in, as WeeklyMaintenanceWindowStart writes it (UTC)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%a:%H:%M")


def due(sessions: sessionmaker[Session], now: float) -> list[str]:
    """The servers whose window begins at ``now``'s minute and that may be maintained."""
    with sessions() as session:
        rows = session.execute(
            select(TrackingServer.name, TrackingServer.last_maintenance_at).where(
                TrackingServer.weekly_maintenance_window_start == window_of(now),
                TrackingServer.status.in_(SERVING),
            )
        ).all()
    return [name for name, last in rows if last is None or now - last >= QUIET_SECONDS]


class MaintenanceWindows:
    def __init__(self, sessions: sessionmaker[Session], fleet: FleetService) -> None:
        self._sessions = sessions
        self._fleet = fleet

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            for name in due(self._sessions, time.time()):
                try:
                    self._fleet.start_maintenance(name, WINDOW)
                except AwsError as exc:  # changed since it was looked at: next week
                    log.warning("maintenance window of %s not begun: %s", name, exc)
                else:
                    log.info("maintenance window of %s begun", name)
