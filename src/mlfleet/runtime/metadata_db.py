"""Each tracking server's own MLflow metadata database: created from a template, dropped on delete.

MLflow's migrations take seconds; copying a migrated template (a file for SQLite,
``CREATE DATABASE ... TEMPLATE`` for PostgreSQL) takes milliseconds. There is one template per
MLflow release, built by that release; the installed MLflow's SQLite template comes from a
shipped dump of its migrations (runtime.mlflow_schema). A copy's Default experiment is dated at
its server's creation, not at the template's.

On PostgreSQL, a server's workers log in as a role of their own, named as its database, that can
open that database only: PostgreSQL lets every role (PUBLIC) connect to a new database, so that
right is taken back from every tenant database, the templates and the control plane's database,
before anyone can connect to a new one. The role may read and write rows; the schema stays the
daemon's (migrations run as the daemon's role). Its password is derived from the master key, so it
is stored nowhere and reaches only the workers' environment; PostgreSQL is sent a SCRAM verifier,
never the password, so a failed statement in its log shows none. ``postgres`` and ``template1``
stay as the cluster's operator set them: they hold nothing of mlfleet's, PostgreSQL 15+ lets
PUBLIC create nothing there, and revoking their CONNECT would lock out other users of a shared
server. Templates are copied from template0, so nothing planted in template1 reaches a tenant.

The control plane stores a server's URI without a password: the daemon adds its own
(``admin_uri``) and the workers get their role's (``worker_uri``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from packaging.version import Version
from sqlalchemy import URL, Connection, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from mlfleet.auth.secrets import SecretBox
from mlfleet.runtime.mlflow_schema import (
    ProvisioningError,
    load_sqlite_dump,
    migrate,
    sqlite_dump_path,
    stamp_default_experiment,
    upgrade,
)
from mlfleet.runtime.stored_events import PENDING
from mlfleet.settings import Settings

# A fixed key so that several daemons sharing one PostgreSQL server serialise template work.
_PG_TEMPLATE_LOCK = 0x6D6C666C
TENANT_PREFIX = "mlfleet_ts_"
TEMPLATE_PREFIX = "mlfleet_tpl_"
# A backup's copy of a server's database (backups.archive), by kind of database.
SQLITE_SNAPSHOT = "metadata.db"
PG_SNAPSHOT = "metadata.pgdump"
# A tenant database's copy while its server moves to another MLflow release (keep_for_rollback).
ROLLBACK_SUFFIX = "_before_upgrade"
# PostgreSQL's own default for the verifiers it computes.
SCRAM_ITERATIONS = 4096
# mlfleet's databases (of every daemon sharing the server) that PUBLIC may still open, and
# whether the daemon's role may close them.
_OPEN_TO_PUBLIC = text(
    "SELECT datname, pg_has_role(datdba, 'USAGE') FROM pg_database"
    " WHERE (datname = :control OR starts_with(datname, :tenant)"
    " OR starts_with(datname, :template))"
    " AND (has_database_privilege('public', oid, 'CONNECT')"
    " OR has_database_privilege('public', oid, 'TEMPORARY'))"
)


def _pg_exists(conn: Connection, database: str | None) -> bool:
    found = conn.execute(
        text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": database}
    ).scalar()
    return bool(found)


def _role_exists(conn: Connection, role: str) -> bool:
    found = conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role})
    return bool(found.scalar())


def _create_closed(conn: Connection, database: str, template: str) -> None:
    """CREATE DATABASE without PUBLIC's CONNECT, revoked before anyone could connect: a session
    opened in between would outlive the REVOKE."""
    conn.execute(
        text(f'CREATE DATABASE "{database}" TEMPLATE "{template}" ALLOW_CONNECTIONS false')
    )
    _close_to_public(conn, database)


def _close_to_public(conn: Connection, database: str) -> None:
    conn.execute(text(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
    conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))


def _stamp(uri: str, created_ms: int) -> None:
    engine = create_engine(uri, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            stamp_default_experiment(conn, created_ms)
    finally:
        engine.dispose()


def _create_pending(uri: str) -> None:
    engine = create_engine(uri)
    try:
        PENDING.create(engine, checkfirst=True)
    finally:
        engine.dispose()


def _name(uri: str) -> str:
    return make_url(uri).database or ""


def _disconnect(conn: Connection, database: str) -> None:
    """End every session on ``database`` (the daemon's own leftovers: its workers are stopped),
    which CREATE DATABASE ... TEMPLATE requires."""
    conn.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = :n AND pid <> pg_backend_pid()"
        ),
        {"n": database},
    )


def _pg_keep(conn: Connection, database: str) -> None:
    copy = database + ROLLBACK_SUFFIX
    if _pg_exists(conn, copy):
        _pg_put_back(conn, database)
    _disconnect(conn, database)
    _create_closed(conn, copy, database)


def _pg_put_back(conn: Connection, database: str) -> None:
    conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    conn.execute(text(f'ALTER DATABASE "{database}{ROLLBACK_SUFFIX}" RENAME TO "{database}"'))


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of ``source``, WAL included (SQLite's online backup)."""
    partial = target.with_suffix(".copying")
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(partial)) as dst:
        src.backup(dst)
    os.replace(partial, target)


