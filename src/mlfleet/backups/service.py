"""Backups of tracking servers, and new servers restored from them (mlfleet's own operations).

A backup is asked for by ``CreateTrackingServerBackup`` and taken in the background (the call
answers at once, ``InProgress``): a snapshot of the server's metadata database and the files of
its artifact store (backups.archive), while the server keeps serving. A backup outlives its
server, so a deleted server can be brought back.

``RestoreTrackingServerBackup`` never overwrites a server: it creates a new one, with the backed-up
server's settings, whose reconciler puts the backup's database and artifacts in place
(``restore_into``) before its workers start, checking each artifact against the manifest. What
the restore found (artifacts copied, any the backup lacks or holds damaged) is the server's
``RestoreReport``.

Every kind of server is backed up: its metadata database on SQLite (the embedded default) or
PostgreSQL, its artifacts in a folder or an ``s3://`` prefix (backups.stores); the backup itself
lives under the data dir.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import make_url, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.backups.archive import Archive, Restored, Taken
from mlfleet.backups.shelves import shelf_for
from mlfleet.backups.stores import ArtifactFiles, FolderFiles, files_of
from mlfleet.common.paging import SAGEMAKER, page_of_query
from mlfleet.fleet.service import FleetService
from mlfleet.fleet.stores import local_folder
from mlfleet.protocol.errors import ResourceNotFound, ValidationException
from mlfleet.runtime.metadata_db import MetadataDatabases
from mlfleet.runtime.mlflow_schema import ProvisioningError
from mlfleet.settings import Settings
from mlfleet.state.models import TrackingServer, TrackingServerBackup

log = logging.getLogger(__name__)

# A server whose database exists: a backup needs one (a schedule or a user asks for one).
BACKED_UP = {
    "Created",
    "Updated",
    "Started",
    "Stopped",
    "MaintenanceComplete",
    "MaintenanceFailed",
    "UpdateFailed",
    "StartFailed",
    "StopFailed",
}


class Backups:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        databases: MetadataDatabases,
        fleet: FleetService,
        give_all: Callable[[Path], None],
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._databases = databases
        self._fleet = fleet
        # Hands what a restore wrote to the workers' user (runtime.sandbox).
        self._give_all = give_all
        self._tasks: set[asyncio.Task[bool]] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        # Per server: a take and the removal of unused objects never overlap (Archive.collect).
        self._archive_locks: dict[str, asyncio.Lock] = {}

    def arn_for(self, backup_id: str) -> str:
        s = self._settings
        return (
            f"arn:aws:sagemaker:{s.region}:{s.account_id}:mlflow-tracking-server-backup/{backup_id}"
        )

    def server_arn(self, name: str) -> str:
        return self._fleet.arn_for(name)

    def server_tags(self, name: str) -> list[dict[str, Any]]:
        return self._fleet.tags_of(name)

    def archive_of(self, server_id: str) -> Archive:
        return Archive(shelf_for(self._settings, server_id))

    # operations ----------------------------------------------------------------------------

    def create(self, name: str) -> dict[str, Any]:
        with self._sessions.begin() as session:
            server = FleetService.server_named(session, name)
            if server.status not in BACKED_UP or not server.metadata_db_uri:
                raise ValidationException(
                    f"Tracking Server {name} is in status {server.status}: it can be backed up "
                    "once it is created, and not while it changes."
                )
            backup_id, work = self._begin(session, server)
        task = asyncio.get_running_loop().create_task(self._take(backup_id, *work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {
            "BackupId": backup_id,
            "BackupArn": self.arn_for(backup_id),
            "BackupStatus": "InProgress",
        }

    def start_maintenance(self, name: str, principal: Principal) -> dict[str, Any]:
        return {"TrackingServerArn": self._fleet.start_maintenance(name, principal)}

    def update_mlflow_version(
        self, name: str, version: str, principal: Principal
    ) -> dict[str, Any]:
        return {"TrackingServerArn": self._fleet.update_mlflow_version(name, version, principal)}

    def describe(self, backup_id: str) -> dict[str, Any]:
        with self._sessions() as session:
            return self._summary(self._backup(session, backup_id))

    def list(self, req: dict[str, Any]) -> dict[str, Any]:
        query = select(TrackingServerBackup)
        if "TrackingServerName" in req:
            query = query.where(TrackingServerBackup.server_name == req["TrackingServerName"])
        query = query.order_by(TrackingServerBackup.created_at.desc(), TrackingServerBackup.id)
        page, token = page_of_query(self._sessions, query, req, SAGEMAKER, self._summary)
        answer: dict[str, Any] = {"TrackingServerBackups": page}
        if token is not None:
            answer["NextToken"] = token
        return answer

    def restore(self, req: dict[str, Any], principal: Principal) -> dict[str, Any]:
        with self._sessions() as session:
            backup = self._backup(session, req["BackupId"])
            if backup.status != "Completed":
                raise ValidationException(
                    f"Backup {backup.id} is {backup.status}: only a completed backup restores."
                )
            settings = dict(backup.settings)
            version = backup.mlflow_version
        store = req.get("ArtifactStoreUri") or self._sibling_store(
            settings["ArtifactStoreUri"], req["TrackingServerName"]
        )
        created = {
            "TrackingServerName": req["TrackingServerName"],
            "ArtifactStoreUri": store,
            "TrackingServerSize": settings["TrackingServerSize"],
            "RoleArn": req.get("RoleArn") or settings["RoleArn"],
            "AutomaticModelRegistration": settings["AutomaticModelRegistration"],
            "MlflowVersion": version,
        }
        if settings.get("WeeklyMaintenanceWindowStart"):
            created["WeeklyMaintenanceWindowStart"] = settings["WeeklyMaintenanceWindowStart"]
        answer = self._fleet.create(created, principal, restored_from=backup.id)  # type: ignore[arg-type]
        return {"TrackingServerArn": answer["TrackingServerArn"]}

    # the work --------------------------------------------------------------------------------

    async def restore_into(self, row: TrackingServer) -> str:
        """The restored server's database URI, once the backup's data is in place. Its
        AI-gateway secrets stay readable: they are read with the key of the server backed up."""
        assert row.restored_from is not None
        with self._sessions() as session:
            backup = self._backup(session, row.restored_from)
            archive = self.archive_of(backup.server_id)
        uri = self._databases.uri_for(row.id)
        store = files_of(row.artifact_store_uri, self._settings)

        def load(snapshot: Path) -> None:
            self._databases.load_snapshot(uri, snapshot)

        try:
            restored: Restored = await asyncio.to_thread(archive.restore, backup.id, load, store)
        except (OSError, ValueError, sqlite3.Error, DBAPIError, BotoCoreError, ClientError) as exc:
            raise ProvisioningError(f"restoring backup {backup.id} failed: {exc}") from exc
        if isinstance(store, FolderFiles):
            await asyncio.to_thread(self._give_all, store.root)
        if uri.startswith("sqlite"):
            await asyncio.to_thread(self._give_all, Path(make_url(uri).database or "").parent)
        report = {"BackupId": backup.id, "ArtifactsRestored": restored.copied}
        if restored.missing:
            report["MissingArtifacts"] = restored.missing
            log.warning(
                "tracking server %s restored from %s without %d artifacts the backup lacks",
                row.name,
                backup.id,
                len(restored.missing),
            )
        row.restore_report, row.secrets_key_of = report, backup.server_id
        with self._sessions.begin() as session:
            session.execute(
                update(TrackingServer)
                .where(TrackingServer.id == row.id)
                .values(restore_report=report, secrets_key_of=backup.server_id)
            )
        return uri

    async def back_up_now(self, server: TrackingServer, origin: str) -> str:
        """A backup of ``server`` taken now by the daemon (``origin``: Daily, or the first step
        of a Maintenance or an Upgrade): what was done."""
        with self._sessions.begin() as session:
            backup_id, work = self._begin(session, server, origin)
        if not await self._take(backup_id, *work):
            raise ProvisioningError(f"backup {backup_id} failed: {self.describe(backup_id)}")
        return f"backup {backup_id}"

    def resume(self) -> None:
        """At daemon start: a backup a stop cut short is failed (its partial files removed)."""
        with self._sessions.begin() as session:
            cut = session.scalars(
                select(TrackingServerBackup).where(TrackingServerBackup.status == "InProgress")
            ).all()
            for backup in cut:
                self.archive_of(backup.server_id).remove(backup.id)
                backup.status = "Failed"
                backup.finished_at = time.time()
                backup.failure_reason = "the daemon stopped before the backup was complete"

    async def close(self) -> None:
        for task in [*self._tasks, *self._cleanups]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._cleanups, return_exceptions=True)

    def delete(self, backup_id: str) -> dict[str, Any]:
        """Delete a backup now; the objects only it held go in the background, once no backup
        of the server is being taken."""
        with self._sessions.begin() as session:
            backup = self._backup(session, backup_id)
            if backup.status == "InProgress":
                raise ValidationException(
                    f"Backup {backup_id} is InProgress: it can be deleted once it is done."
                )
            server_id = backup.server_id
            self.archive_of(server_id).remove(backup_id)
            session.delete(backup)
        task = asyncio.get_running_loop().create_task(self._collect(server_id))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return {"BackupArn": self.arn_for(backup_id)}

    async def remove_expired(self, server_id: str, backup_ids: Sequence[str]) -> None:
        """Remove these backups of one server (the schedule's retention), then the objects no
        other backup of it names."""
        archive = self.archive_of(server_id)
        with self._sessions.begin() as session:
            for backup_id in backup_ids:
                archive.remove(backup_id)
                row = session.get(TrackingServerBackup, backup_id)
                if row is not None:
                    session.delete(row)
        await self._collect(server_id)
        log.info("removed backups %s", backup_ids)

    async def _collect(self, server_id: str) -> None:
        archive = self.archive_of(server_id)
        async with self._archive_locks.setdefault(server_id, asyncio.Lock()):
            try:
                removed = await asyncio.to_thread(archive.collect)
            except OSError:
                log.exception("removing the unused objects of %s's backups failed", server_id)
                return
        log.info("removed %d objects no backup of %s names", removed, server_id)

    def _begin(
        self, session: Session, server: TrackingServer, origin: str = "Manual"
    ) -> tuple[str, tuple[str, Archive, str, ArtifactFiles]]:
        """Record a new backup of ``server``, InProgress: its id, and what ``_take`` needs."""
        now = time.time()
        stamp = datetime.fromtimestamp(now).strftime("%Y%m%dt%H%M%S")
        backup_id = f"{server.name}-{stamp}-{secrets.token_hex(2)}"
        session.add(
            TrackingServerBackup(
                id=backup_id,
                server_id=server.id,
                server_name=server.name,
                server_arn=server.arn,
                status="InProgress",
                origin=origin,
                mlflow_version=server.mlflow_version,
                settings={
                    "ArtifactStoreUri": server.artifact_store_uri,
                    "TrackingServerSize": server.size,
                    "RoleArn": server.role_arn,
                    "AutomaticModelRegistration": server.automatic_model_registration,
                    "WeeklyMaintenanceWindowStart": server.weekly_maintenance_window_start,
                },
                created_at=now,
                artifact_count=0,
                artifact_bytes=0,
                metadata_bytes=0,
            )
        )
        store = files_of(server.artifact_store_uri, self._settings)
        return backup_id, (server.id, self.archive_of(server.id), server.metadata_db_uri, store)

    async def _take(
        self, backup_id: str, server_id: str, archive: Archive, uri: str, store: ArtifactFiles
    ) -> bool:
        lock = self._archive_locks.setdefault(server_id, asyncio.Lock())

        def snapshot_into(folder: Path) -> Path:
            return self._databases.snapshot(uri, folder)

        try:
            async with lock:
                taken: Taken = await asyncio.to_thread(
                    archive.take, backup_id, snapshot_into, store
                )
        except Exception as exc:
            log.exception("backup %s failed", backup_id)
            archive.remove(backup_id)
            self._finish(backup_id, status="Failed", failure_reason=str(exc)[:1024])
            return False
        self._finish(
            backup_id,
            status="Completed",
            artifact_count=len(taken.artifacts),
            artifact_bytes=sum(a.size for a in taken.artifacts),
            metadata_bytes=taken.metadata_bytes,
        )
        log.info("backup %s completed: %d artifacts", backup_id, len(taken.artifacts))
        return True

    def _finish(self, backup_id: str, **values: object) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(TrackingServerBackup)
                .where(TrackingServerBackup.id == backup_id)
                .values(finished_at=time.time(), **values)
            )

    # helpers -------------------------------------------------------------------------------

    @staticmethod
    def _sibling_store(original: str, name: str) -> str:
        """The restored server's default store: a folder or prefix named after it, beside the
        original's."""
        folder = local_folder(original)
        if folder is not None:
            return f"file://{Path(folder).parent / name}"
        parsed = urlparse(original)
        parent = parsed.path.strip("/").rpartition("/")[0]
        return f"s3://{parsed.netloc}/{parent + '/' if parent else ''}{name}"

    @staticmethod
    def _backup(session: Session, backup_id: str) -> TrackingServerBackup:
        row = session.get(TrackingServerBackup, backup_id)
        if row is None:
            raise ResourceNotFound(f"Backup {backup_id} does not exist.")
        return row

    def _summary(self, row: TrackingServerBackup) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "BackupId": row.id,
            "BackupArn": self.arn_for(row.id),
            "TrackingServerName": row.server_name,
            "TrackingServerArn": row.server_arn,
            "BackupStatus": row.status,
            "BackupOrigin": row.origin,
            "CreationTime": datetime.fromtimestamp(row.created_at).astimezone(),
            "MlflowVersion": row.mlflow_version,
            "ArtifactCount": row.artifact_count,
            "ArtifactBytes": row.artifact_bytes,
            "MetadataBytes": row.metadata_bytes,
        }
        if row.finished_at is not None:
            summary["CompletionTime"] = datetime.fromtimestamp(row.finished_at).astimezone()
        if row.failure_reason:
            summary["FailureReason"] = row.failure_reason
        return summary
