"""One AWS service at ``POST /``: authenticate, parse, authorize, run, answer, and audit.

Every control-plane service (SageMaker, IAM, STS, CloudTrail) goes through the same steps; only
the wire format differs (:class:`JsonEndpoint` for AWS JSON 1.1, :class:`QueryEndpoint` for the
query protocol). A service supplies its operations as declared in
:mod:`mlfleet.api.operations`; authorization and audit are the :class:`~mlfleet.api.pipeline.
Pipeline`'s, shared with every other entrance. Each call, allowed or refused, is handed to the
audit trail before its answer leaves; a call the trail could not take is not acknowledged: its
answer is the failure instead. A database away for a moment (``state.db.database_unavailable``)
is answered ``ServiceUnavailable`` (503, ``Retry-After``), which AWS SDKs retry, never as an
internal error.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from aiohttp import web
from botocore.model import OperationModel, Shape

from mlfleet.api.operations import Bound, Call
from mlfleet.api.pipeline import ApiCall, Pipeline
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.sigv4 import claimed_credential
from mlfleet.common.storage import storage_full
from mlfleet.policy.authorizer import RequestFacts
from mlfleet.protocol.awsjson import JsonProtocol
from mlfleet.protocol.awsquery import QueryProtocol, parse_form
from mlfleet.protocol.errors import (
    AwsError,
    InternalFailure,
    InvalidAction,
    RequestEntityTooLargeException,
    ServiceUnavailable,
    UnknownOperationException,
)
from mlfleet.protocol.sensitive import error_without_secrets, without_secrets
from mlfleet.state.db import RETRY_AFTER_SECONDS, database_unavailable, driver_message

log = logging.getLogger(__name__)


async def read_body(request: web.Request) -> bytes:
    """The whole body; one over the daemon's cap is the caller's error, in its protocol."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestEntityTooLargeException(
            f"Request body exceeds the limit of {request.client_max_size} bytes."
        ) from None


