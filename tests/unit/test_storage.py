"""A write that failed for lack of space is told from any other failure, however wrapped
(common.storage.storage_full): callers answer it 507 or ServiceUnavailable, not as a bug."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from psycopg import errors
from sqlalchemy import exc

from mlfleet.common.storage import storage_full


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # what sqlite3 sets on the errors it raises
    return error


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        _sqlite_error("database or disk is full", 13),
        exc.OperationalError("INSERT …", {}, _sqlite_error("database or disk is full", 13)),
        exc.OperationalError("INSERT …", {}, errors.DiskFull("could not extend file")),
    ],
)
def test_full_storage_is_told_bare_or_wrapped(error: Exception) -> None:
    assert storage_full(error)
    try:
        try:
            raise error
        except Exception as cause:
            raise RuntimeError("the write failed") from cause
    except RuntimeError as later:
        assert storage_full(later)


@pytest.mark.parametrize(
    "error",
    [
        None,
        ValueError("no"),
        OSError(errno.EACCES, "Permission denied"),
        _sqlite_error("database is locked", 5),
        exc.OperationalError("SELECT 1", {}, errors.AdminShutdown("terminating connection")),
    ],
)
def test_other_failures_are_not_full_storage(error: Exception | None) -> None:
    assert not storage_full(error)
