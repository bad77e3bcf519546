"""Data events made durable by MLflow's own commit, in the worker serving the write.

A write on an audited server must not be answered before its data event is durable. Recorded
by the daemon, that costs a second commit (and a sync of the disk) at the same moment as
MLflow's, and the daemon's CPU beside MLflow's: on 2 cores, a training loop logging through a
handed-over connection ran at ~92 % of the worker reached directly (README, "Figures").

So the fast lane gives the record to the thread that runs MLflow's handler, and the first
flush of that handler's database session adds it to a table of MLflow's database, inside
MLflow's own transaction: the write and its record become durable together, or neither does.
The lane sends such records to the daemon in batches (every 0.5 s, with the console's request
figures), which appends them to the audit trail in one commit and tells the worker, 64 at a
time, which rows it has; a later MLflow commit deletes those. Rows left when a worker stops (killed
before its last batch went out, say) are sent again when a worker of the server starts, and read
by the daemon itself once the server is stopped or before it is deleted (``left_over_in``); the
daemon appends a record only once.

A handler that commits nothing (a refused or failed write) does not take the record: the lane
then has it recorded by the daemon before answering, as the gateway does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    make_url,
    select,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

# Keyed by a sequence, with no index on the event id: a row rides on MLflow's commit, and each
# B-tree it touches is one more page to write and sync. Deletes scan a table of a few rows.
PENDING = Table(
    "mlfleet_pending_data_events",
    MetaData(),
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("record", Text, nullable=False),
)
# Rows the daemon has are deleted this many at a time, with one of MLflow's commits: a delete
# per write would touch the table's pages in every commit. A backlog is cleared over several.
DELETE_BATCH = 64


def _rows(connection: Connection) -> list[tuple[str, str]]:
    rows = connection.execute(
        select(PENDING.c.event_id, PENDING.c.record).order_by(PENDING.c.seq)
    ).all()
    return [(row.event_id, row.record) for row in rows]


def left_over_in(uri: str) -> list[tuple[str, str]]:
    """The rows in a server's database, read by the daemon once none of its workers runs: a
    worker killed before it sent its last records leaves them there, and a delete drops the
    database."""
    url = make_url(uri)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return []
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not engine.dialect.has_table(connection, PENDING.name):
                return []
            return _rows(connection)
    finally:
        engine.dispose()


class StoredEvents:
    """The worker's side: records waiting for MLflow's commit, and rows the daemon has."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._recorded: list[str] = []
        self._engine: Engine | None = None
        # Per dialect: the SQL, and the parameters' order where they go by position.
        self._inserts: dict[str, tuple[str, list[str] | None]] = {}

    def install(self, engine: Engine) -> None:
        """Create the table in MLflow's database if needed, and follow every session."""
        PENDING.create(engine, checkfirst=True)
        self._engine = engine
        event.listen(Session, "after_flush", self._after_flush)
        event.listen(Session, "after_commit", self._after_commit)
        event.listen(Session, "after_rollback", self._after_rollback)

    def offer(self, event_id: str, record: str) -> None:
        """Give this thread's next MLflow flush the record to store."""
        self._local.pending = (event_id, record)
        self._local.flushed = None
        self._local.durable = False

    def taken(self) -> bool:
        """Whether the record was committed with MLflow's write since ``offer``; clears it."""
        durable = getattr(self._local, "durable", False)
        self._local.pending = self._local.flushed = None
        self._local.durable = False
        return durable

    def recorded(self, event_ids: list[str]) -> None:
        """The daemon has these records: their rows can go with a later commit."""
        with self._lock:
            self._recorded += event_ids

    def left_over(self) -> list[tuple[str, str]]:
        """Rows whose records the daemon may not have (a worker stopped before its ack)."""
        assert self._engine is not None
        with self._engine.connect() as connection:
            return _rows(connection)

    def _after_flush(self, session: Session, _context: Any) -> None:
        pending = getattr(self._local, "pending", None)
        done: list[str] = []
        if len(self._recorded) >= DELETE_BATCH:
            with self._lock:
                done, self._recorded = self._recorded[:DELETE_BATCH], self._recorded[DELETE_BATCH:]
        if pending is None and not done:
            return
        connection = session.connection()
        if pending is not None:
            sql, order = self._insert_for(connection.dialect)
            event_id, record = pending
            row = {"event_id": event_id, "record": record}
            connection.exec_driver_sql(sql, row if order is None else tuple(row[k] for k in order))
            self._local.pending, self._local.flushed = None, (session, pending)
        if done:
            # Lost if this transaction rolls back: those rows are then sent again by the next
            # worker to start, and the daemon knows them already.
            connection.execute(delete(PENDING).where(PENDING.c.event_id.in_(done)))

    def _insert_for(self, dialect: Dialect) -> tuple[str, list[str] | None]:
        """The insert as the database's driver takes it, compiled once: SQLAlchemy's statement
        cache costs a write more than the insert itself."""
        compiled = self._inserts.get(dialect.name)
        if compiled is None:
            statement = insert(PENDING).values(event_id=None, record=None).compile(dialect=dialect)
            compiled = self._inserts[dialect.name] = (str(statement), statement.positiontup)
        return compiled

    def _after_commit(self, session: Session) -> None:
        flushed = getattr(self._local, "flushed", None)
        if flushed is not None and flushed[0] is session:
            self._local.flushed, self._local.durable = None, True

    def _after_rollback(self, session: Session) -> None:
        flushed = getattr(self._local, "flushed", None)
        if flushed is not None and flushed[0] is session:  # the next flush may take it again
            self._local.flushed, self._local.pending = None, flushed[1]
