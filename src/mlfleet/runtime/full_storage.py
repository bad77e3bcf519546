"""A worker's answer to an MLflow write that failed for lack of space (mlfleet.common.storage).

Left to MLflow, a full disk under its database is a 500 (or a 503, which clients retry for
minutes) whose message is the failed SQL statement, and a full artifact store is a bare 500
with a traceback in the worker's log. ``answer_full_storage`` makes every such failure, in a
Flask route (the gateway's and the fast lane's) or one of the FastAPI app's own (artifact
uploads), a 507 in MLflow's error shape, ``RESOURCE_EXHAUSTED`` with a message a user can act
on; the MLflow client does not retry it. Nothing is half-written behind it: MLflow's
transaction rolls back (with the data event it carried, runtime.stored_events), and MLflow
writes an uploaded artifact to a hidden file beside its path, renamed into place only once
whole and removed on failure.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_EXHAUSTED
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from starlette.requests import Request
from starlette.responses import Response

from mlfleet.common.storage import INSUFFICIENT_STORAGE, NOTHING_WRITTEN, storage_full

log = logging.getLogger(__name__)


class StorageFull(MlflowException):
    """Raised in place of the database's error: MLflow's handlers pass an MlflowException on
    as it is, with this status."""

    def __init__(self) -> None:
        super().__init__(NOTHING_WRITTEN, error_code=RESOURCE_EXHAUSTED)

    def get_http_status_code(self) -> int:
        return INSUFFICIENT_STORAGE

    def body(self) -> str:
        """The answer's JSON, as MLflow's handlers serialize it."""
        return str(MlflowException.serialize_as_json(self))


def _database_error(context: ExceptionContext) -> None:
    if storage_full(context.original_exception):
        log.warning("an MLflow write failed: %s", context.original_exception)
        raise StorageFull from context.original_exception


def answer_full_storage(flask_app: Any, fastapi_app: Any | None) -> None:
    """Answer writes that fail for lack of space with 507, in each of MLflow's apps."""
    # Every engine of the process: MLflow's tracking and registry stores each have their own.
    event.listen(Engine, "handle_error", _database_error)

    def flask_answer(error: OSError) -> Any:
        if not storage_full(error):
            raise error  # Flask's own 500, as before
        log.warning("an MLflow write failed: %s", error)
        return flask_app.response_class(
            StorageFull().body(),
            status=INSUFFICIENT_STORAGE,
            mimetype="application/json",
        )

    async def fastapi_answer(_request: Request, error: Exception) -> Response:
        if not storage_full(error):
            raise error  # Starlette's own 500, as before
        log.warning("an MLflow write failed: %s", error)
        return Response(
            StorageFull().body(),
            status_code=INSUFFICIENT_STORAGE,
            media_type="application/json",
        )

    flask_app.register_error_handler(OSError, flask_answer)
    if fastapi_app is not None:
        fastapi_app.add_exception_handler(OSError, fastapi_answer)
