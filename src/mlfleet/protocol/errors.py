"""Errors answered to clients in the AWS JSON error shape (``{"__type": ..., "Message": ...}``).

A refusal is raised as an exception class named after the AWS error code it produces, with the
HTTP status fixed by the class, so ``raise ValidationException("...")`` reads like the error a
client will see. Classes shared by several services live here; one service's own codes (IAM's
``NoSuchEntity``, EventBridge's ``ResourceNotFoundException``...) subclass :class:`NamedAwsError`
in that service's module (the policy language's ``MalformedPolicyDocument`` in
``mlfleet.policy.evaluation``). :class:`AwsError` itself takes any code and status: it is what
every refusal is caught as, and is built directly only where the code is computed (the denial
code of a protocol, an error rewritten for the wire).
"""

from __future__ import annotations

import json
from typing import ClassVar


class AwsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        return json.dumps({"__type": self.code, "Message": self.message}).encode()


class NamedAwsError(AwsError):
    """An AwsError whose code is the class name and whose status is fixed per class: subclass
    it once per code, setting `http_status` when it is not 400."""

    http_status: ClassVar[int] = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(type(self).__name__, message, self.http_status)


class ValidationException(NamedAwsError):
    """A request the JSON services (SageMaker, EventBridge) refuse as invalid."""


class ValidationError(NamedAwsError):
    """A request the query services (IAM, STS) refuse as invalid."""


class InvalidAction(NamedAwsError):
    """An Action (or Version) the query services do not know."""


class ResourceNotFound(NamedAwsError):
    pass


class ResourceLimitExceeded(NamedAwsError):
    pass


class ConflictException(NamedAwsError):
    pass


class UnknownOperationException(NamedAwsError):
    pass


class SerializationException(NamedAwsError):
    pass


class IncompleteSignatureException(NamedAwsError):
    pass


class AccessDeniedException(NamedAwsError):
    http_status = 403


class MissingAuthenticationToken(NamedAwsError):
    http_status = 403


class UnrecognizedClientException(NamedAwsError):
    http_status = 403


class ExpiredTokenException(NamedAwsError):
    http_status = 403


class InvalidSignatureException(NamedAwsError):
    http_status = 403


class InternalFailure(NamedAwsError):
    http_status = 500


class ServiceUnavailable(NamedAwsError):
    """No instance could answer now (sagemaker-runtime), or the daemon's database is away for
    a moment (any service: AWS SDKs retry it)."""

    http_status = 503


class RequestEntityTooLargeException(NamedAwsError):
    """A body over the daemon's cap; the JSON services' name for it (Lambda's Invoke)."""

    http_status = 413
