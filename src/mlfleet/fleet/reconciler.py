"""The reconciler: makes each tracking server's processes match its recorded desired state.

It runs after every accepted API call and once for every server at daemon start, so an
operation cut short by a crash or a restart is finished by the same code that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from packaging.version import Version
from sqlalchemy import CursorResult, make_url, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.secrets import SecretBox
from mlfleet.egress.proxy import WorkerEgress
from mlfleet.fleet.lifecycle import Lifecycle
from mlfleet.fleet.service import SERVING
from mlfleet.fleet.stores import ArtifactRoots, local_folder, resolve
from mlfleet.runtime.local import WORKERS_BY_SIZE, LocalRuntime, ServerSpec, StartError
from mlfleet.runtime.metadata_db import MetadataDatabases
from mlfleet.runtime.mlflow_schema import ProvisioningError
from mlfleet.runtime.sandbox import View
from mlfleet.settings import Settings
from mlfleet.state.db import database_unavailable, driver_message
from mlfleet.state.models import TrackingServer
from mlfleet.versions.environments import Environments, InstallError
from mlfleet.versions.releases import VersionError

log = logging.getLogger(__name__)

# What each transitional status settles to.
OUTCOMES = {
    "Creating": ("Created", "CreateFailed"),
    "Starting": ("Started", "StartFailed"),
    "Updating": ("Updated", "UpdateFailed"),
    "Stopping": ("Stopped", "StopFailed"),
}
RETRY_SECONDS = 15.0
# A server tagged with it = "on" gets the newest patch release of its MLflow line at each
# maintenance (off by default: a release change is the owner's choice).
PATCH_UPGRADES_TAG = "mlfleet:patch-upgrades"
KEK_PASSPHRASE_ENV = "MLFLOW_CRYPTO_KEK_PASSPHRASE"


class ArtifactStoreError(Exception):
    pass


class StoreOutsideRoots(ArtifactStoreError):
    """Stays true until the store is updated or the daemon restarts with other roots."""


def s3_hosts(settings: Settings, region: str) -> tuple[str, ...]:
    """The hosts a worker with an s3:// store in ``region`` talks to directly, not through the
    egress proxy: the store is the operator's choice, not a tenant's."""
    if settings.s3_endpoint_url:
        return (urlparse(settings.s3_endpoint_url).hostname or "",)
    return tuple(
        f"{dot}{host}"
        for host in ("s3.amazonaws.com", f"s3.{region}.amazonaws.com")
        for dot in ("", ".")
    )


def s3_environment(settings: Settings) -> dict[str, str]:
    """What a worker needs to reach S3: the daemon's credentials, as variables, since a
    confined worker sees neither the daemon's environment nor its ~/.aws."""
    session = boto3.Session()
    env = {"AWS_DEFAULT_REGION": session.region_name or settings.region}
    if settings.s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    found = session.get_credentials()
    if found is not None:
        frozen = found.get_frozen_credentials()
        env["AWS_ACCESS_KEY_ID"] = frozen.access_key
        env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
    return env


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        runtime: LocalRuntime,
        databases: MetadataDatabases,
        environments: Environments,
        stores: ArtifactRoots,
        lifecycle: Lifecycle,
        on_serving: Callable[[TrackingServer], None],
        record_left_over: Callable[[str], Awaitable[None]],
        egress: WorkerEgress,
        box: SecretBox,
        restore: Callable[[TrackingServer], Awaitable[str]],
        back_up: Callable[[TrackingServer, str], Awaitable[str]],
    ) -> None:
        self._settings = settings
        self._egress = egress
        self._box = box
        self._sessions = sessions
        self._runtime = runtime
        self._databases = databases
        self._environments = environments
        self._stores = stores
        self._lifecycle = lifecycle
        # Told each time a server is (again) serving: work that needs its MLflow (catching up
        # on automatic registration) starts then.
        self._on_serving = on_serving
        # Given a server's database once its workers stopped: data events they stored with
        # MLflow's writes and never sent reach the trail before the database may go.
        self._record_left_over = record_left_over
        # Puts a backup's data in place for a server restored from it: its database's URI.
        self._restore = restore
        # Takes a backup of a server now (the first step of a maintenance or an upgrade, the
        # backup's origin): what was done.
        self._back_up = back_up
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._warm_up: asyncio.Task[None] | None = None

    def kick(self, server_id: str) -> None:
        """Ask for ``server_id`` to be reconciled (coalesced with a pass already running)."""
        if server_id in self._tasks:
            self._again.add(server_id)
            return
        self._tasks[server_id] = asyncio.get_running_loop().create_task(self._run(server_id))

    def resume_all(self) -> None:
        with self._sessions() as session:
            rows = session.execute(
                select(TrackingServer.id, TrackingServer.name, TrackingServer.artifact_store_uri)
            ).all()
        for _, name, uri in rows:
            # Stores accepted before the roots existed (or with other roots) are refused at
            # start (_bring_up); the operator hears of each now, also of stopped ones.
            if self._outside_roots(uri):
                log.warning(
                    "tracking server %s: artifact store %s is outside the artifact roots (%s): "
                    "it will not start until its ArtifactStoreUri is updated to a folder inside "
                    "one of them, or mlfleet up is given a root that holds it (--artifact-root)",
                    name,
                    uri,
                    self._stores.describe(),
                )
        for server_id, _, _ in rows:
            self.kick(server_id)
        # MLflow's migrations take seconds: run them now rather than in the first create.
        self._warm_up = asyncio.get_running_loop().create_task(self._prepare_template())
        # A worker of the most common kind (the installed release, a database and artifacts
        # on this machine) starts warm from the first create (runtime.warm).
        installed = self._environments.installed
        self._runtime.warm.prepare(
            self._runtime.warm.key_of(
                self._environments.python(installed), self._view(installed, (), network=False)
            )
        )

    async def _prepare_template(self) -> None:
        try:
            await self._databases.prepare()
        except Exception:
            log.exception("building the MLflow schema template failed; the first create retries")

    async def close(self) -> None:
        if self._warm_up is not None:
            self._warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_up
        for handle in self._retries.values():
            handle.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def record_all_left_over(self) -> None:
        """At shutdown, once every worker has stopped: what they stored with MLflow's writes
        and had not yet sent reaches the trail now, so the next start has nothing to recover."""
        with self._sessions() as session:
            uris = session.scalars(select(TrackingServer.metadata_db_uri)).all()
        for uri in filter(None, uris):
            try:
                await self._record_left_over(self._databases.admin_uri(uri))
            except Exception:
                log.exception("reading the unsent data events of %s failed", uri)

    async def _run(self, server_id: str) -> None:
        try:
            while True:
                self._again.discard(server_id)
                try:
                    await self._reconcile(server_id)
                except Exception as exc:
                    # Nothing was decided on a database that was away: the server keeps its
                    # status (no failure for a transient outage) until the retry.
                    if database_unavailable(exc):
                        log.warning(
                            "reconciling tracking server %s waits: %s",
                            server_id,
                            driver_message(exc),
                        )
                    else:
                        log.exception("reconciling tracking server %s failed", server_id)
                    self._retry_later(server_id)
                if server_id not in self._again:
                    return
        finally:
            self._tasks.pop(server_id, None)

    def _retry_later(self, server_id: str) -> None:
        if server_id in self._retries:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retries.pop(server_id, None)
            self.kick(server_id)

        self._retries[server_id] = loop.call_later(RETRY_SECONDS, fire)

    def spec_for(self, row: TrackingServer, version: str | None = None) -> ServerSpec:
        """The workers' command, environment and view: their database and artifacts only,
        the network only for a store that needs it (PostgreSQL, S3), the rest of the way out
        through the egress proxy. ``version``: the MLflow release to run, if not the row's."""
        version = version or row.mlflow_version
        # MLflow encrypts the AI gateway's secrets with a key made from this passphrase; its
        # default is the same for every MLflow installation.
        key_of = row.secrets_key_of or row.id
        env = {KEK_PASSPHRASE_ENV: self._box.derive(f"mlflow-kek:{key_of}").hex()}
        writable: list[Path] = []
        network = False
        direct: tuple[str, ...] = ()
        if row.artifact_store_uri.startswith("s3://"):
            env.update(s3_environment(self._settings))
            direct = s3_hosts(self._settings, env["AWS_DEFAULT_REGION"])
            network = True
        env.update(self._egress.environment(row.id, row.name, direct))
        # Resolved, as checked against the roots just before: a symbolic link swapped later
        # does not move the store.
        folder = local_folder(row.artifact_store_uri)
        folder = str(resolve(folder)) if folder else None
        if folder:
            writable.append(Path(folder))
        database = make_url(row.metadata_db_uri)
        if database.drivername.startswith("sqlite"):
            writable.append(Path(database.database or "").parent)
        else:
            network = True
        return ServerSpec(
            backend_store_uri=self._databases.worker_uri(row.metadata_db_uri, version),
            artifacts_destination=f"file://{folder}" if folder else row.artifact_store_uri,
            workers=WORKERS_BY_SIZE[row.size],
            log_dir=self._settings.data_dir / "servers" / row.id / "logs",
            env=env,
            view=self._view(version, tuple(writable), network),
            python=self._environments.python(version),
        )

    def _view(self, version: str, writable: tuple[Path, ...], network: bool) -> View:
        """What a worker of MLflow ``version`` sees: ``writable``, its release's software and
        the egress proxy's socket; the network only if its stores need it."""
        readable = (self._egress.socket_path.parent, *self._environments.software(version))
        return View(writable=writable, readable=readable, network=network)

    def _load(self, server_id: str) -> TrackingServer | None:
        with self._sessions() as session:
            return session.get(TrackingServer, server_id)

    def _settle(
        self, row: TrackingServer, status: str, failure: str | None = None, **columns: object
    ) -> None:
        with self._sessions.begin() as session:
            # An UPDATE's result is a CursorResult, which Session.execute's typing does not say.
            changed = cast(
                CursorResult[Any],
                session.execute(
                    update(TrackingServer)
                    .where(TrackingServer.id == row.id, TrackingServer.generation == row.generation)
                    .values(status=status, failure_reason=failure, **columns)
                ),
            )
            current = session.get(TrackingServer, row.id) if changed.rowcount else None
            # A failure note on an unchanged status (a restart that is retried) is no event.
            if current is not None and status != row.status:
                self._lifecycle.announce(session, current)
        if failure:
            log.warning("tracking server %s: %s: %s", row.name, status, failure)
        else:
            log.info("tracking server %s: %s", row.name, status)

    def _outside_roots(self, uri: str) -> bool:
        folder = local_folder(uri)
        return folder is not None and self._stores.outside(folder)

    async def _check_artifact_store(self, uri: str) -> None:
        folder = local_folder(uri)
        if folder is not None:
            try:
                resolve(folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArtifactStoreError(f"artifact folder {folder}: {exc}") from exc
            return
        bucket = urlparse(uri).netloc

        def head_bucket() -> None:
            client = boto3.client(
                "s3",
                endpoint_url=self._settings.s3_endpoint_url or None,
                region_name=self._settings.region,
                config=BotoConfig(retries={"max_attempts": 2}, connect_timeout=5),
            )
            client.head_bucket(Bucket=bucket)

        try:
            await asyncio.to_thread(head_bucket)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactStoreError(f"artifact store {uri} is not reachable: {exc}") from exc

    async def _reconcile(self, server_id: str) -> None:
        row = self._load(server_id)
        if row is None:
            await self._runtime.stop(server_id)
            return
        if row.desired_state == "Deleted":
            await self._runtime.stop(server_id)
            if row.metadata_db_uri:
                await self._record_left_over(self._databases.admin_uri(row.metadata_db_uri))
                await self._databases.drop(row.metadata_db_uri)
            with self._sessions.begin() as session:
                self._lifecycle.forget(session, server_id)
            log.info("tracking server %s deleted", row.name)
            await self._remove_unused_environments()
            return
        if row.desired_state == "Stopped":
            await self._runtime.stop(server_id)
            if row.metadata_db_uri:
                await self._record_left_over(self._databases.admin_uri(row.metadata_db_uri))
            if row.status == "Stopping":
                # A server stopped asleep starts awake.
                self._settle(row, "Stopped", asleep=False)
            return
        if row.status == "MaintenanceInProgress":
            await self._maintain(row)
            return
        if row.status == "Updating" and row.upgrading_to:
            await self._upgrade(row, row.upgrading_to)
            return
        await self._bring_up(row)

    async def _maintain(self, row: TrackingServer) -> None:
        """The maintenance window's work (fleet.maintenance), the server serving again after it
        whatever happens: backup, database check and compaction, and, for a server tagged
        ``mlfleet:patch-upgrades`` = ``on``, the newest patch release of its MLflow line. Run
        again from the start if the daemon stopped in the middle."""
        failure: str | None = None
        upgraded_to: str | None = None
        try:
            taken = await self._back_up(row, "Maintenance")
            await self._runtime.stop(row.id)
            done = await self._databases.maintain(row.metadata_db_uri)
            log.info("tracking server %s: maintenance: %s; %s", row.name, taken, done)
        except (ProvisioningError, OSError, sqlite3.Error, DBAPIError) as exc:
            failure = f"maintenance failed: {exc}"
        target = None if failure else await self._patch_release(row)
        if target is not None:
            try:
                await self._environments.ensure(target)
                read = await self._run_on(row, target)
                log.info(
                    "tracking server %s: MLflow %s -> %s (read %s)",
                    row.name,
                    row.mlflow_version,
                    target,
                    read,
                )
                upgraded_to = target
            except (InstallError, StartError, ProvisioningError, OSError, sqlite3.Error) as exc:
                failure = (
                    f"upgrade to MLflow {target} failed, back on MLflow {row.mlflow_version}: {exc}"
                )
        if upgraded_to is None:
            failure = await self._start_again(row, failure, "restarting after maintenance")
        status = "MaintenanceFailed" if failure else "MaintenanceComplete"
        # Its workers were started again: a server maintained asleep is awake now, and falls
        # asleep again when idle.
        self._settle(
            row,
            status,
            failure,
            maintenance_status=status,
            asleep=False,
            **({"mlflow_version": upgraded_to} if upgraded_to else {}),
        )
        if upgraded_to:
            await self._remove_unused_environments()
        self._on_serving(row)

    async def _patch_release(self, row: TrackingServer) -> str | None:
        """The newer patch release of the server's MLflow line that maintenance installs, for a
        server tagged ``mlfleet:patch-upgrades`` = ``on`` (off by default)."""
        tags = {t["Key"]: t["Value"] for t in row.tags}
        if tags.get(PATCH_UPGRADES_TAG, "").lower() != "on":
            return None
        current = Version(row.mlflow_version)
        try:
            newest = await asyncio.to_thread(
                self._environments.releases.resolve, f"{current.major}.{current.minor}"
            )
        except VersionError as exc:
            log.warning("tracking server %s: no patch upgrade: %s", row.name, exc)
            return None
        return newest if Version(newest) > current else None

    async def _upgrade(self, row: TrackingServer, target: str) -> None:
        """Move a serving server to MLflow ``target`` (FleetService.update_mlflow_version):
        install it, back up, stop, then ``_run_on`` it. On any failure after the stop the
        server serves again on its old release (UpdateFailed, with the reason, serving also
        after a daemon restart). Run again from the start if the daemon stopped in the middle."""
        old = row.mlflow_version
        try:
            await self._environments.ensure(target)
            taken = await self._back_up(row, "Upgrade")
        except (InstallError, ProvisioningError, OSError) as exc:
            # Nothing was touched: the server never stopped serving.
            self._settle(
                row,
                "UpdateFailed",
                f"upgrade to MLflow {target}: {exc}",
                upgrading_to=None,
                rolled_back_from=target,
            )
            return
        await self._runtime.stop(row.id)
        await self._record_left_over(self._databases.admin_uri(row.metadata_db_uri))
        try:
            read = await self._run_on(row, target)
        except (StartError, ProvisioningError, OSError, sqlite3.Error) as exc:
            failed = f"upgrade to MLflow {target} failed, back on MLflow {old}: {exc}"
            log.warning("tracking server %s: %s", row.name, failed)
            failure = await self._start_again(row, failed, f"restarting on MLflow {old}")
            self._settle(
                row,
                "UpdateFailed",
                failure,
                upgrading_to=None,
                rolled_back_from=target,
                asleep=False,
            )
            self._on_serving(row)
            return
        log.info(
            "tracking server %s: MLflow %s -> %s (%s; read %s)", row.name, old, target, taken, read
        )
        self._settle(row, "Updated", mlflow_version=target, upgrading_to=None, asleep=False)
        await self._remove_unused_environments()
        self._on_serving(row)

    async def _run_on(self, row: TrackingServer, target: str) -> str:
        """With the server's workers stopped: its database migrated by MLflow ``target``'s own
        migrations, its workers started on ``target`` and data read back through MLflow's API
        (what was read). On any failure the workers are stopped, the database is put back as
        it was, and the error raised: the caller starts the old release again."""
        uri = row.metadata_db_uri
        await self._databases.keep_for_rollback(uri)
        try:
            await self._databases.upgrade(uri, target)
            if uri.startswith("sqlite"):
                # The migrations ran as the daemon: what they wrote goes to the workers' user.
                self._runtime.sandbox.give_all(Path(make_url(uri).database or "").parent)
            await self._databases.ready_for_workers(uri)
            await self._runtime.start(row.id, self.spec_for(row, target))
            return await self._runtime.read_back(row.id)
        except BaseException:
            await self._runtime.stop(row.id)
            await self._databases.put_back(uri)
            raise
        finally:
            await self._databases.forget_rollback(uri)

    async def _start_again(
        self, row: TrackingServer, failure: str | None, doing: str
    ) -> str | None:
        """Start the server's workers on its recorded release after maintenance or a failed
        upgrade; ``failure`` so far, with what starting them met added."""
        try:
            await self._databases.ready_for_workers(row.metadata_db_uri)
            await self._runtime.start(row.id, self.spec_for(row))
        except (StartError, ProvisioningError, OSError) as exc:
            self._retry_later(row.id)
            return f"{failure + '; ' if failure else ''}{doing}: {exc}"
        return failure

    async def _remove_unused_environments(self) -> None:
        with self._sessions() as session:
            in_use = set(session.scalars(select(TrackingServer.mlflow_version).distinct()))
        await asyncio.to_thread(self._environments.remove_unused, in_use)

    async def _bring_up(self, row: TrackingServer) -> None:
        # A failed upgrade left the server serving on its old release: it keeps serving.
        if row.status in ("CreateFailed", "StartFailed", "UpdateFailed") and not (
            row.rolled_back_from
        ):
            await self._runtime.stop(row.id)
            return
        done, failed = OUTCOMES.get(row.status, (row.status, row.status))
        try:
            # On every start: the roots may have changed since the store was accepted.
            if self._outside_roots(row.artifact_store_uri):
                raise StoreOutsideRoots(
                    f"artifact store {row.artifact_store_uri} is outside the artifact roots "
                    f"({self._stores.describe()}): update ArtifactStoreUri to a folder "
                    "inside one of them, or ask the operator for a root that holds it"
                )
            # Built on first use, and again if its folder went missing since.
            await self._environments.ensure(row.mlflow_version)
            if not row.metadata_db_uri:
                await self._check_artifact_store(row.artifact_store_uri)
                if row.restored_from:
                    row.metadata_db_uri = await self._restore(row)
                else:
                    row.metadata_db_uri = await self._databases.create(
                        row.id, round(row.created_at * 1000), row.mlflow_version
                    )
                with self._sessions.begin() as session:
                    session.execute(
                        update(TrackingServer)
                        .where(TrackingServer.id == row.id)
                        .values(metadata_db_uri=row.metadata_db_uri)
                    )
            elif row.status == "Updating":
                await self._check_artifact_store(row.artifact_store_uri)
            if row.asleep:
                await self._fall_asleep(row)
            else:
                await self._databases.ready_for_workers(row.metadata_db_uri)
                await self._runtime.start(row.id, self.spec_for(row))
        except (StartError, ProvisioningError, ArtifactStoreError, InstallError, OSError) as exc:
            if row.status in SERVING:
                # A server that should be running could not be brought back (e.g. after a
                # daemon restart): keep its status, say why, and try again later.
                self._settle(row, row.status, str(exc))
                if not isinstance(exc, StoreOutsideRoots):
                    self._retry_later(row.id)
            else:
                self._settle(row, failed, str(exc))
            return
        if (row.status != done or row.failure_reason) and not row.rolled_back_from:
            self._settle(row, done)
        if not row.asleep:
            self._on_serving(row)

    async def _fall_asleep(self, row: TrackingServer) -> None:
        """A sleeping server (fleet.idle) holds no process: its workers stop, and what they
        stored with MLflow's writes and had not sent reaches the trail."""
        if self._runtime.get(row.id) is not None:
            await self._runtime.stop(row.id)
            await self._record_left_over(self._databases.admin_uri(row.metadata_db_uri))
