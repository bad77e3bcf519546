"""Telling a write that failed for lack of space from any other failure.

A full disk (or an exhausted quota) shows as ``OSError`` ENOSPC or EDQUOT, as SQLite's
SQLITE_FULL ("database or disk is full") or as PostgreSQL's SQLSTATE 53100 (disk_full), most
often wrapped by SQLAlchemy, MLflow or mlfleet itself: ``storage_full`` looks along the whole
chain of causes. Such a failure is the operator's to fix, not a bug: callers answer it with
the protocol's "unavailable" error (MLflow's 507 ``RESOURCE_EXHAUSTED``, AWS's
``ServiceUnavailable``) rather than an internal error, and log it without a traceback.
"""

from __future__ import annotations

import errno

# SQLite's primary result code for a full database or disk (sqlite3's sqlite_errorcode).
SQLITE_FULL = 13
POSTGRES_DISK_FULL = "53100"
# MLflow's shape of the answer to a write that failed for lack of space: the MLflow client
# does not retry 507, so the user sees the reason at once.
INSUFFICIENT_STORAGE = 507
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
NOTHING_WRITTEN = (
    "The tracking server's storage is full: nothing was written. Retry once space is freed."
)
NOT_RECORDED = (
    "The tracking server's storage is full: the call's audit record or event could not be "
    "stored, so it is not acknowledged (MLflow may have applied it). Retry once space is freed."
)


def storage_full(error: BaseException | None) -> bool:
    """Whether ``error``, or anything that caused it, says the storage is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(error, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        # psycopg 3 names it sqlstate, psycopg2 pgcode.
        if POSTGRES_DISK_FULL in (getattr(error, "sqlstate", None), getattr(error, "pgcode", None)):
            return True
        # SQLAlchemy keeps the driver's error as ``orig`` (and raises from it).
        orig = getattr(error, "orig", None)
        if isinstance(orig, BaseException) and storage_full(orig):
            return True
        error = error.__cause__ or error.__context__
    return False
