"""The shipped SQLite schema dump is what MLflow's own migrations create, and MLflow accepts it."""

from __future__ import annotations

import sqlite3
from importlib.metadata import version as installed_version
from pathlib import Path

from sqlalchemy import create_engine

from mlfleet.runtime.mlflow_schema import (
    load_sqlite_dump,
    migrate,
    sqlite_dump_path,
    stamp_default_experiment,
)

Contents = tuple[list[tuple[str, ...]], dict[str, list[tuple[object, ...]]]]


def clauses(sql: str | None) -> tuple[str, ...]:
    # Alembic's batch migrations rebuild SQLite tables with their constraints in set order,
    # so two migrated databases may list the same clauses in a different order.
    return tuple(sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))


def contents(database: Path) -> Contents:
    """Every schema object and every row, the Default experiment's times left out."""
    with sqlite3.connect(database) as conn:
        schema = sorted(
            (kind, name, table, *clauses(sql))
            for kind, name, table, sql in conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master"
            )
        )
        rows = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{table}")')]
            kept = [c for c in columns if c not in ("creation_time", "last_update_time")]
            listed = ", ".join(f'"{c}"' for c in kept)
            rows[table] = sorted(conn.execute(f'SELECT {listed} FROM "{table}"'), key=repr)
    conn.close()
    return schema, rows


def test_a_dump_ships_for_the_pinned_mlflow() -> None:
    dump = sqlite_dump_path(installed_version("mlflow"))
    assert dump.is_file(), (
        f"no {dump.name}: run python -m mlfleet.runtime.mlflow_schema --write-sqlite-dump"
    )


def test_the_dump_matches_mlflows_migrations(tmp_path: Path) -> None:
    migrated, loaded = tmp_path / "migrated.db", tmp_path / "loaded.db"
    migrate(f"sqlite:///{migrated}")
    load_sqlite_dump(sqlite_dump_path(installed_version("mlflow")), loaded)

    assert contents(loaded) == contents(migrated)
    schema, rows = contents(loaded)
    assert any(entry[1] == "metrics" for entry in schema)
    assert rows["experiments"] == [(0, "Default", "mlflow-artifacts:/0", "active", "default")]


def test_mlflow_opens_a_loaded_database_as_current(tmp_path: Path) -> None:
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as RegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database = tmp_path / "mlflow.db"
    load_sqlite_dump(sqlite_dump_path(installed_version("mlflow")), database)
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        stamp_default_experiment(conn, 1_700_000_000_123)
    engine.dispose()

    # Both stores refuse a database whose Alembic revision is not MLflow's head.
    store = SqlAlchemyStore(f"sqlite:///{database}", "mlflow-artifacts:/")
    RegistryStore(f"sqlite:///{database}")
    default = store.get_experiment("0")
    assert default.name == "Default"
    assert default.creation_time == default.last_update_time == 1_700_000_000_123
    run = store.create_run("0", "u", 0, [], "r")
    assert store.get_run(run.info.run_id).info.run_name == "r"
    store.engine.dispose()
