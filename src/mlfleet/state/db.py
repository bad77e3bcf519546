"""Control-plane database: engine creation and Alembic upgrade at start-up, and telling a
database that is away for a moment from any other failure.

On PostgreSQL, the pool tests each connection before handing it out (``pool_pre_ping``), so
connections that died with a restart of the server are replaced rather than used, and a
connection attempt gives up after ``CONNECT_TIMEOUT_SECONDS``. A call that meets the server
restarting, stopped or out of reach fails at once with an error ``database_unavailable`` tells:
callers answer it with their protocol's "retry later" (AWS's ``ServiceUnavailable``, MLflow's
503 with ``Retry-After``), and background work tries again later; service resumes by itself
once the server is back.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# A server that does not answer at all (out of reach, not refusing) must not hold a request,
# or the daemon's event loop, for the system's TCP timeout.
CONNECT_TIMEOUT_SECONDS = 5
# The Retry-After of an answer to a call that met the database away: about what a restart of
# PostgreSQL takes. A client that honours it (the MLflow client) retries at this pace, so its
# retries span this many seconds per retry; one that backs off on its own would wait longer.
RETRY_AFTER_SECONDS = 3
# MLflow's message for a write applied whose audit record or event could not be stored then.
NOT_RECORDED_WHILE_AWAY = (
    "The tracking server is unavailable for a moment: the call could not be recorded, so it is "
    "not acknowledged (MLflow may have applied it). Retry."
)
# PostgreSQL's SQLSTATEs for a server going away or not there yet: admin_shutdown,
# crash_shutdown, cannot_connect_now (starting up, shutting down, in recovery); and class 08,
# connection exceptions.
_SERVER_AWAY = frozenset({"57P01", "57P02", "57P03"})


def database_unavailable(error: BaseException | None) -> bool:
    """Whether ``error``, or anything that caused it, says the database cannot be reached now
    (refused, lost, restarting): a failure that a later try may well not meet. A full disk or a
    refused statement is not one."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, psycopg.OperationalError):
            state = error.sqlstate
            # No SQLSTATE: failed on the client's side (refused, closed, lost in the middle).
            if state is None or state in _SERVER_AWAY or state.startswith("08"):
                return True
        # SQLAlchemy keeps the driver's error as ``orig`` (and raises from it).
        orig = error.orig if isinstance(error, DBAPIError) else None
        error = orig if isinstance(orig, BaseException) else error.__cause__ or error.__context__
    return False


def driver_message(error: BaseException) -> str:
    """What to log of a database error: the driver's message, not SQLAlchemy's, which quotes
    the statement and its parameters."""
    return str(error.orig if isinstance(error, DBAPIError) else error)


def ensure_postgres_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` if it does not exist yet."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def create_control_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL keeps readers unblocked by the reconciler's writes; FULL sync keeps every
            # acknowledged change across a power cut.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return engine
    ensure_postgres_database(url)
    return create_engine(
        _psycopg_url(url),
        pool_pre_ping=True,
        connect_args=_connect_timeout(url),
    )


def _connect_timeout(url: str) -> dict[str, int]:
    """The bounded wait for a connection, unless the URL sets its own."""
    given = "connect_timeout" in make_url(url).query
    return {} if given else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


def _psycopg_url(url: str) -> str:
    # SQLAlchemy's bare postgresql:// means psycopg2; we ship psycopg 3.
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def upgrade(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker[Session]:
    engine = create_control_engine(url)
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
