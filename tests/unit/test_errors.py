"""Refusals are exception classes: each answers the code it is named after, with its status."""

from __future__ import annotations

import json

import pytest

from mlfleet.events.pattern import INVALID_PATTERN, InvalidEventPatternException
from mlfleet.events.store import (
    ConcurrentModificationException,
    LimitExceededException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
)
from mlfleet.iam.store import (
    DeleteConflict,
    EntityAlreadyExists,
    InvalidInput,
    LimitExceeded,
    NoSuchEntity,
)
from mlfleet.iam.sts import AccessDenied
from mlfleet.policy.evaluation import MALFORMED_POLICY, MalformedPolicyDocument
from mlfleet.protocol.errors import (
    AccessDeniedException,
    AwsError,
    ExpiredTokenException,
    InvalidAction,
    NamedAwsError,
    ResourceNotFound,
    ValidationError,
    ValidationException,
)


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (ValidationException, "ValidationException", 400),
        (ValidationError, "ValidationError", 400),
        (InvalidAction, "InvalidAction", 400),
        (ResourceNotFound, "ResourceNotFound", 400),
        (AccessDeniedException, "AccessDeniedException", 403),
        (ExpiredTokenException, "ExpiredTokenException", 403),
        (NoSuchEntity, "NoSuchEntity", 404),
        (EntityAlreadyExists, "EntityAlreadyExists", 409),
        (DeleteConflict, "DeleteConflict", 409),
        (LimitExceeded, "LimitExceeded", 409),
        (InvalidInput, "InvalidInput", 400),
        (AccessDenied, "AccessDenied", 403),
        (MalformedPolicyDocument, MALFORMED_POLICY, 400),
        (ResourceNotFoundException, "ResourceNotFoundException", 400),
        (ResourceAlreadyExistsException, "ResourceAlreadyExistsException", 400),
        (LimitExceededException, "LimitExceededException", 400),
        (ConcurrentModificationException, "ConcurrentModificationException", 400),
        (InvalidEventPatternException, INVALID_PATTERN, 400),
    ],
)
def test_an_error_class_answers_its_code_and_status(
    error: type[NamedAwsError], code: str, status: int
) -> None:
    raised = error("what went wrong")
    assert isinstance(raised, AwsError)
    assert (raised.code, raised.status, raised.message) == (code, status, "what went wrong")
    assert json.loads(raised.body()) == {"__type": code, "Message": "what went wrong"}
