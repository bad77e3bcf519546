"""A database away for a moment is told from other failures (state.db.database_unavailable):
callers answer it "retry later" rather than as an internal error."""

from __future__ import annotations

import socket

import psycopg
import pytest
from psycopg import errors
from sqlalchemy import create_engine, exc, text

from mlfleet.state.db import database_unavailable, driver_message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_an_outage_bare_wrapped_or_as_a_cause() -> None:
    port = _closed_port()
    with pytest.raises(psycopg.OperationalError) as bare:
        psycopg.connect(f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2")
    assert database_unavailable(bare.value)

    engine = create_engine(f"postgresql+psycopg://x@127.0.0.1:{port}/x")
    with pytest.raises(exc.OperationalError) as wrapped, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert database_unavailable(wrapped.value)
    # What is logged of it: the driver's message, not the statement SQLAlchemy would quote.
    assert "Background on this error" not in driver_message(wrapped.value)

    try:
        try:
            raise wrapped.value
        except exc.OperationalError as cause:
            raise RuntimeError("recording failed") from cause
    except RuntimeError as later:
        assert database_unavailable(later)


@pytest.mark.parametrize(
    ("error", "away"),
    [
        (errors.AdminShutdown("terminating connection due to administrator command"), True),
        (errors.CrashShutdown("terminating connection because of crash"), True),
        (errors.CannotConnectNow("the database system is starting up"), True),
        (errors.ConnectionFailure("connection failure"), True),
        (errors.DiskFull("could not extend file"), False),
        (errors.UniqueViolation("duplicate key value"), False),
        (errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_which_server_errors_are_an_outage(error: Exception, away: bool) -> None:
    assert database_unavailable(error) is away
    wrapped = exc.DBAPIError.instance("SELECT 1", {}, error, psycopg.Error)
    assert database_unavailable(wrapped) is (away and isinstance(error, psycopg.Error))
