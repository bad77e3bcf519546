"""Daily backups and their retention.

A server with a folder store (whose files live only on this machine) is backed up once a day
(``Settings.daily_backup_seconds``) unless tagged ``mlfleet:daily-backups`` = ``off``; one with an
``s3://`` store only when tagged ``on``. The first a day after its creation, each next a day
after its newest completed backup of any origin (a maintenance's backup counts). A stopped
server is backed up too: its data is as precious, and its database is not being written.

Backups the daemon took itself (``Daily``, ``Maintenance``, ``Upgrade``) are removed once older than
the server's retention (tag ``mlfleet:backup-retention-days``, ``DEFAULT_RETENTION_DAYS`` by
default), never the server's newest completed backup; backups a user asked for (``Manual``) stay.
A deleted server's backups are kept as they were: they are how it comes back.

The servers are looked at every ``CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.backups.service import BACKED_UP, Backups
from mlfleet.fleet.stores import local_folder
from mlfleet.state.models import TrackingServer, TrackingServerBackup

DAILY_TAG = "mlfleet:daily-backups"
RETENTION_TAG = "mlfleet:backup-retention-days"
DEFAULT_RETENTION_DAYS = 7
DAY_SECONDS = 86400.0
CHECK_SECONDS = 60.0
AUTOMATIC = ("Daily", "Maintenance", "Upgrade")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kept:
    """One backup of a server, as the schedule weighs it."""

    id: str
    origin: str
    status: str
    created_at: float


def backup_due(created_at: float, kept: list[Kept], now: float, every: float) -> bool:
    """Whether a server made at ``created_at`` with these backups is due its daily one."""
    completed = [b.created_at for b in kept if b.status == "Completed"]
    if any(b.status == "InProgress" for b in kept):
        return False
    return now - max(completed, default=created_at) >= every


def expired(kept: list[Kept], now: float, retention_days: float) -> list[str]:
    """The daemon's backups older than the retention, the newest completed one excepted."""
    completed = [b for b in kept if b.status == "Completed"]
    newest = max(completed, key=lambda b: b.created_at).id if completed else None
    return [
        b.id
        for b in kept
        if b.origin in AUTOMATIC
        and b.status != "InProgress"
        and b.id != newest
        and now - b.created_at > retention_days * DAY_SECONDS
    ]


def retention_days(tags: dict[str, str]) -> float:
    try:
        days = float(tags.get(RETENTION_TAG, DEFAULT_RETENTION_DAYS))
    except ValueError:
        return DEFAULT_RETENTION_DAYS
    return days if days > 0 else DEFAULT_RETENTION_DAYS


class DailyBackups:
    def __init__(
        self, sessions: sessionmaker[Session], backups: Backups, every_seconds: float
    ) -> None:
        self._sessions = sessions
        self._backups = backups
        self._every = every_seconds
        # Looked at as often as backups are due when that is less than a minute (tests, demos).
        self._check = min(CHECK_SECONDS, every_seconds)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._check)
            try:
                await self.pass_once(time.time())
            except Exception:
                log.exception("the daily backups' pass failed; the next one tries again")

    async def pass_once(self, now: float) -> None:
        with self._sessions() as session:
            servers = session.scalars(
                select(TrackingServer).where(TrackingServer.status.in_(BACKED_UP))
            ).all()
            kept: dict[str, list[Kept]] = {}
            for backup in session.scalars(select(TrackingServerBackup)):
                kept.setdefault(backup.server_id, []).append(
                    Kept(backup.id, backup.origin, backup.status, backup.created_at)
                )
            session.expunge_all()
        for server in servers:
            tags = {t["Key"]: t["Value"] for t in server.tags}
            mine = kept.get(server.id, [])
            old = expired(mine, now, retention_days(tags))
            if old:
                await self._backups.remove_expired(server.id, old)
            # On by default for folder stores, whose files live only here; S3 keeps its own.
            default = "on" if local_folder(server.artifact_store_uri) else "off"
            daily = tags.get(DAILY_TAG, default).lower() == "on"
            if daily and backup_due(server.created_at, mine, now, self._every):
                log.info(
                    "daily backup of %s: %s",
                    server.name,
                    await self._backups.back_up_now(server, "Daily"),
                )
