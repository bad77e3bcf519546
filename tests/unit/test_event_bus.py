"""Target input (Input, InputPath, InputTransformer) and the delivery signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from mlfleet.events.bus import Event, json_path, target_input
from mlfleet.events.delivery import sign
from mlfleet.events.pattern import parse_pattern
from mlfleet.events.sources import api_call_event, lifecycle_detail_type
from mlfleet.events.store import CompiledRule
from mlfleet.events.targets import connection_headers, retry_limits

ENVELOPE = Event(
    source="aws.sagemaker",
    detail_type="SageMaker Tracking Server Created",
    detail={"TrackingServerName": "team-a", "Size": 2, "Tags": [{"Key": "env"}]},
    resources=["arn:x"],
    time=0,
    id="event-1",
).envelope("123456789012", "us-east-1")
RULE = CompiledRule(
    bus="default",
    name="my-rule",
    arn="arn:aws:events:us-east-1:123456789012:rule/my-rule",
    state="ENABLED",
    event_pattern='{"source": ["aws.sagemaker"]}',
    pattern=parse_pattern('{"source": ["aws.sagemaker"]}'),
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", ENVELOPE),
        ("$.detail.TrackingServerName", "team-a"),
        ("$.detail.Tags[0].Key", "env"),
        ("$.detail.Tags[3].Key", None),
        ("$.detail.missing.deeper", None),
        ("$.resources[0]", "arn:x"),
    ],
)
def test_json_path(path: str, expected: Any) -> None:
    assert json_path(ENVELOPE, path) == expected


def test_without_input_members_the_target_gets_the_event() -> None:
    assert json.loads(target_input({"Id": "t", "Arn": "a"}, ENVELOPE, RULE)) == ENVELOPE


def test_input_and_input_path() -> None:
    assert target_input({"Input": '{"fixed": true}'}, ENVELOPE, RULE) == '{"fixed": true}'
    assert json.loads(target_input({"InputPath": "$.detail.Size"}, ENVELOPE, RULE)) == 2


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{"name": "<name>", "size": <size>}', {"name": "team-a", "size": 2}),
        ('{"line": "<name> has <size> workers"}', {"line": "team-a has 2 workers"}),
        ('{"tags": <tags>}', {"tags": [{"Key": "env"}]}),
        ('{"rule": "<aws.events.rule-name>"}', {"rule": "my-rule"}),
        ('{"whole": <aws.events.event>}', {"whole": ENVELOPE}),
        ('"<name> is up"', "team-a is up"),
        ('{"unknown": "<nope>"}', {"unknown": "<nope>"}),
    ],
)
def test_input_transformer(template: str, expected: Any) -> None:
    target = {
        "InputTransformer": {
            "InputPathsMap": {
                "name": "$.detail.TrackingServerName",
                "size": "$.detail.Size",
                "tags": "$.detail.Tags",
            },
            "InputTemplate": template,
        }
    }
    assert json.loads(target_input(target, ENVELOPE, RULE)) == expected


def test_signature_is_an_hmac_of_time_and_body() -> None:
    header = sign(b"key", b'{"a":1}', 1700000000)
    expected = hmac.new(b"key", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_connection_headers_and_signing_secret() -> None:
    headers, secret = connection_headers(
        "API_KEY",
        {
            "ApiKeyAuthParameters": {"ApiKeyName": "x-key", "ApiKeyValue": "v"},
            "InvocationHttpParameters": {"HeaderParameters": [{"Key": "X-Team", "Value": "a"}]},
        },
    )
    assert headers == {"x-key": "v", "X-Team": "a"} and secret == b"v"
    headers, secret = connection_headers(
        "BASIC", {"BasicAuthParameters": {"Username": "u", "Password": "p"}}
    )
    assert headers == {"Authorization": "Basic dTpw"} and secret == b"p"


def test_retry_limits_default_to_eventbridges() -> None:
    assert retry_limits(None) == (185, 86400.0)
    assert retry_limits({"RetryPolicy": {"MaximumRetryAttempts": 0}}) == (0, 86400.0)


@pytest.mark.parametrize(
    ("status", "detail_type"),
    [
        ("Created", "SageMaker Tracking Server Created"),
        ("CreateFailed", "SageMaker Tracking Server Create Failed"),
        ("MaintenanceInProgress", "SageMaker Tracking Server Maintenance In Progress"),
        ("Deleted", "SageMaker Tracking Server Deleted"),
    ],
)
def test_lifecycle_detail_types(status: str, detail_type: str) -> None:
    assert lifecycle_detail_type(status) == detail_type


def test_only_calls_that_change_something_become_api_call_events() -> None:
    record = {"eventSource": "iam.amazonaws.com", "readOnly": False, "resources": []}
    event = api_call_event(record)
    assert event is not None and event.source == "aws.iam"
    assert event.detail_type == "AWS API Call via CloudTrail"
    assert api_call_event({**record, "readOnly": True}) is None
