"""MLflow's metadata schema: built by MLflow's own migrations, or loaded from a shipped dump.

Running MLflow's Alembic migrations costs seconds (importing MLflow is most of it), and a
fresh data dir pays that before its first tracking server can exist. For the MLflow version
mlfleet pins, the package ships the SQLite result of those migrations as SQL text
(``mlflow_schemas/mlflow-<version>.sqlite.sql``), which loads in milliseconds. Any other
version falls back to the migrations, run by that version's interpreter. Regenerate the dump
after changing the pin:

    python -m mlfleet.runtime.mlflow_schema --write-sqlite-dump

Run with a database URI, this module migrates that database (the daemon does so in a child
process, so that the daemon never imports MLflow); with ``--upgrade`` and a URI, it brings an
existing database to the running MLflow's schema, as ``mlflow db upgrade`` does.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

from sqlalchemy import Connection, text

MODULE = "mlfleet.runtime.mlflow_schema"  # not __name__: that is "__main__" when run
DUMPS = Path(__file__).with_name("mlflow_schemas")
# The Default experiment MLflow creates (id 0): a template holds the time it was built, so each
# server's copy is given its own (stamp_default_experiment).
_STAMP_DEFAULT_EXPERIMENT = text(
    "UPDATE experiments SET creation_time = :ms, last_update_time = :ms WHERE experiment_id = 0"
)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): .*$", re.MULTILINE)


class ProvisioningError(Exception):
    """A tracking server's metadata database could not be made."""


def sqlite_dump_path(mlflow_version: str) -> Path:
    return DUMPS / f"mlflow-{mlflow_version}.sqlite.sql"


def migrate(uri: str, python: str = sys.executable) -> None:
    """MLflow's migrations on ``uri``, in a child process of ``python`` (the MLflow release's
    interpreter: versions.environments)."""
    done = subprocess.run(
        [python, "-m", MODULE, uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stdout.decode(errors="replace")[-2000:]
        raise ProvisioningError(f"creating the MLflow schema failed: {tail}")


def upgrade(uri: str, python: str) -> None:
    """``uri``'s schema brought to that of the MLflow ``python`` runs, by MLflow's migrations."""
    done = subprocess.run(
        [python, "-m", MODULE, "--upgrade", uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if done.returncode != 0:
        # The traceback's exception line, without what SQLAlchemy adds after it (the statement,
        # which may quote data, and a link).
        raised = _EXCEPTION_LINE.findall(done.stdout.decode(errors="replace"))
        raise ProvisioningError(f"MLflow's migrations failed: {raised[-1] if raised else '?'}")


def load_sqlite_dump(dump: Path, database: Path) -> None:
    """A new SQLite database at ``database`` holding what MLflow's migrations would create
    (the Default experiment's times are the dump's: see stamp_default_experiment)."""
    with sqlite3.connect(database) as conn:
        conn.executescript(dump.read_text(encoding="utf-8"))
    conn.close()


def stamp_default_experiment(conn: Connection, created_ms: int) -> None:
    """Date the Default experiment of a database copied from a template at its server's creation
    (``created_ms``, ms since the epoch), as MLflow dates it when it creates the schema itself."""
    conn.execute(_STAMP_DEFAULT_EXPERIMENT, {"ms": created_ms})


def write_sqlite_dump() -> Path:
    """Migrate a scratch SQLite database and keep its dump for the installed MLflow."""
    target = sqlite_dump_path(installed_version("mlflow"))
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "mlflow.db"
        migrate(f"sqlite:///{database}")
        conn = sqlite3.connect(database)
        try:
            dump = "\n".join(conn.iterdump()) + "\n"
        finally:
            conn.close()
    target.parent.mkdir(exist_ok=True)
    target.write_text(dump, encoding="utf-8")
    return target


def _run_migrations(uri: str) -> None:
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as RegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # The tracking store runs the migrations and creates the Default experiment; the registry
    # store verifies the same schema.
    SqlAlchemyStore(uri, "mlflow-artifacts:/")
    RegistryStore(uri)


def _upgrade(uri: str) -> None:
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

    _upgrade_db(create_sqlalchemy_engine_with_retry(uri))


def main() -> None:
    if sys.argv[1:] == ["--write-sqlite-dump"]:
        print(write_sqlite_dump())
    elif len(sys.argv) == 3 and sys.argv[1] == "--upgrade":
        _upgrade(sys.argv[2])
    elif len(sys.argv) == 2:
        _run_migrations(sys.argv[1])
    else:
        sys.exit(f"usage: python -m {MODULE} (DATABASE_URI | --upgrade URI | --write-sqlite-dump)")


if __name__ == "__main__":
    main()