class Endpoint(ABC):
    """The steps common to every protocol; subclasses read and write the wire format."""

    def __init__(
        self,
        service_name: str,
        credentials: Credentials,
        pipeline: Pipeline,
        operations: Mapping[str, Bound],
        accepted_regions: Sequence[str],
        denied_code: str,
    ) -> None:
        self.service_name = service_name
        self._credentials = credentials
        self._pipeline = pipeline
        self._operations = operations
        self._regions = tuple(accepted_regions)
        self._denied_code = denied_code

    async def handle(self, request: web.Request, signed_region: str) -> web.Response:
        claimed = claimed_credential(request.headers.get("Authorization", ""))
        call = ApiCall.begin(
            self.service_name,
            source_ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
            # Who the caller claims to be, recorded even when the signature then fails.
            access_key_id=claimed.access_key_id if claimed else None,
        )
        model: OperationModel | None = None
        try:
            body = await read_body(request)
            principal = self._credentials.verify_sigv4(
                request,
                body,
                service=self.service_name,
                region=signed_region if signed_region in self._regions else self._regions[0],
            )
            call.principal, call.access_key_id = principal, principal.access_key_id
            model = self.operation_model(request, body)
            facts = RequestFacts(source_ip=request.remote, secure_transport=request.secure)
            result = self._execute(call, model, lambda: self.parse(model, body), principal, facts)
            response = self.answer(model, result, call.request_id)
        except Exception as exc:
            call.error = self._failure(call, exc)
            response = self.refuse(call.error, call.request_id)
        finally:
            unrecorded = self._finish(call, model)
        return response if unrecorded is None else self.refuse(unrecorded, call.request_id)

    def invoke(
        self,
        principal: Principal,
        operation_name: str,
        document: dict[str, Any],
        *,
        source_ip: str | None,
        user_agent: str,
        secure_transport: bool = False,
    ) -> dict[str, Any]:
        """Run one operation for an already authenticated principal (the web console's path).

        Everything after authentication is the same as for a signed request: the parameters
        are validated against the API model, the call is authorized and audited, and a refusal
        raises the :class:`AwsError` a client would have received.
        """
        call = ApiCall.begin(
            self.service_name, source_ip=source_ip, user_agent=user_agent, principal=principal
        )
        model: OperationModel | None = None
        result: dict[str, Any] = {}
        try:
            model = self.model_for(operation_name)
            checked = model
            facts = RequestFacts(source_ip=source_ip, secure_transport=secure_transport)
            result = self._execute(
                call, model, lambda: self.validate(checked, document), principal, facts
            )
        except Exception as exc:
            call.error = self._failure(call, exc)
        finally:
            unrecorded = self._finish(call, model)
        if unrecorded is not None:
            raise unrecorded
        if call.error is not None:
            raise call.error
        return result

    def _finish(self, call: ApiCall, model: OperationModel | None) -> AwsError | None:
        """Hand the call's record to the audit trail; if it could not take it, the error to
        answer instead (a call not recorded is not acknowledged)."""
        try:
            self._pipeline.finish(_without_secrets(call, model))
        except Exception as exc:
            return self._failure(call, exc)
        return None

    def _failure(self, call: ApiCall, exc: Exception) -> AwsError:
        """The error a failed call answers: its own, ServiceUnavailable while the database is
        away or the storage full, or (a bug) a logged InternalFailure."""
        if isinstance(exc, AwsError):
            return self.wire_error(exc)
        if database_unavailable(exc):
            log.warning(
                "%s request %s: the database is unavailable: %s",
                self.service_name,
                call.request_id,
                driver_message(exc),
            )
            return self.wire_error(
                ServiceUnavailable(
                    f"The service is unavailable for a moment; retry (request {call.request_id})."
                )
            )
        if storage_full(exc):
            log.warning("%s request %s: the storage is full", self.service_name, call.request_id)
            return self.wire_error(
                ServiceUnavailable(
                    "The service's storage is full, so the request could not be completed; "
                    f"retry once space is freed (request {call.request_id})."
                )
            )
        log.error("%s request %s failed", self.service_name, call.request_id, exc_info=exc)
        return self.wire_error(InternalFailure(f"Internal error (request {call.request_id})."))

    def _execute(
        self,
        call: ApiCall,
        model: OperationModel,
        parse: Callable[[], dict[str, Any]],
        principal: Principal,
        facts: RequestFacts,
    ) -> dict[str, Any]:
        call.operation = model.name
        operation = self._operations.get(model.name)
        if operation is None:
            raise self.not_implemented(model.name)
        request = Call(model.name, parse(), principal, facts)
        self._pipeline.authorize(call, operation, request, self._denied_code)
        result: dict[str, Any] = operation.run(request)
        call.response = result
        return result

    @abstractmethod
    def operation_model(self, request: web.Request, body: bytes) -> OperationModel: ...

    @abstractmethod
    def parse(self, model: OperationModel, body: bytes) -> dict[str, Any]: ...

    @abstractmethod
    def model_for(self, operation_name: str) -> OperationModel:
        """The named operation; an unknown name is refused as the wire protocol would."""

    @abstractmethod
    def validate(self, model: OperationModel, document: dict[str, Any]) -> dict[str, Any]:
        """Parameters already decoded into JSON types, checked against the operation's input."""

    @abstractmethod
    def answer(
        self, model: OperationModel, result: dict[str, Any], request_id: str
    ) -> web.Response: ...

    def wire_error(self, error: AwsError) -> AwsError:
        """The error as this protocol names it."""
        return error

    @abstractmethod
    def refuse(self, error: AwsError, request_id: str) -> web.Response: ...

    @abstractmethod
    def not_implemented(self, name: str) -> AwsError: ...


class JsonEndpoint(Endpoint):
    """AWS JSON 1.1: ``X-Amz-Target: <prefix>.<Operation>``, JSON in and out."""

    def __init__(self, protocol: JsonProtocol, **kwargs: Any) -> None:
        super().__init__(denied_code="AccessDeniedException", **kwargs)
        self._protocol = protocol

    def operation_model(self, request: web.Request, body: bytes) -> OperationModel:
        return self._protocol.operation_for_target(request.headers.get("X-Amz-Target"))

    def parse(self, model: OperationModel, body: bytes) -> dict[str, Any]:
        return self._protocol.parse_input(model, body)

    def model_for(self, operation_name: str) -> OperationModel:
        return self._protocol.operation_named(operation_name)

    def validate(self, model: OperationModel, document: dict[str, Any]) -> dict[str, Any]:
        return self._protocol.validate_input(model, document)

    def answer(
        self, model: OperationModel, result: dict[str, Any], request_id: str
    ) -> web.Response:
        return web.Response(
            body=self._protocol.serialize_output(model, result),
            content_type="application/x-amz-json-1.1",
            headers={"x-amzn-RequestId": request_id},
        )

    def refuse(self, error: AwsError, request_id: str) -> web.Response:
        return web.Response(
            status=error.status,
            body=error.body(),
            content_type="application/x-amz-json-1.1",
            headers={
                "x-amzn-RequestId": request_id,
                "x-amzn-ErrorType": error.code,
                **_retry_after(error),
            },
        )

    def not_implemented(self, name: str) -> AwsError:
        return UnknownOperationException(
            f"{self.service_name}:{name} is not implemented by mlfleet."
        )


