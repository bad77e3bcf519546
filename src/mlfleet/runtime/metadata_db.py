"""Each tracking server's own MLflow metadata database: created from a template, dropped on delete.

MLflow's migrations take seconds; copying a migrated template (a file for SQLite,
``CREATE DATABASE ... TEMPLATE`` for PostgreSQL) takes milliseconds. The SQLite template itself
comes from a shipped dump of those migrations when one matches the installed MLflow
(runtime.mlflow_schema).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, create_engine, make_url, text

from mlfleet.runtime.mlflow_schema import (
    load_sqlite_dump,
    migrate,
    sqlite_dump_path,
)
from mlfleet.settings import Settings

# A fixed key so that several daemons sharing one PostgreSQL server serialise template work.
_PG_TEMPLATE_LOCK = 0x6D6C666C


def _pg_exists(conn: Connection, database: str | None) -> bool:
    found = conn.execute(
        text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": database}
    ).scalar()
    return bool(found)


class MetadataDatabases:
    def __init__(self, settings: Settings, mlflow_version: str) -> None:
        self._settings = settings
        self._version = mlflow_version
        self._template_lock = asyncio.Lock()

    def uri_for(self, server_id: str) -> str:
        if self._settings.uses_postgres:
            return self._pg_url(f"mlfleet_ts_{server_id}")
        return f"sqlite:///{self._settings.data_dir / 'servers' / server_id / 'mlflow.db'}"

    async def prepare(self) -> None:
        """Build this MLflow version's template now, so that the first create need not."""
        if self._settings.uses_postgres:
            await asyncio.to_thread(self._pg_locked, self._ensure_pg_template)
        else:
            await self._sqlite_template_ready()

    async def create(self, server_id: str) -> str:
        uri = self.uri_for(server_id)
        if self._settings.uses_postgres:
            await self._create_postgres(uri)
        else:
            await self._create_sqlite(uri)
        return uri

    async def drop(self, uri: str) -> None:
        if uri.startswith("sqlite"):
            path = Path(make_url(uri).database or "")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        name = make_url(uri).database
        await asyncio.to_thread(self._pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # SQLite ---------------------------------------------------------------------------------

    def _sqlite_template(self) -> Path:
        return self._settings.data_dir / "templates" / f"mlflow-{self._version}.db"

    async def _sqlite_template_ready(self) -> Path:
        template = self._sqlite_template()
        async with self._template_lock:
            if not template.exists():
                template.parent.mkdir(parents=True, exist_ok=True)
                building = template.with_suffix(".building")
                building.unlink(missing_ok=True)
                dump = sqlite_dump_path(self._version)
                if dump.exists():
                    await asyncio.to_thread(load_sqlite_dump, dump, building)
                else:
                    await asyncio.to_thread(migrate, f"sqlite:///{building}")
                # WAL lets the gateway's readers and writers overlap; the mode is stored in
                # the file, so every copy inherits it.
                with sqlite3.connect(building) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                os.replace(building, template)
        return template

    async def _create_sqlite(self, uri: str) -> None:
        template = await self._sqlite_template_ready()
        target = Path(make_url(uri).database or "")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return  # created before a crash: keep whatever it holds
        partial = target.with_suffix(".copying")
        await asyncio.to_thread(shutil.copyfile, template, partial)
        os.replace(partial, target)

    # PostgreSQL -----------------------------------------------------------------------------

    def _pg_locked(self, work: Callable[[Connection], None]) -> None:
        """Run ``work`` on an autocommit admin connection holding the fleet-wide template lock."""
        admin_url = make_url(self._settings.control_db_url).set(
            drivername="postgresql+psycopg", database="postgres"
        )
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_TEMPLATE_LOCK})
                try:
                    work(conn)
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_TEMPLATE_LOCK})
        finally:
            engine.dispose()

    def _pg_admin(self, statement: str) -> None:
        self._pg_locked(lambda conn: conn.execute(text(statement)))

    def _pg_url(self, database: str) -> str:
        base = make_url(self._settings.control_db_url)
        url = base.set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def _ensure_pg_template(self, conn: Connection) -> str:
        """The template database's name, built first if missing (under the template lock)."""
        template = "mlfleet_tpl_" + self._version.replace(".", "_")
        if not _pg_exists(conn, template):
            building = f"{template}_building"
            conn.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{building}"'))
            migrate(self._pg_url(building))
            conn.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{template}"'))
        return template

    def _create_postgres_sync(self, uri: str) -> None:
        name = make_url(uri).database

        def work(conn: Connection) -> None:
            template = self._ensure_pg_template(conn)
            if not _pg_exists(conn, name):
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))

        self._pg_locked(work)

    async def _create_postgres(self, uri: str) -> None:
        await asyncio.to_thread(self._create_postgres_sync, uri)
