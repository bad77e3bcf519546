"""A worker's answer to an MLflow call that met its database away for a moment: restarting,
stopped, or out of reach (mlfleet.state.db.database_unavailable).

Left to MLflow, such a call is answered 503 ``TEMPORARILY_UNAVAILABLE`` whose message is
SQLAlchemy's (the failed statement, the database server's address), with no ``Retry-After``.
``answer_database_outage`` makes it a 503 in MLflow's error shape that tells the caller nothing
of the inside, and gives every 503 of MLflow's Flask app (the gateway's calls and the fast
lane's) a ``Retry-After``: the MLflow client retries it. The worker itself lives on: its pool
tests each connection before use (MLflow's ``pool_pre_ping``), so once the database is back the
next call gets a fresh connection, with no restart of the worker.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext

from mlfleet.state.db import RETRY_AFTER_SECONDS, database_unavailable

log = logging.getLogger(__name__)

AWAY = "The tracking server's database is unavailable for a moment; retry."
SERVICE_UNAVAILABLE = 503


class DatabaseAway(MlflowException):
    """Raised in place of the driver's error: MLflow's handlers answer an MlflowException
    as it is (503 for this code)."""

    def __init__(self) -> None:
        super().__init__(AWAY, error_code=TEMPORARILY_UNAVAILABLE)


def _database_error(context: ExceptionContext) -> None:
    # A connection found dead by the pool's test before use is replaced, not reported.
    if context.is_pre_ping:
        return
    if context.is_disconnect or database_unavailable(context.original_exception):
        log.warning("an MLflow call met its database unavailable: %s", context.original_exception)
        raise DatabaseAway from context.original_exception


def answer_database_outage(flask_app: Any) -> None:
    """Answer calls that meet the database away with a 503 that says only that, and tell the
    client when to retry every 503 the Flask app answers."""
    # Every engine of the process: MLflow's tracking and registry stores each have their own.
    event.listen(Engine, "handle_error", _database_error)

    def retry_after(response: Any) -> Any:
        if response.status_code == SERVICE_UNAVAILABLE:
            response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
        return response

    flask_app.after_request(retry_after)