# Query services answer these faults, found before the operation is known, with their own codes.
_QUERY_CODES = {
    "UnrecognizedClientException": "InvalidClientTokenId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "ExpiredTokenException": "ExpiredToken",
    "InternalFailure": "ServiceFailure",
    RequestEntityTooLargeException.__name__: "RequestEntityTooLarge",
}
_POLICY_DOCUMENT_SHAPE = "policyDocumentType"


class QueryEndpoint(Endpoint):
    """The query protocol: a form with ``Action=`` in, XML out."""

    def __init__(self, protocol: QueryProtocol, **kwargs: Any) -> None:
        super().__init__(denied_code="AccessDenied", **kwargs)
        self._protocol = protocol

    def operation_model(self, request: web.Request, body: bytes) -> OperationModel:
        return self._protocol.operation_for(parse_form(body))

    def parse(self, model: OperationModel, body: bytes) -> dict[str, Any]:
        return self._protocol.parse_input(model, parse_form(body))

    def model_for(self, operation_name: str) -> OperationModel:
        return self._protocol.operation_named(operation_name)

    def validate(self, model: OperationModel, document: dict[str, Any]) -> dict[str, Any]:
        return self._protocol.validate_input(model, document)

    def answer(
        self, model: OperationModel, result: dict[str, Any], request_id: str
    ) -> web.Response:
        if model.output_shape is not None:
            result = _quote_policy_documents(model.output_shape, result)
        payload = self._protocol.serialize_output(model, result, request_id)
        return web.Response(body=payload, content_type="text/xml")

    def wire_error(self, error: AwsError) -> AwsError:
        code = _QUERY_CODES.get(error.code, error.code)
        return AwsError(code, error.message, error.status)

    def refuse(self, error: AwsError, request_id: str) -> web.Response:
        return web.Response(
            status=self._protocol.error_status(error),
            body=self._protocol.error_body(error, request_id),
            content_type="text/xml",
            headers=_retry_after(error),
        )

    def not_implemented(self, name: str) -> AwsError:
        return InvalidAction(f"{self.service_name}:{name} is not implemented by mlfleet.")


def _retry_after(error: AwsError) -> dict[str, str]:
    """When to try again, for a ServiceUnavailable (told by its status: the query protocol's
    ``wire_error`` keeps the code and status, not the class)."""
    if error.status != ServiceUnavailable.http_status:
        return {}
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


def _without_secrets(call: ApiCall, model: OperationModel | None) -> ApiCall:
    """The call as the audit trail may keep it: sensitive members hidden (mlfleet.protocol)."""
    if model is None:
        return call
    inputs, outputs = model.input_shape, model.output_shape
    return replace(
        call,
        parameters=(
            without_secrets(inputs, call.parameters)
            if inputs is not None and call.parameters is not None
            else call.parameters
        ),
        response=(
            without_secrets(outputs, call.response)
            if outputs is not None and call.response is not None
            else call.response
        ),
        error=(
            error_without_secrets(call.error, inputs)
            if inputs is not None and call.error is not None
            else call.error
        ),
    )


def _quote_policy_documents(shape: Shape, data: Any) -> Any:
    """IAM returns policy documents URL-encoded (botocore decodes them back into dicts)."""
    if shape.type_name == "structure" and isinstance(data, Mapping):
        return {
            name: (
                quote(value, safe="")
                if member.name == _POLICY_DOCUMENT_SHAPE and isinstance(value, str)
                else _quote_policy_documents(member, value)
            )
            for name, member in shape.members.items()
            if (value := data.get(name)) is not None
        }
    if shape.type_name == "list" and isinstance(data, list):
        return [_quote_policy_documents(shape.member, item) for item in data]
    return data
