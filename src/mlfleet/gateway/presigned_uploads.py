"""``POST /api/2.0/mlflow/artifacts/presigned-upload-url`` for a caller through the ARN header:
the sagemaker-mlflow plugin's upload path (``SAGEMAKER_PRESIGNED_URL_UPLOAD_ENABLED=true``).

MLflow refuses it for proxied (``mlflow-artifacts:``) locations; the gateway answers instead with
a URL of the S3 endpoint for the object ``<run's artifact location>/<path>``, presigned with the
caller's own access key, so the unauthenticated PUT the plugin then sends is the caller's
``s3:PutObject``, authorized and audited when it arrives. The path has passed the gateway's
input checks (no traversal) before this runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as SigningCredentials

from mlfleet.auth.sigv4 import PRESIGNED_MAX_SECONDS
from mlfleet.gateway.authentication import CallerKey
from mlfleet.gateway.errors import mlflow_error
from mlfleet.mlflow_api.s3_view import MLFLOW_PREFIX, PRESIGNED_UPLOAD_PATH, bucket_of

DEFAULT_EXPIRATION = 900

# MLflow path -> MLflow's JSON answer; raises LookupError for a missing run or model.
MlflowGet = Callable[[str], Awaitable[dict[str, Any]]]


def is_upload_request(method: str, upstream_path: str) -> bool:
    return method == "POST" and upstream_path.partition("?")[0] == PRESIGNED_UPLOAD_PATH


async def presigned_upload(
    body: bytes,
    server_name: str,
    key: CallerKey | None,
    get: MlflowGet,
    endpoint_url: str,
    region: str,
) -> web.Response:
    """MLflow's answer shape: ``{"presigned_url": ..., "headers": {}}``, or its error."""
    try:
        asked = json.loads(body or b"{}")
    except ValueError:
        asked = None
    if not isinstance(asked, dict):
        return _invalid("The request body must be a JSON object.")
    run_id, model_id, path = asked.get("run_id"), asked.get("model_id"), asked.get("path")
    if bool(run_id) == bool(model_id):
        return _invalid("Exactly one of run_id and model_id must be provided.")
    if not isinstance(path, str) or not path:
        return _invalid("Missing value for required parameter 'path'.")
    try:
        expiration = int(asked.get("expiration", DEFAULT_EXPIRATION))
    except (TypeError, ValueError):
        expiration = 0
    if not 1 <= expiration <= PRESIGNED_MAX_SECONDS:
        return _invalid(f"'expiration' must be between 1 and {PRESIGNED_MAX_SECONDS} seconds.")
    if key is None:
        return mlflow_error(
            403,
            "PERMISSION_DENIED",
            "A presigned upload URL is signed with the caller's access key: sign the request "
            "with SigV4 or HTTP Basic.",
        )
    try:
        if run_id:
            found = await get(f"/api/2.0/mlflow/runs/get?run_id={quote(str(run_id))}")
            location = str(found["run"]["info"]["artifact_uri"])
        else:
            found = await get(f"/api/2.0/mlflow/logged-models/{quote(str(model_id))}")
            location = str(found["model"]["info"]["artifact_uri"])
    except LookupError:
        what = f"Run '{run_id}'" if run_id else f"Logged model '{model_id}'"
        return mlflow_error(404, "RESOURCE_DOES_NOT_EXIST", f"{what} not found.")
    if not location.startswith(MLFLOW_PREFIX):
        return _invalid(
            f"Presigned upload needs artifacts in the tracking server's store ({MLFLOW_PREFIX}…); "
            f"this one's are at {location}."
        )
    object_key = f"{location.removeprefix(MLFLOW_PREFIX).strip('/')}/{path.lstrip('/')}"
    request = AWSRequest(
        method="PUT",
        url=f"{endpoint_url}/{bucket_of(server_name)}/{quote(object_key)}",
    )
    signer = S3SigV4QueryAuth(
        SigningCredentials(key.key_id, key.secret, key.session_token),
        "s3",
        region,
        expires=expiration,
    )
    signer.add_auth(request)
    return web.json_response({"presigned_url": request.url, "headers": {}})


def _invalid(message: str) -> web.Response:
    return mlflow_error(400, "INVALID_PARAMETER_VALUE", message)