def _maintain_sqlite(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        found = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if found != ["ok"]:
            raise ProvisioningError(f"the integrity check of {path.name} found: {'; '.join(found)}")
        before = path.stat().st_size
        conn.execute("VACUUM")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return f"integrity ok, VACUUM and ANALYZE ({before} -> {path.stat().st_size} bytes)"


def scram_verifier(password: str) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677), in its format."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64[0]}${b64[1]}:{b64[2]}"


class MetadataDatabases:
    def __init__(
        self,
        settings: Settings,
        installed: str,
        python_for: Callable[[str], str],
        secrets: SecretBox,
    ) -> None:
        """``installed``: the MLflow release beside mlfleet; ``python_for``, a release's
        interpreter (versions.environments), which runs its migrations."""
        self._settings = settings
        self._installed = installed
        self._python_for = python_for
        self._secrets = secrets
        self._template_lock = asyncio.Lock()

    def uri_for(self, server_id: str) -> str:
        """The URI the control plane stores: on PostgreSQL, the daemon's without its password."""
        if self._settings.uses_postgres:
            # set() leaves a password given as None in place; the tuple's _replace does not.
            url = self._pg(f"{TENANT_PREFIX}{server_id}")._replace(password=None)
            return url.render_as_string(hide_password=False)
        return f"sqlite:///{self._settings.data_dir / 'servers' / server_id / 'mlflow.db'}"

    def admin_uri(self, uri: str) -> str:
        """A stored URI as the daemon connects to it."""
        if uri.startswith("sqlite"):
            return uri
        return self._pg_url(make_url(uri).database or "")

    def worker_uri(self, uri: str, version: str) -> str:
        """A stored URI as the workers of MLflow ``version`` connect to it: on PostgreSQL, as
        their role, with the driver that release works with."""
        if uri.startswith("sqlite"):
            return uri
        role = make_url(uri).database or ""
        url = self._pg(role, version).set(username=role, password=self._role_password(role))
        return url.render_as_string(hide_password=False)

    async def ready_for_workers(self, uri: str) -> None:
        """What a server's database needs before its workers start, done once by the daemon
        rather than raced by the workers: the table of stored data events (stored_events) and,
        on PostgreSQL, the workers' role. Idempotent, so that servers made before either
        existed get them, and tables added since are granted."""
        if uri.startswith("sqlite"):
            await asyncio.to_thread(_create_pending, uri)
            return
        database = make_url(uri).database or ""
        try:
            await asyncio.to_thread(self._pg_locked, lambda conn: self._admit(conn, database))
        except DBAPIError as exc:
            # The driver's message only: SQLAlchemy's would quote the statement.
            raise ProvisioningError(
                f"setting up the PostgreSQL role of database {database} failed: {exc.orig}"
            ) from exc

    async def prepare(self) -> None:
        """Build the installed MLflow's template now, so that the first create need not."""
        version = self._installed
        if self._settings.uses_postgres:
            await asyncio.to_thread(
                self._pg_locked, lambda conn: self._ensure_pg_template(conn, version)
            )
        else:
            await self._sqlite_template_ready(version)

    async def create(self, server_id: str, created_ms: int, version: str) -> str:
        """The server's database, copied from ``version``'s template; ``created_ms`` is the
        server's creation time (ms since the epoch), which its Default experiment reports."""
        uri = self.uri_for(server_id)
        if self._settings.uses_postgres:
            await asyncio.to_thread(self._create_postgres_sync, uri, created_ms, version)
        else:
            await self._create_sqlite(uri, created_ms, version)
        return uri

    async def drop(self, uri: str) -> None:
        if uri.startswith("sqlite"):
            path = Path(make_url(uri).database or "")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        name = make_url(uri).database or ""

        def work(conn: Connection) -> None:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            # Gone with the database: its objects and the grant to connect; DROP OWNED takes
            # whatever else the role was given.
            if _role_exists(conn, name):
                conn.execute(text(f'DROP OWNED BY "{name}"'))
                conn.execute(text(f'DROP ROLE "{name}"'))

        await asyncio.to_thread(self._pg_locked, work)

    async def maintain(self, uri: str) -> str:
        """A stopped server's database checked and compacted: what was done, for the log.
        Raises ProvisioningError when the check finds damage."""
        if uri.startswith("sqlite"):
            return await asyncio.to_thread(_maintain_sqlite, Path(make_url(uri).database or ""))

        def vacuum() -> str:
            engine = create_engine(self.admin_uri(uri), poolclass=NullPool)
            try:
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE"))
            finally:
                engine.dispose()
            return "VACUUM ANALYZE"

        return await asyncio.to_thread(vacuum)

    # Backups ---------------------------------------------------------------------------------

    def snapshot(self, uri: str, folder: Path) -> Path:
        """A consistent copy of a (serving) server's database in ``folder``, the file written:
        SQLite's online backup, or pg_dump's archive (one transaction's snapshot). Blocking."""
        if uri.startswith("sqlite"):
            target = folder / SQLITE_SNAPSHOT
            _sqlite_copy(Path(make_url(uri).database or ""), target)
            return target
        target = folder / PG_SNAPSHOT
        partial = target.with_suffix(".partial")
        self._pg_tool(
            "pg_dump",
            _name(uri),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={partial}",
        )
        os.replace(partial, target)
        return target

    def load_snapshot(self, uri: str, snapshot: Path) -> None:
        """A new server's database at ``uri``, made from a ``snapshot`` of another's, without
        the data events that server had not sent yet (they are its own). Blocking."""
        if uri.startswith("sqlite"):
            database = Path(make_url(uri).database or "")
            database.parent.mkdir(parents=True, exist_ok=True)
            partial = database.with_suffix(".restoring")
            shutil.copyfile(snapshot, partial)
            with closing(sqlite3.connect(partial)) as copy, copy:
                copy.execute(f"DELETE FROM {PENDING.name}")
            os.replace(partial, database)
            return
        name = _name(uri)

        def empty(conn: Connection) -> None:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            _create_closed(conn, name, "template0")

        self._pg_locked(empty)
        self._pg_tool("pg_restore", name, "--no-owner", "--no-privileges", str(snapshot))
        engine = create_engine(self.admin_uri(uri), poolclass=NullPool)
        try:
            with engine.begin() as restored:
                restored.execute(text(f"DELETE FROM {PENDING.name}"))
        finally:
            engine.dispose()

    def _pg_tool(self, tool: str, database: str, *args: str) -> None:
        """PostgreSQL's ``pg_dump`` or ``pg_restore`` on ``database`` as the daemon's role; the
        password goes in the environment, never on a command line anyone may read."""
        url = self._pg(database)
        env = {
            **os.environ,
            "PGHOST": url.host or "localhost",
            "PGPORT": str(url.port or 5432),
            "PGUSER": url.username or "",
            "PGDATABASE": database,
        }
        if url.password:
            env["PGPASSWORD"] = str(url.password)
        done = subprocess.run(
            [tool, *args, *(["--dbname", database] if tool == "pg_restore" else [])],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ProvisioningError(f"{tool} failed: {done.stderr.strip()[-1000:]}")

    # MLflow upgrades -------------------------------------------------------------------------

    @staticmethod
    def _before_upgrade(uri: str) -> Path:
        return Path(f"{make_url(uri).database}.before-upgrade")

    async def keep_for_rollback(self, uri: str) -> None:
        """A copy of a stopped server's database to go back to (put_back): a file beside it,
        or on PostgreSQL a database made from it as a template. A copy left by an upgrade cut
        short is put back first: the database may be half migrated."""
        if not uri.startswith("sqlite"):
            await asyncio.to_thread(self._pg_locked, lambda conn: _pg_keep(conn, _name(uri)))
            return
        kept = self._before_upgrade(uri)
        if kept.exists():
            await self.put_back(uri)
        await asyncio.to_thread(_sqlite_copy, Path(make_url(uri).database or ""), kept)

    async def put_back(self, uri: str) -> None:
        """The database as keep_for_rollback found it."""
        if not uri.startswith("sqlite"):
            await asyncio.to_thread(self._pg_locked, lambda conn: _pg_put_back(conn, _name(uri)))
            return
        database = Path(make_url(uri).database or "")
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        await asyncio.to_thread(shutil.copyfile, self._before_upgrade(uri), database)

    async def forget_rollback(self, uri: str) -> None:
        if not uri.startswith("sqlite"):
            copy = _name(uri) + ROLLBACK_SUFFIX
            await asyncio.to_thread(
                self._pg_locked,
                lambda conn: conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')),
            )
            return
        self._before_upgrade(uri).unlink(missing_ok=True)

    async def upgrade(self, uri: str, version: str) -> None:
        """A stopped server's database migrated to ``version``'s schema, by ``version``."""
        await asyncio.to_thread(upgrade, self.admin_uri(uri), self._python_for(version))

    # SQLite ---------------------------------------------------------------------------------

    def _sqlite_template(self, version: str) -> Path:
        return self._settings.data_dir / "templates" / f"mlflow-{version}.db"

    async def _sqlite_template_ready(self, version: str) -> Path:
        template = self._sqlite_template(version)
        async with self._template_lock:
            if not template.exists():
                template.parent.mkdir(parents=True, exist_ok=True)
                building = template.with_suffix(".building")
                building.unlink(missing_ok=True)
                dump = sqlite_dump_path(version)
                if dump.exists():
                    await asyncio.to_thread(load_sqlite_dump, dump, building)
                else:
                    await asyncio.to_thread(
                        migrate, f"sqlite:///{building}", self._python_for(version)
                    )
                # WAL lets the gateway's readers and writers overlap; the mode is stored in
                # the file, so every copy inherits it.
                with sqlite3.connect(building) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                os.replace(building, template)
        return template

    async def _create_sqlite(self, uri: str, created_ms: int, version: str) -> None:
        template = await self._sqlite_template_ready(version)
        target = Path(make_url(uri).database or "")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return  # created before a crash: keep whatever it holds
        partial = target.with_suffix(".copying")
        await asyncio.to_thread(shutil.copyfile, template, partial)
        await asyncio.to_thread(_stamp, f"sqlite:///{partial}", created_ms)
        os.replace(partial, target)

    # PostgreSQL -----------------------------------------------------------------------------

    def _pg_locked(self, work: Callable[[Connection], object]) -> None:
        """Run ``work`` on an autocommit admin connection holding the fleet-wide lock (templates,
        databases, roles)."""
        engine = create_engine(self._pg("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_TEMPLATE_LOCK})
                try:
                    work(conn)
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_TEMPLATE_LOCK})
        finally:
            engine.dispose()

    def _pg(self, database: str, version: str | None = None) -> URL:
        """``database`` on the daemon's PostgreSQL server; for MLflow ``version``, with its
        driver: MLflow 2.x compares ids across types in ways only psycopg2 lets pass."""
        driver = "psycopg2" if version and Version(version).major < 3 else "psycopg"
        base = make_url(self._settings.control_db_url)
        return base.set(drivername=f"postgresql+{driver}", database=database)

    def _pg_url(self, database: str, version: str | None = None) -> str:
        return self._pg(database, version).render_as_string(hide_password=False)

    def _role_password(self, role: str) -> str:
        return self._secrets.derive(f"postgres-role:{role}").hex()

    def _ensure_pg_template(self, conn: Connection, version: str) -> str:
        """``version``'s template database's name, built first if missing (under the template
        lock)."""
        template = TEMPLATE_PREFIX + version.replace(".", "_")
        if not _pg_exists(conn, template):
            building = f"{template}_building"
            conn.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))
            _create_closed(conn, building, "template0")
            migrate(self._pg_url(building, version), self._python_for(version))
            conn.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{template}"'))
        return template

    def _create_postgres_sync(self, uri: str, created_ms: int, version: str) -> None:
        name = make_url(uri).database or ""

        def work(conn: Connection) -> None:
            template = self._ensure_pg_template(conn, version)
            if _pg_exists(conn, name):
                _close_to_public(conn, name)  # left half-made by a crash, perhaps
            else:
                _create_closed(conn, name, template)
                _stamp(self._pg_url(name), created_ms)

        self._pg_locked(work)

    def _admit(self, conn: Connection, database: str) -> None:
        role = database
        if not _role_exists(conn, role):
            conn.execute(text(f'CREATE ROLE "{role}"'))
        # Every time: a role made before the master key changed gets the current password.
        # Not through text(): the verifier's colons would read as bind parameters.
        verifier = scram_verifier(self._role_password(role))
        conn.exec_driver_sql(
            f'ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
            f" PASSWORD '{verifier}'"
        )
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"'))
        self._lock_down(conn)
        engine = create_engine(self._pg(database), poolclass=NullPool)
        try:
            with engine.begin() as tenant:
                # Made here, as the daemon's, rather than by the worker: the daemon reads what a
                # stopped worker left (stored_events) and the role needs no right to create.
                PENDING.create(tenant, checkfirst=True)
                tenant.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
                tenant.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
                tenant.execute(
                    text(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"
                        f' TO "{role}"'
                    )
                )
                tenant.execute(
                    text(
                        f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{role}"'
                    )
                )
        finally:
            engine.dispose()

    def _lock_down(self, conn: Connection) -> None:
        """Take PUBLIC's CONNECT and TEMPORARY from the databases made before roles existed and
        from the control plane's; refuse to go on if the control plane's stays open."""
        control = make_url(self._settings.control_db_url).database
        names = {"control": control, "tenant": TENANT_PREFIX, "template": TEMPLATE_PREFIX}
        for database, ours in conn.execute(_OPEN_TO_PUBLIC, names).all():
            if ours:
                conn.execute(
                    text(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
                )
            elif database == control:
                raise ProvisioningError(
                    f"every PostgreSQL role may connect to the control plane's database {control}, "
                    "and the daemon's role may not change that: have its owner run REVOKE CONNECT, "
                    f"TEMPORARY ON DATABASE {control} FROM PUBLIC"
                )
            # Else another daemon's, under another role: that daemon closes it.
