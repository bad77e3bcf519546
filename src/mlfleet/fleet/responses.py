"""SageMaker's JSON endpoint (``POST /``): authenticate, parse, dispatch to the fleet, answer.

Parsing and shaping come from botocore's service model (``mlfleet.protocol``); what each
operation does lives in ``FleetService``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.ui_sessions import new_token
from mlfleet.fleet.service import FleetService, local_folder
from mlfleet.iam.authorizer import Authorizer, RequestFacts
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.errors import AwsError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Principal], dict[str, Any]]


class SageMakerApi:
    def __init__(
        self, fleet: FleetService, credentials: Credentials, authorizer: Authorizer
    ) -> None:
        self._protocol = JsonProtocol(
            load_service_model("sagemaker"),
            pattern_overrides={"S3Uri": lambda value: local_folder(value) is not None},
        )
        self._credentials = credentials
        self._authorizer = authorizer
        self._fleet = fleet
        self._handlers: dict[str, Handler] = {
            "CreateMlflowTrackingServer": fleet.create,
            "DescribeMlflowTrackingServer": lambda req, _p: fleet.describe(req),
            "UpdateMlflowTrackingServer": fleet.update,
            "DeleteMlflowTrackingServer": fleet.delete,
            "ListMlflowTrackingServers": lambda req, _p: fleet.list(req),
            "StartMlflowTrackingServer": fleet.start,
            "StopMlflowTrackingServer": fleet.stop,
            "CreatePresignedMlflowTrackingServerUrl": self._presigned_url,
        }

    def _presigned_url(self, req: dict[str, Any], principal: Principal) -> dict[str, Any]:
        token, token_hash = new_token()
        return self._fleet.create_presigned_url(req, principal, token, token_hash)

    def _authorize(
        self, request: web.Request, operation: str, params: dict[str, Any], principal: Principal
    ) -> None:
        """sagemaker:<Operation> on the server's ARN; a create also passes its role."""
        facts = RequestFacts(source_ip=request.remote, secure_transport=request.secure)
        name = params.get("TrackingServerName")
        if name is None:
            self._authorizer.require(principal, f"sagemaker:{operation}", "*", facts)
            return
        arn = self._fleet.arn_for(name)
        if operation == "CreateMlflowTrackingServer":
            tagged = replace(facts, request_tags=params.get("Tags", []))
            self._authorizer.require(principal, f"sagemaker:{operation}", arn, tagged)
            self._authorizer.require(principal, "iam:PassRole", params["RoleArn"], facts)
            return
        tagged = replace(facts, resource_tags=self._fleet.tags_of(name))
        self._authorizer.require(principal, f"sagemaker:{operation}", arn, tagged)

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        request_id = str(uuid.uuid4())
        headers = {"x-amzn-RequestId": request_id}
        try:
            principal = self._credentials.verify_sigv4(
                method=request.method,
                raw_path_qs=request.raw_path,
                headers=request.headers,
                body=body,
                service="sagemaker",
            )
            operation = self._protocol.operation_for_target(request.headers.get("X-Amz-Target"))
            handler = self._handlers.get(operation.name)
            if handler is None:
                raise AwsError(
                    "UnknownOperationException",
                    f"SageMaker.{operation.name} is not implemented by mlfleet.",
                )
            params = self._protocol.parse_input(operation, body)
            self._authorize(request, operation.name, params, principal)
            result = handler(params, principal)
            payload = self._protocol.serialize_output(operation, result)
            return web.Response(
                body=payload, content_type="application/x-amz-json-1.1", headers=headers
            )
        except AwsError as exc:
            return _error_response(exc, headers)
        except Exception:
            log.exception("SageMaker request %s failed", request_id)
            failure = AwsError("InternalFailure", f"Internal error (request {request_id}).", 500)
            return _error_response(failure, headers)


def _error_response(exc: AwsError, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.body(),
        content_type="application/x-amz-json-1.1",
        headers={**headers, "x-amzn-ErrorType": exc.code},
    )
