"""Errors answered to clients in the AWS JSON error shape (``{"__type": ..., "Message": ...}``).

Raise :class:`AwsError` directly for a one-off code, or one of the subclasses below: each is
named after the AWS error code it produces, so ``ValidationException("...")`` reads like the
error a client will see.
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


class _NamedAwsError(AwsError):
    """An AwsError whose code is the class name and whose status is fixed per class."""

    http_status: ClassVar[int] = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(type(self).__name__, message, self.http_status)


class ValidationException(_NamedAwsError):
    pass


class ResourceNotFound(_NamedAwsError):
    pass


class ResourceLimitExceeded(_NamedAwsError):
    pass


class ConflictException(_NamedAwsError):
    pass


class UnknownOperationException(_NamedAwsError):
    pass


class SerializationException(_NamedAwsError):
    pass


class IncompleteSignatureException(_NamedAwsError):
    pass


class AccessDeniedException(_NamedAwsError):
    pass


class MissingAuthenticationToken(_NamedAwsError):
    http_status = 403


class UnrecognizedClientException(_NamedAwsError):
    http_status = 403


class InvalidSignatureException(_NamedAwsError):
    http_status = 403


class InternalFailure(_NamedAwsError):
    http_status = 500
