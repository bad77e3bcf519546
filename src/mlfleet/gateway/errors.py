"""The answer every part of the gateway refuses a request with: MLflow's error shape."""

from __future__ import annotations

from aiohttp import web


def mlflow_error(status: int, code: str, message: str) -> web.Response:
    """``{"error_code": code, "message": message}`` with ``status``; MLflow clients raise
    ``MlflowException(message)`` from it."""
    return web.json_response({"error_code": code, "message": message}, status=status)
