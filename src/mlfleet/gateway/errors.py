"""The answer every part of the gateway refuses a request with: MLflow's error shape."""

from __future__ import annotations

from aiohttp import web

# How long a client is told to wait before it tries a server that is not serving again: the
# MLflow client (urllib3) honours Retry-After on a 503 and retries.
RETRY_AFTER_SECONDS = 1


def mlflow_error(status: int, code: str, message: str) -> web.Response:
    """``{"error_code": code, "message": message}`` with ``status``; MLflow clients raise
    ``MlflowException(message)`` from it."""
    return web.json_response({"error_code": code, "message": message}, status=status)


def unavailable(message: str, retry_after: int = RETRY_AFTER_SECONDS) -> web.Response:
    """503 with Retry-After: the server will serve again soon (starting, a worker replaced, its
    database restarting)."""
    answer = mlflow_error(503, "TEMPORARILY_UNAVAILABLE", message)
    answer.headers["Retry-After"] = str(retry_after)
    return answer
