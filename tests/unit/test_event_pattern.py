"""EventBridge event patterns (mlfleet.events.pattern).

The first tables replay EventBridge's documented examples verbatim, each tagged with the section
of the Amazon EventBridge User Guide (or of the aws/event-ruler README, the library EventBridge
runs) it comes from. Then every operator matching and not, array and nested-field semantics,
``$or``, and every refusal, asserted on its error code and on its reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mlfleet.events.pattern import MAX_PATTERN_LENGTH, EventPattern, parse_pattern
from mlfleet.protocol.errors import AwsError

ABSENT = object()  # the field is not in the event at all


def matches(pattern: dict[str, Any] | str, event: dict[str, Any]) -> bool:
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    return parse_pattern(text).matches(event)


def refusal(text: str, **kwargs: Any) -> AwsError:
    with pytest.raises(AwsError) as caught:
        parse_pattern(text, **kwargs)
    error = caught.value
    assert error.code == "InvalidEventPatternException"
    assert error.status == 400
    assert error.message.startswith("Event pattern is not valid. Reason: ")
    return error


# --- events from the user guide ---------------------------------------------------------------

# "Amazon EventBridge event patterns": the EC2 event the page opens with.
EC2_TERMINATED = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"},
}

# "Amazon EventBridge event patterns" > "Field matching", and "Matching null values and empty
# strings in Amazon EventBridge event patterns".
AUTOSCALING_LAUNCH = {
    "version": "0",
    "id": "3e3c153a-8339-4e30-8c35-687ebef853fe",
    "detail-type": "EC2 Instance Launch Successful",
    "source": "aws.autoscaling",
    "account": "123456789012",
    "time": "2015-11-11T21:31:47Z",
    "region": "us-east-1",
    "resources": [],
    "detail": {"eventVersion": "", "responseElements": None},
}

# "Amazon EventBridge event patterns" > "Value matching": the (truncated) Macie Classic event.
MACIE_ALERT = {
    "version": "0",
    "id": "3e355723-fca9-4de3-9fd7-154c289d6b59",
    "detail-type": "Macie Alert",
    "source": "aws.macie",
    "account": "123456789012",
    "time": "2017-04-24T22:28:49Z",
    "region": "us-east-1",
    "resources": [
        "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id/alert/alert_id",
        "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id",
    ],
    "detail": {
        "notification-type": "ALERT_CREATED",
        "name": "Scanning bucket policies",
        "tags": ["Custom_Alert", "Insider"],
        "url": "https://lb00.us-east-1.macie.aws.amazon.com/111122223333/posts/alert_id",
        "alert-arn": "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id/alert/alert_",
        "risk-score": 80,
        "trigger": {
            "rule-arn": "arn:aws:macie:us-east-1:123456789012:trigger/trigger_id",
            "alert-type": "basic",
            "created-at": "2017-01-02 19:54:00.644000",
            "description": "Alerting on failed enumeration of large number of bucket policies",
            "risk": 8,
        },
        "created-at": "2017-04-18T00:21:12.059000",
    },
}

# "Content filtering in Amazon EventBridge event patterns" > "Exists matching".
EC2_PENDING = {
    "version": "0",
    "id": "7bf73129-1428-4cd3-a780-95db273d1602",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2015-11-11T21:29:54Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
    "detail": {"instance-id": "i-abcd1111", "state": "pending"},
}
EXISTS_WITHOUT_STATE = {
    "detail-type": ["EC2 Instance State-change Notification"],
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341"],
    "detail": {"c-count": {"c1": 100}},
}
# The same section in the earlier guide, for exists:false ("c-count isn't a leaf node").
EXISTS_WITHOUT_C_COUNT = {
    "detail-type": ["EC2 Instance State-change Notification"],
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341"],
    "detail": {"state": ["initializing", "running"]},
}
EXISTS_C_COUNT_OBJECT = {
    "detail-type": ["EC2 Instance State-change Notification"],
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341"],
    "detail": {"state": ["initializing", "running"], "c-count": {"c1": 100}},
}

# The aws/event-ruler README, "Ruler by Example": the event its content-filtering examples match.
RULER_EVENT = {
    "version": "0",
    "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "012345679012",
    "time": "2017-10-02T16:24:49Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
    "detail": {
        "c-count": 5,
        "d-count": 3,
        "x-limit": 301.8,
        "source-ip": "10.0.0.33",
        "instance-id": "i-000000aaaaaa00000",
        "state": "running",
    },
}


def with_detail(event: dict[str, Any], **detail: Any) -> dict[str, Any]:
    return {**event, "detail": {**event["detail"], **detail}}


DOC_EXAMPLES = [
    # "Amazon EventBridge event patterns": all EC2 instance-termination events.
    pytest.param(
        {
            "source": ["aws.ec2"],
            "detail-type": ["EC2 Instance State-change Notification"],
            "detail": {"state": ["terminated"]},
        },
        EC2_TERMINATED,
        True,
        id="guide-ec2-terminated",
    ),
    pytest.param(
        {
            "source": ["aws.ec2"],
            "detail-type": ["EC2 Instance State-change Notification"],
            "detail": {"state": ["terminated"]},
        },
        EC2_PENDING,
        False,
        id="guide-ec2-terminated-not-pending",
    ),
    # "... event patterns" > "Match Values": EC2 or Fargate.
    pytest.param({"source": ["aws.ec2", "aws.fargate"]}, EC2_TERMINATED, True, id="guide-or-ec2"),
    pytest.param(
        {"source": ["aws.ec2", "aws.fargate"]}, MACIE_ALERT, False, id="guide-or-not-macie"
    ),
    # "... event patterns" > "Field matching".
    pytest.param(
        {
            "source": ["aws.autoscaling"],
            "detail-type": ["EC2 Instance Launch Successful"],
            "detail": {"responseElements": [None]},
        },
        AUTOSCALING_LAUNCH,
        True,
        id="guide-field-null",
    ),
    # "... event patterns" > "Value matching": risk score 80 and trigger risk 8.
    pytest.param(
        {
            "source": ["aws.macie"],
            "detail-type": ["Macie Alert"],
            "detail": {"risk-score": [80], "trigger": {"risk": [8]}},
        },
        MACIE_ALERT,
        True,
        id="guide-value-nested",
    ),
    pytest.param(
        {
            "source": ["aws.macie"],
            "detail-type": ["Macie Alert"],
            "detail": {"risk-score": [80], "trigger": {"risk": [8]}},
        },
        with_detail(MACIE_ALERT, trigger={"risk": 7}),
        False,
        id="guide-value-nested-other-risk",
    ),
    # "Matching null values and empty strings": null and "" are not interchangeable.
    pytest.param(
        {"detail": {"eventVersion": [""]}}, AUTOSCALING_LAUNCH, True, id="guide-empty-string"
    ),
    pytest.param(
        {"detail": {"responseElements": [None]}}, AUTOSCALING_LAUNCH, True, id="guide-null"
    ),
    pytest.param(
        {"detail": {"responseElements": [""]}}, AUTOSCALING_LAUNCH, False, id="guide-null-not-empty"
    ),
    pytest.param(
        {"detail": {"eventVersion": [None]}}, AUTOSCALING_LAUNCH, False, id="guide-empty-not-null"
    ),
    # "Arrays in Amazon EventBridge event patterns": a non-empty intersection matches.
    pytest.param(
        {
            "resources": [
                "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
                "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
                "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f",
            ]
        },
        {
            "resources": [
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-"
                "b893-d5978ed4a025:autoScalingGroupName/ASGTerminate",
                "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
            ]
        },
        True,
        id="guide-arrays-intersection",
    ),
    pytest.param(
        {"resources": ["arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f"]},
        {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]},
        False,
        id="guide-arrays-disjoint",
    ),
    # "Content filtering" > "Prefix matching".
    pytest.param(
        {"time": [{"prefix": "2017-10-02"}]},
        {"time": "2017-10-02T18:43:48Z"},
        True,
        id="filtering-prefix",
    ),
    pytest.param(
        {"time": [{"prefix": "2017-10-02"}]},
        {"time": "2017-10-03T18:43:48Z"},
        False,
        id="filtering-prefix-other-day",
    ),
    # "Content filtering" > "Prefix matching while ignoring case".
    pytest.param(
        {"detail": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}},
        {"detail": {"service": "EVENTBRIDGE"}},
        True,
        id="filtering-prefix-ignore-case",
    ),
    # "Content filtering" > "Suffix matching" and "... while ignoring case".
    pytest.param(
        {"FileName": [{"suffix": ".png"}]}, {"FileName": "image.png"}, True, id="filtering-suffix"
    ),
    pytest.param(
        {"FileName": [{"suffix": ".png"}]}, {"FileName": "image.PNG"}, False, id="suffix-has-case"
    ),
    pytest.param(
        {"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}},
        {"detail": {"FileName": "IMAGE.PNG"}},
        True,
        id="filtering-suffix-ignore-case",
    ),
    # "Content filtering" > "Anything-but matching": strings, numbers, lists, a prefix.
    pytest.param(
        {"detail": {"state": [{"anything-but": "initializing"}]}},
        RULER_EVENT,
        True,
        id="filtering-anything-but-string",
    ),
    pytest.param(
        {"detail": {"state": [{"anything-but": "initializing"}]}},
        with_detail(RULER_EVENT, state="initializing"),
        False,
        id="filtering-anything-but-string-refused",
    ),
    pytest.param(
        {"detail": {"x-limit": [{"anything-but": 123}]}},
        RULER_EVENT,
        True,
        id="filtering-anything-but-number",
    ),
    pytest.param(
        {"detail": {"x-limit": [{"anything-but": 123}]}},
        with_detail(RULER_EVENT, **{"x-limit": 123}),
        False,
        id="filtering-anything-but-number-refused",
    ),
    pytest.param(
        {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        RULER_EVENT,
        True,
        id="filtering-anything-but-strings",
    ),
    pytest.param(
        {"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        with_detail(RULER_EVENT, state="overloaded"),
        False,
        id="filtering-anything-but-strings-refused",
    ),
    pytest.param(
        {"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}},
        RULER_EVENT,
        True,
        id="filtering-anything-but-numbers",
    ),
    pytest.param(
        {"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}},
        with_detail(RULER_EVENT, **{"x-limit": 200}),
        False,
        id="filtering-anything-but-numbers-refused",
    ),
    pytest.param(
        {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}},
        RULER_EVENT,
        True,
        id="filtering-anything-but-prefix",
    ),
    pytest.param(
        {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}},
        with_detail(RULER_EVENT, state="initializing"),
        False,
        id="filtering-anything-but-prefix-refused",
    ),
    # "Content filtering" > "Numeric matching": true for all fields.
    pytest.param(
        {
            "detail": {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 3.018e2]}],
            }
        },
        RULER_EVENT,
        True,
        id="filtering-numeric",
    ),
    pytest.param(
        {
            "detail": {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 3.018e2]}],
            }
        },
        with_detail(RULER_EVENT, **{"c-count": 6}),
        False,
        id="filtering-numeric-one-field-out",
    ),
    # "Content filtering" > "IP address matching".
    pytest.param(
        {"detail": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}},
        {"detail": {"sourceIPAddress": "10.0.0.255"}},
        True,
        id="filtering-cidr",
    ),
    pytest.param(
        {"detail": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}},
        {"detail": {"sourceIPAddress": "10.0.1.0"}},
        False,
        id="filtering-cidr-outside",
    ),
    # "Content filtering" > "Exists matching".
    pytest.param(
        {"detail": {"state": [{"exists": True}]}}, EC2_PENDING, True, id="filtering-exists"
    ),
    pytest.param(
        {"detail": {"state": [{"exists": True}]}},
        EXISTS_WITHOUT_STATE,
        False,
        id="filtering-exists-missing",
    ),
    pytest.param(
        {"detail": {"c-count": [{"exists": False}]}},
        EXISTS_WITHOUT_C_COUNT,
        True,
        id="filtering-not-exists",
    ),
    pytest.param(
        {"detail": {"c-count": [{"exists": False}]}},
        EXISTS_C_COUNT_OBJECT,
        True,
        id="filtering-not-exists-not-a-leaf",
    ),
    pytest.param(
        {"detail": {"c-count": [{"exists": False}]}},
        RULER_EVENT,
        False,
        id="filtering-not-exists-present",
    ),
    # "Content filtering" > "Complex example with multiple matching" (with the README's cidr).
    pytest.param(
        {
            "time": [{"prefix": "2017-10-02"}],
            "detail": {
                "state": [{"anything-but": "initializing"}],
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"anything-but": [100, 200, 300]}],
                "source-ip": [{"cidr": "10.0.0.0/8"}],
            },
        },
        RULER_EVENT,
        True,
        id="filtering-complex",
    ),
    pytest.param(
        {
            "time": [{"prefix": "2017-10-02"}],
            "detail": {
                "state": [{"anything-but": "initializing"}],
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"anything-but": [100, 200, 300]}],
                "source-ip": [{"cidr": "10.0.0.0/8"}],
            },
        },
        with_detail(RULER_EVENT, **{"source-ip": "192.168.0.1"}),
        False,
        id="filtering-complex-other-network",
    ),
    # "Comparison operators for use in event patterns": the table's rule syntax.
    pytest.param({"UserID": [None]}, {"UserID": None}, True, id="operators-null"),
    pytest.param({"LastName": [""]}, {"LastName": ""}, True, id="operators-empty"),
    pytest.param({"Name": ["Alice"]}, {"Name": "Alice"}, True, id="operators-equals"),
    pytest.param({"Name": ["Alice"]}, {"Name": "alice"}, False, id="operators-equals-case"),
    pytest.param(
        {"Name": [{"equals-ignore-case": "alice"}]},
        {"Name": "Alice"},
        True,
        id="operators-equals-ignore-case",
    ),
    pytest.param(
        {"Location": ["New York"], "Day": ["Monday"]},
        {"Location": "New York", "Day": "Monday"},
        True,
        id="operators-and",
    ),
    pytest.param(
        {"Location": ["New York"], "Day": ["Monday"]},
        {"Location": "New York", "Day": "Tuesday"},
        False,
        id="operators-and-one-fails",
    ),
    pytest.param(
        {"PaymentType": ["Credit", "Debit"]}, {"PaymentType": "Debit"}, True, id="operators-or"
    ),
    pytest.param(
        {"Weather": [{"anything-but": ["Raining"]}]},
        {"Weather": "Sunny"},
        True,
        id="operators-not",
    ),
    pytest.param(
        {"Weather": [{"anything-but": ["Raining"]}]},
        {"Weather": "Raining"},
        False,
        id="operators-not-refused",
    ),
    pytest.param(
        {"Price": [{"numeric": ["=", 100]}]}, {"Price": 100}, True, id="operators-numeric-equals"
    ),
    pytest.param(
        {"Price": [{"numeric": [">", 10, "<=", 20]}]},
        {"Price": 20},
        True,
        id="operators-numeric-range",
    ),
    pytest.param(
        {"Price": [{"numeric": [">", 10, "<=", 20]}]},
        {"Price": 10},
        False,
        id="operators-numeric-range-open-bottom",
    ),
    pytest.param(
        {"ProductName": [{"exists": True}]},
        {"ProductName": "Widget"},
        True,
        id="operators-exists",
    ),
    pytest.param(
        {"ProductName": [{"exists": False}]}, {"Price": 1}, True, id="operators-does-not-exist"
    ),
    pytest.param({"Region": [{"prefix": "us-"}]}, {"Region": "us-east-1"}, True, id="op-prefix"),
    pytest.param(
        {"Region": [{"anything-but": {"prefix": "us-"}}]},
        {"Region": "us-east-1"},
        False,
        id="operators-anything-but-prefix",
    ),
    pytest.param(
        {"FileName": [{"anything-but": {"suffix": ".png"}}]},
        {"FileName": "notes.txt"},
        True,
        id="operators-anything-but-suffix",
    ),
    pytest.param(
        {"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]},
        {"state": "INITIALIZING"},
        False,
        id="operators-anything-but-ignore-case",
    ),
    pytest.param(
        {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]},
        {"FilePath": "/usr/lib/libc.so"},
        False,
        id="operators-anything-but-wildcard",
    ),
    pytest.param(
        {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]},
        {"FilePath": "/usr/bin/env"},
        True,
        id="operators-anything-but-wildcard-other",
    ),
    pytest.param(
        {"service": [{"prefix": {"equals-ignore-case": "eventb"}}]},
        {"service": "EventBridge"},
        True,
        id="operators-prefix-ignore-case",
    ),
    pytest.param(
        {"service": [{"suffix": {"equals-ignore-case": "tbridge"}}]},
        {"service": "EVENTBRIDGE"},
        True,
        id="operators-suffix-ignore-case",
    ),
    # aws/event-ruler README: suffix, equals-ignore-case and wildcard on "source".
    pytest.param({"source": [{"suffix": "ec2"}]}, RULER_EVENT, True, id="ruler-suffix"),
    pytest.param(
        {"source": [{"equals-ignore-case": "EC2"}]}, {"source": "ec2"}, True, id="ruler-eic"
    ),
    pytest.param(
        {"source": [{"wildcard": "Simple*Service"}]},
        {"source": "SimpleNotificationService"},
        True,
        id="ruler-wildcard",
    ),
    pytest.param(
        {"source": [{"wildcard": "Simple*Service"}]},
        {"source": "SimpleNotificationServices"},
        False,
        id="ruler-wildcard-anchored",
    ),
]


@pytest.mark.parametrize(("pattern", "event", "expected"), DOC_EXAMPLES)
def test_documented_examples(
    pattern: dict[str, Any], event: dict[str, Any], expected: bool
) -> None:
    assert matches(pattern, event) is expected


def test_duplicate_key_last_one_counts() -> None:
    # "Content filtering" > the note on including a key more than once: only the last counts.
    pattern = parse_pattern(
        '{"detail": {"location": [{"prefix": "us-"}], "location": [{"anything-but": "us-east"}]}}'
    )
    assert pattern.matches({"detail": {"location": "eu-west"}}) is True
    assert pattern.matches({"detail": {"location": "us-east"}}) is False


# --- operators, one leaf at a time ------------------------------------------------------------


def leaf_event(value: Any) -> dict[str, Any]:
    return {"detail": {}} if value is ABSENT else {"detail": {"x": value}}


OPERATOR_CASES = [
    # exact values: type-exact, except that numbers compare as numbers
    (["a"], "a", True),
    (["a"], "A", False),
    (["a"], "ab", False),
    (["a", "b"], "b", True),
    (["a"], ABSENT, False),
    ([""], "", True),
    ([""], None, False),
    ([None], None, True),
    ([None], "null", False),
    ([True], True, True),
    ([True], "true", False),
    ([True], 1, False),
    ([False], 0, False),
    ([1], True, False),
    ([0], False, False),
    ([1], 1, True),
    ([1], 1.0, True),
    ([300], 300.0, True),
    ([3.0e2], 300, True),
    ([1.5], 1.5, True),
    ([1], "1", False),
    (["1"], 1, False),
    ([123456789012], 123456789012, True),
    # an exact IP literal matches the address, however it is written
    (["10.0.0.1"], "10.0.0.1", True),
    (["10.0.0.1"], "10.0.0.2", False),
    (["::1"], "0:0:0:0:0:0:0:1", True),
    (["::1"], "0.0.0.1", False),
    (["2001:db8::1"], "2001:DB8:0:0:0:0:0:1", True),
    # prefix
    ([{"prefix": "us-"}], "us-east-1", True),
    ([{"prefix": "us-"}], "eu-west-1", False),
    ([{"prefix": "us-"}], "US-EAST-1", False),
    ([{"prefix": "us-"}], "us-", True),
    ([{"prefix": "1"}], 10, False),
    ([{"prefix": ""}], "anything", True),
    ([{"prefix": ""}], None, False),
    ([{"prefix": "a"}, {"prefix": "b"}], "bravo", True),
    ([{"prefix": {"equals-ignore-case": "EventB"}}], "eventbus", True),
    ([{"prefix": {"equals-ignore-case": "EventB"}}], "events", False),
    # suffix
    ([{"suffix": ".png"}], "a.png", True),
    ([{"suffix": ".png"}], "png", False),
    ([{"suffix": ".png"}], "a.png.txt", False),
    ([{"suffix": "5"}], 5, False),
    ([{"suffix": {"equals-ignore-case": ".PNG"}}], "photo.png", True),
    ([{"suffix": {"equals-ignore-case": ".PNG"}}], "photo.jpg", False),
    # equals-ignore-case
    ([{"equals-ignore-case": "alice"}], "ALICE", True),
    ([{"equals-ignore-case": "alice"}], "alicia", False),
    ([{"equals-ignore-case": "Ärger"}], "äRGER", True),
    ([{"equals-ignore-case": "true"}], True, False),
    # wildcard
    ([{"wildcard": "*.png"}], "dir/a.png", True),  # the AWS Compute Blog's examples
    ([{"wildcard": "*.png"}], "a.png.bak", False),
    ([{"wildcard": "*Title*"}], "MyTitleHere", True),
    ([{"wildcard": "*Title*"}], "Title", True),
    ([{"wildcard": "*Title*"}], "title", False),
    ([{"wildcard": "*"}], "", True),
    ([{"wildcard": "*"}], 5, False),
    ([{"wildcard": ""}], "", True),
    ([{"wildcard": ""}], "a", False),
    ([{"wildcard": "plain"}], "plain", True),
    ([{"wildcard": "x*"}], "x", True),
    ([{"wildcard": "a*b*c"}], "abc", True),
    ([{"wildcard": "a*b*c"}], "aXXbYYc", True),
    ([{"wildcard": "a*b*c"}], "acb", False),
    ([{"wildcard": "ab*ab"}], "ab", False),  # prefix and suffix may not overlap
    ([{"wildcard": "ab*ab"}], "abab", True),
    ([{"wildcard": "a*a*a"}], "aa", False),
    ([{"wildcard": "a*a*a"}], "aaa", True),
    ([{"wildcard": "a\\*b"}], "a*b", True),  # \* is a literal star
    ([{"wildcard": "a\\*b"}], "axb", False),
    ([{"wildcard": "a\\\\*"}], "a\\bc", True),  # \\ is a literal backslash, then a wildcard
    ([{"wildcard": "arn:aws:events:*:*:rule/*"}], "arn:aws:events:us-east-1:1:rule/r", True),
    # numeric
    ([{"numeric": [">", 0, "<=", 5]}], 0, False),
    ([{"numeric": [">", 0, "<=", 5]}], 0.1, True),
    ([{"numeric": [">", 0, "<=", 5]}], 5, True),
    ([{"numeric": [">", 0, "<=", 5]}], 5.000001, False),
    ([{"numeric": [">", 0, "<=", 5]}], "3", False),  # strings never match numerically
    ([{"numeric": [">", 0, "<=", 5]}], True, False),
    ([{"numeric": [">", 0, "<=", 5]}], None, False),
    ([{"numeric": [">", 0, "<=", 5]}], ABSENT, False),
    ([{"numeric": [">=", 5]}], 5, True),
    ([{"numeric": [">=", 5]}], 4.999999, False),
    ([{"numeric": [">", 5]}], 5, False),
    ([{"numeric": ["<", 10]}], 9.99, True),
    ([{"numeric": ["<", 10]}], 10, False),
    ([{"numeric": ["<=", 10]}], 10, True),
    ([{"numeric": [">=", 1, "<", 2]}], 2, False),
    ([{"numeric": [">=", 1, "<", 2]}], 1, True),
    ([{"numeric": ["=", 3.018e2]}], 301.8, True),
    ([{"numeric": ["=", 3.018e2]}], 301, False),
    ([{"numeric": ["=", -1.5]}], -1.5, True),
    ([{"numeric": [">", 0]}], 5_000_000_000, True),
    ([{"numeric": [">", 0]}], 6_000_000_000, False),  # outside Ruler's numbers: not numeric
    ([{"numeric": ["<", 0]}], -5_000_000_001, False),
    # exists
    ([{"exists": True}], "x", True),
    ([{"exists": True}], "", True),
    ([{"exists": True}], None, True),  # null is a value: the field exists
    ([{"exists": True}], 0, True),
    ([{"exists": True}], ["a"], True),
    ([{"exists": True}], [], False),  # an empty array has no value
    ([{"exists": True}], {"y": 1}, False),  # an object is not a leaf
    ([{"exists": True}], ABSENT, False),
    ([{"exists": False}], ABSENT, True),
    ([{"exists": False}], [], True),
    ([{"exists": False}], {"y": 1}, True),
    ([{"exists": False}], None, False),
    ([{"exists": False}], "", False),
    ([{"exists": False}], [None], False),
    # cidr
    ([{"cidr": "10.0.0.0/24"}], "10.0.0.0", True),
    ([{"cidr": "10.0.0.0/24"}], "10.0.0.255", True),
    ([{"cidr": "10.0.0.0/24"}], "10.0.1.0", False),
    ([{"cidr": "10.0.0.0/24"}], "9.255.255.255", False),
    ([{"cidr": "10.0.0.0/24"}], "10.0.0.256", False),
    ([{"cidr": "10.0.0.0/24"}], "not an address", False),
    ([{"cidr": "10.0.0.0/24"}], 167772161, False),
    ([{"cidr": "10.0.0.0/24"}], "::ffff:a00:1", True),  # IPv4-mapped is the IPv4 address
    ([{"cidr": "0.0.0.0/0"}], "203.0.113.9", True),
    ([{"cidr": "0.0.0.0/0"}], "2001:db8::1", False),
    ([{"cidr": "2001:db8::/32"}], "2001:db8::1", True),
    ([{"cidr": "2001:db8::/32"}], "2001:0DB8:FFFF::", True),
    ([{"cidr": "2001:db8::/32"}], "2001:db9::1", False),
    ([{"cidr": "2001:db8::/32"}], "10.0.0.1", False),
    ([{"cidr": "::/0"}], "::1", True),
    ([{"cidr": "::/0"}], "10.0.0.1", False),  # an IPv4 address is never in an IPv6 block
    # Ruler's range runs from the address as written, host bits and all
    ([{"cidr": "10.0.0.5/24"}], "10.0.0.4", False),
    ([{"cidr": "10.0.0.5/24"}], "10.0.0.200", True),
    # anything-but: fails only on values of its own kind
    ([{"anything-but": "initializing"}], "running", True),
    ([{"anything-but": "initializing"}], "initializing", False),
    ([{"anything-but": "initializing"}], 5, True),
    ([{"anything-but": "initializing"}], None, True),
    ([{"anything-but": "initializing"}], True, True),
    ([{"anything-but": "initializing"}], ABSENT, False),  # nothing to compare: no match
    ([{"anything-but": "initializing"}], {"y": 1}, False),
    ([{"anything-but": 123}], 124, True),
    ([{"anything-but": 123}], 123, False),
    ([{"anything-but": 123}], 123.0, False),
    ([{"anything-but": 123}], "123", True),
    ([{"anything-but": [100, 200, 300]}], 200, False),
    ([{"anything-but": [100, 200, 300]}], 250, True),
    ([{"anything-but": ["stopped", "overloaded"]}], "stopped", False),
    ([{"anything-but": ["stopped", "overloaded"]}], "running", True),
    ([{"anything-but": {"prefix": "init"}}], "initializing", False),
    ([{"anything-but": {"prefix": "init"}}], "running", True),
    ([{"anything-but": {"prefix": "init"}}], 5, True),
    ([{"anything-but": {"prefix": ["us-", "eu-"]}}], "eu-west-1", False),
    ([{"anything-but": {"prefix": ["us-", "eu-"]}}], "ap-south-1", True),
    ([{"anything-but": {"suffix": ".png"}}], "a.png", False),
    ([{"anything-but": {"suffix": [".png", ".jpg"]}}], "a.jpg", False),
    ([{"anything-but": {"suffix": ".png"}}], "a.gif", True),
    ([{"anything-but": {"equals-ignore-case": "initializing"}}], "Running", True),
    ([{"anything-but": {"equals-ignore-case": ["a", "B"]}}], "b", False),
    ([{"anything-but": {"equals-ignore-case": ["a", "B"]}}], "c", True),
    ([{"anything-but": {"wildcard": "*/lib/*"}}], "/usr/lib/x", False),
    ([{"anything-but": {"wildcard": ["*/lib/*", "*.so"]}}], "/opt/x.so", False),
    ([{"anything-but": {"wildcard": "*/lib/*"}}], 5, True),
    # several alternatives in one leaf: any one is enough
    (["a", {"prefix": "b"}, {"numeric": [">", 10]}], "a", True),
    (["a", {"prefix": "b"}, {"numeric": [">", 10]}], "bc", True),
    (["a", {"prefix": "b"}, {"numeric": [">", 10]}], 11, True),
    (["a", {"prefix": "b"}, {"numeric": [">", 10]}], 5, False),
    (["a", {"prefix": "b"}, {"numeric": [">", 10]}], "c", False),
    ([{"exists": False}, "x"], ABSENT, True),
    ([{"exists": False}, "x"], "x", True),
    ([{"exists": False}, "x"], "y", False),
]


@pytest.mark.parametrize(
    ("alternatives", "value", "expected"),
    OPERATOR_CASES,
    ids=[f"{json.dumps(a)}~{v!r}" for a, v, _ in OPERATOR_CASES],
)
def test_operator(alternatives: list[Any], value: Any, expected: bool) -> None:
    assert matches({"detail": {"x": alternatives}}, leaf_event(value)) is expected


# --- arrays in events ---------------------------------------------------------------------------

ARRAY_CASES = [
    # one value per element: a leaf matches if any element does
    ({"tags": ["b"]}, {"tags": ["a", "b"]}, True),
    ({"tags": ["c"]}, {"tags": ["a", "b"]}, False),
    ({"tags": ["a"]}, {"tags": []}, False),
    ({"tags": ["a"]}, {"tags": [["x"], ["a"]]}, True),  # nested arrays are flattened
    ({"tags": [{"prefix": "in"}]}, {"tags": ["Custom_Alert", "Insider"]}, False),
    ({"tags": [{"prefix": "In"}]}, {"tags": ["Custom_Alert", "Insider"]}, True),
    ({"n": [{"numeric": [">", 10]}]}, {"n": [1, 50]}, True),
    ({"n": [{"numeric": [">", 10]}]}, {"n": [1, 5]}, False),
    ({"s": [{"anything-but": "x"}]}, {"s": ["x", "y"]}, True),  # "y" is anything but x
    ({"s": [{"anything-but": "x"}]}, {"s": ["x"]}, False),
    ({"s": [None]}, {"s": [None]}, True),
    ({"s": ["a"]}, {"s": [{"a": 1}]}, False),  # objects in an array are not values
    # aws/event-ruler README, "JSON Array Matching": fields from one element only
    ({"employees": {"firstName": ["Anna"]}}, "EMPLOYEES", True),
    ({"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}, "EMPLOYEES", True),
    ({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}, "EMPLOYEES", False),
    ({"employees": {"firstName": ["Anna"]}}, "EMPLOYEES_NESTED", True),
    ({"employees": {"firstName": ["Peter"], "lastName": ["Jones"]}}, "EMPLOYEES_NESTED", True),
    ({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}, "EMPLOYEES_NESTED", False),
    ({"employees": ["Anna"]}, "EMPLOYEES", False),
    # exists:false below an array: with nothing else to pin an element, no element may have it
    ({"a": {"b": [{"exists": False}]}}, {"a": [{"b": 1}, {"c": 2}]}, False),
    ({"a": {"b": [{"exists": False}]}}, {"a": [{"c": 2}, {"d": 3}]}, True),
    ({"a": {"b": [{"exists": False}]}}, {"a": []}, True),
    ({"a": {"b": [{"exists": False}]}}, {"a": [1, 2]}, True),
    # ...and alongside a positive field, within the element that field chose
    ({"a": {"c": [2], "z": [{"exists": False}]}}, {"a": [{"c": 2}, {"c": 3, "z": 1}]}, True),
    ({"a": {"c": [2], "z": [{"exists": False}]}}, {"a": [{"c": 2, "z": 1}]}, False),
    # arrays of objects inside arrays of objects
    (
        {"o": {"i": {"v": [1], "w": [2]}}},
        {"o": [{"i": [{"v": 1}, {"w": 2}]}, {"i": [{"v": 1, "w": 2}]}]},
        True,
    ),
    ({"o": {"i": {"v": [1], "w": [2]}}}, {"o": [{"i": [{"v": 1}, {"w": 2}]}]}, False),
]

EMPLOYEES = {
    "employees": [
        {"firstName": "John", "lastName": "Doe"},
        {"firstName": "Anna", "lastName": "Smith"},
        {"firstName": "Peter", "lastName": "Jones"},
    ]
}
EMPLOYEES_NESTED = {
    "employees": [
        [{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"}],
        [{"firstName": "Peter", "lastName": "Jones"}],
    ]
}
NAMED_EVENTS = {"EMPLOYEES": EMPLOYEES, "EMPLOYEES_NESTED": EMPLOYEES_NESTED}


@pytest.mark.parametrize(("pattern", "event", "expected"), ARRAY_CASES)
def test_array_semantics(pattern: dict[str, Any], event: Any, expected: bool) -> None:
    event = NAMED_EVENTS[event] if isinstance(event, str) else event
    assert matches(pattern, event) is expected


# --- nested fields ------------------------------------------------------------------------------

NESTED_CASES = [
    ({"a": {"b": {"c": ["x"]}}}, {"a": {"b": {"c": "x"}}}, True),
    ({"a": {"b": {"c": ["x"]}}}, {"a": {"b": {"c": "y"}}}, False),
    ({"a": {"b": {"c": ["x"]}}}, {"a": {"b": "x"}}, False),
    ({"a": {"b": {"c": ["x"]}}}, {"a": {"c": "x"}}, False),
    ({"a": {"b": {"c": ["x"]}}}, {}, False),
    ({"a": ["x"]}, {"a": {"x": 1}}, False),  # a leaf never matches an object
    ({"a": {"b": [{"exists": False}]}}, {"a": "scalar"}, True),
    ({"a": {"b": [{"exists": False}]}}, {}, True),
    ({"a": {"b": [{"exists": True}]}}, {"a": {"b": {"c": 1}}}, False),
    ({"a": {"b": ["x"]}, "c": ["y"]}, {"a": {"b": "x", "extra": 1}, "c": "y", "d": 2}, True),
    ({"a.b": ["x"]}, {"a": {"b": "x"}}, False),  # dots in names are not paths
    ({"a.b": ["x"]}, {"a.b": "x"}, True),
    ({"detail": {"prefix": ["x"]}}, {"detail": {"prefix": "x"}}, True),  # just a field name
]


@pytest.mark.parametrize(("pattern", "event", "expected"), NESTED_CASES)
def test_nested_fields(pattern: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, event) is expected


# --- $or ----------------------------------------------------------------------------------------

# aws/event-ruler README, "Rule examples with "$or" Primitive".
NORMAL_OR = {
    "source": ["aws.cloudwatch"],
    "$or": [
        {"metricName": ["CPUUtilization", "ReadLatency"]},
        {"namespace": ["AWS/EC2", "AWS/ES"]},
    ],
}
PARALLEL_OR = {
    "$or": [
        {"metricName": ["CPUUtilization", "ReadLatency"]},
        {"namespace": ["AWS/EC2", "AWS/ES"]},
    ],
    "detail": {
        "$or": [
            {"source": ["aws.cloudwatch"]},
            {"detail-type": ["CloudWatch Alarm State Change"]},
        ]
    },
}
OR_WITH_AND = {
    "source": ["aws.cloudwatch"],
    "$or": [
        {"metricName": ["CPUUtilization", "ReadLatency"]},
        {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"]},
        {"scope": ["Service"]},
    ],
}
NESTED_OR = {
    "source": ["aws.cloudwatch"],
    "$or": [
        {"metricName": ["CPUUtilization", "ReadLatency"]},
        {
            "metricType": ["MetricType"],
            "namespace": ["AWS/EC2", "AWS/ES"],
            "$or": [{"metricId": [1234]}, {"spaceId": [1000]}],
        },
        {"scope": ["Service"]},
    ],
}
# aws/event-ruler JsonRuleCompiler's $or example: an $or inside "detail".
DETAIL_OR = {
    "detail": {
        "$or": [
            {"c-count": [{"numeric": [">", 0, "<=", 5]}]},
            {"d-count": [{"numeric": ["<", 10]}]},
            {"x-limit": [{"numeric": ["=", 3.018e2]}]},
        ]
    }
}

CW = {"source": "aws.cloudwatch"}
OR_CASES = [
    (NORMAL_OR, {**CW, "metricName": "CPUUtilization"}, True),
    (NORMAL_OR, {**CW, "namespace": "AWS/ES"}, True),
    (NORMAL_OR, {**CW, "metricName": "Other", "namespace": "Other"}, False),
    (NORMAL_OR, {"source": "aws.ec2", "metricName": "CPUUtilization"}, False),
    (NORMAL_OR, CW, False),
    (PARALLEL_OR, {"metricName": "ReadLatency", "detail": {"source": "aws.cloudwatch"}}, True),
    (
        PARALLEL_OR,
        {"namespace": "AWS/EC2", "detail": {"detail-type": "CloudWatch Alarm State Change"}},
        True,
    ),
    (PARALLEL_OR, {"metricName": "ReadLatency", "detail": {"source": "aws.ec2"}}, False),
    (PARALLEL_OR, {"detail": {"source": "aws.cloudwatch"}}, False),
    (OR_WITH_AND, {**CW, "metricType": "MetricType", "namespace": "AWS/EC2"}, True),
    (OR_WITH_AND, {**CW, "metricType": "MetricType"}, False),
    (OR_WITH_AND, {**CW, "scope": "Service"}, True),
    (NESTED_OR, {**CW, "metricType": "MetricType", "namespace": "AWS/ES", "spaceId": 1000}, True),
    (NESTED_OR, {**CW, "metricType": "MetricType", "namespace": "AWS/ES", "metricId": 1}, False),
    (NESTED_OR, {**CW, "metricName": "ReadLatency"}, True),
    (DETAIL_OR, RULER_EVENT, True),
    (DETAIL_OR, {"detail": {"c-count": 0, "d-count": 10, "x-limit": 301.8}}, True),
    (DETAIL_OR, {"detail": {"c-count": 0, "d-count": 10, "x-limit": 300}}, False),
    (DETAIL_OR, {"c-count": 1}, False),  # the $or applies inside "detail"
    # an $or below an array matches within one element, like any other field
    (
        {"items": {"c": [3], "$or": [{"a": [1]}, {"b": [2]}]}},
        {"items": [{"a": 1}, {"c": 3}]},
        False,
    ),
    ({"items": {"c": [3], "$or": [{"a": [1]}, {"b": [2]}]}}, {"items": [{"b": 2, "c": 3}]}, True),
    # a field inside an alternative must match as well as the same field outside the $or
    ({"a": [1], "$or": [{"a": [2]}, {"b": [3]}]}, {"a": 1, "b": 3}, True),
    ({"a": [1], "$or": [{"a": [2]}, {"b": [3]}]}, {"a": 2}, False),
    # exists in alternatives
    ({"$or": [{"a": [{"exists": False}]}, {"a": ["x"]}]}, {}, True),
    ({"$or": [{"a": [{"exists": False}]}, {"a": ["x"]}]}, {"a": "y"}, False),
]


@pytest.mark.parametrize(("pattern", "event", "expected"), OR_CASES)
def test_or(pattern: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, event) is expected


def test_two_or_groups_in_one_object_both_apply() -> None:
    pattern = parse_pattern(
        '{"$or": [{"a": ["1"]}, {"b": ["1"]}], "$or": [{"c": ["1"]}, {"d": ["1"]}]}'
    )
    assert pattern.matches({"a": "1", "d": "1"}) is True
    assert pattern.matches({"a": "1"}) is False
    assert pattern.matches({"c": "1"}) is False


def test_repeated_object_key_adds_fields() -> None:
    pattern = parse_pattern('{"detail": {"a": ["1"]}, "detail": {"b": ["2"]}}')
    assert pattern.matches({"detail": {"a": "1", "b": "2"}}) is True
    assert pattern.matches({"detail": {"b": "2"}}) is False
    assert pattern.matches({"detail": {"a": "1"}}) is False


# --- refusals -----------------------------------------------------------------------------------

REFUSALS = [
    # the pattern as a whole
    ("[]", "Filter is not an object"),
    ('"aws.ec2"', "Filter is not an object"),
    ("null", "Filter is not an object"),
    ("{}", "Empty objects are not allowed"),
    ('{"detail": {}}', "Empty objects are not allowed at [path: detail]"),
    ('{"a": {}, "a": {"b": [1]}}', "Empty objects are not allowed at [path: a]"),
    ('{"detail": {"pipeline": {"slug": "x"}}}', '"slug" must be an object or an array'),
    ('{"source": "aws.ec2"}', '"source" must be an object or an array at [path: source]'),
    ('{"source": 5}', '"source" must be an object or an array'),
    ('{"source": null}', '"source" must be an object or an array'),
    ('{"source": true}', '"source" must be an object or an array'),
    # JSON itself
    ('{"a": [1,]}', "at [line: 1, column: 10]"),
    ('{"time": [{"prefix": "2017-10-02"}],}', "at [line: 1, column: 37]"),
    ('{"a": [NaN]}', "Non-standard token 'NaN'"),
    ('{"a": [-Infinity]}', "Non-standard token '-Infinity'"),
    ("", "Expecting value at [line: 1, column: 1]"),
    ('{"a": [1]} trailing', "Extra data"),
    # leaves
    ('{"source": []}', "Empty arrays are not allowed at [path: source]"),
    ('{"source": [["aws.ec2"]]}', "Match value must be String, number, true, false, or null"),
    ('{"source": [{}]}', "Match expression name not found at [path: source[0]]"),
    ('{"source": [{"contains": "x"}]}', "Unrecognized match type contains at [path: source[0]]"),
    ('{"source": [{"exactly": "x"}]}', "Unrecognized match type exactly"),
    ('{"source": [{"prefix": "a", "suffix": "b"}]}', "Only one key allowed in match expression"),
    # prefix / suffix / equals-ignore-case
    ('{"a": [{"prefix": 5}]}', "prefix match pattern must be a string at [path: a[0].prefix]"),
    ('{"a": [{"prefix": ["x"]}]}', "prefix match pattern must be a string"),
    ('{"a": [{"prefix": null}]}', "prefix match pattern must be a string"),
    ('{"a": [{"prefix": {}}]}', "Prefix expression name not found"),
    ('{"a": [{"prefix": {"wildcard": "x"}}]}', "Unsupported prefix pattern: wildcard"),
    (
        '{"a": [{"prefix": {"equals-ignore-case": 5}}]}',
        "equals-ignore-case match pattern must be a string",
    ),
    (
        '{"a": [{"prefix": {"equals-ignore-case": "x", "b": 1}}]}',
        "Only one key allowed in match expression",
    ),
    ('{"a": [{"suffix": 5}]}', "suffix match pattern must be a string"),
    ('{"a": [{"suffix": {}}]}', "Suffix expression name not found"),
    ('{"a": [{"suffix": {"prefix": "x"}}]}', "Unsupported suffix pattern: prefix"),
    ('{"a": [{"equals-ignore-case": 5}]}', "equals-ignore-case match pattern must be a string"),
    ('{"a": [{"equals-ignore-case": ["x"]}]}', "equals-ignore-case match pattern must be a string"),
    ('{"a": [{"equals-ignore-case": {"x": "y"}}]}', "equals-ignore-case match pattern must be"),
    ('{"a": [{"wildcard": {"x": "y"}}]}', "wildcard match pattern must be a string"),
    ('{"a": [{"exists": {}}]}', "exists match pattern must be either true or false."),
    ('{"a": [{"cidr": ["10.0.0.0/8"]}]}', "prefix match pattern must be a string"),
    # wildcard (positions count the UTF-8 bytes of the quoted string, as Ruler's do)
    ('{"a": [{"wildcard": 5}]}', "wildcard match pattern must be a string"),
    ('{"key": [{"wildcard": "abc**def"}]}', "Consecutive wildcard characters at pos 4"),
    ('{"a": [{"wildcard": "**"}]}', "Consecutive wildcard characters at pos 1"),
    ('{"a": [{"wildcard": "é**"}]}', "Consecutive wildcard characters at pos 3"),
    ('{"key": [{"wildcard": "a*c\\\\def"}]}', "Invalid escape character at pos 4"),
    ('{"a": [{"wildcard": "abc\\\\"}]}', "Invalid escape character at pos 4"),
    ('{"a": [{"wildcard": "\\\\n"}]}', "Invalid escape character at pos 1"),
    # exists
    ('{"a": [{"exists": "true"}]}', "exists match pattern must be either true or false."),
    ('{"a": [{"exists": 1}]}', "exists match pattern must be either true or false."),
    ('{"a": [{"exists": null}]}', "exists match pattern must be either true or false."),
    ('{"a": [{"exists": true, "b": 1}]}', "Only one key allowed in match expression"),
    # cidr
    ('{"a": [{"cidr": 5}]}', "prefix match pattern must be a string at [path: a[0].cidr]"),
    ('{"a": [{"cidr": "10.0.0.0"}]}', "Malformed CIDR, one '/' required"),
    ('{"a": [{"cidr": "10.0.0.0/8/8"}]}', "Malformed CIDR, one '/' required"),
    ('{"a": [{"cidr": "10.0.0.0/x"}]}', "Malformed CIDR, mask bits must be an integer"),
    ('{"a": [{"cidr": "10.0.0.0/-1"}]}', "Malformed CIDR, mask bits must not be negative"),
    ('{"a": [{"cidr": "10.0.0.0/32"}]}', "IPv4 mask bits must be < 32"),
    ('{"a": [{"cidr": "::/128"}]}', "IPv6 mask bits must be < 128"),
    ('{"a": [{"cidr": "10.0.0.256/8"}]}', "Invalid IP address: 10.0.0.256"),
    ('{"a": [{"cidr": "example.com/8"}]}', "Nonstandard IP address: example.com"),
    ('{"a": [{"cidr": "1:2:3:4:5:6:7:8:9/64"}]}', "Invalid IP address: 1:2:3:4:5:6:7:8:9"),
    # numeric
    ('{"a": [{"numeric": 5}]}', "Value of numeric must be an array. at [path: a[0].numeric]"),
    ('{"a": [{"numeric": ">"}]}', "Value of numeric must be an array."),
    ('{"a": [{"numeric": {">": 1}}]}', "Value of numeric must be an array."),
    ('{"a": [{"numeric": []}]}', "Invalid member in numeric match: ]"),
    ('{"a": [{"numeric": [5]}]}', "Invalid member in numeric match: 5"),
    ('{"a": [{"numeric": [true]}]}', "Invalid member in numeric match: true"),
    ('{"a": [{"numeric": ["!=", 5]}]}', "Unrecognized numeric range operator: !="),
    ('{"a": [{"numeric": ["\u2264", 5]}]}', "Unrecognized numeric range operator: \u2264"),
    ('{"a": [{"numeric": [">"]}]}', "Value of > must be numeric"),
    ('{"a": [{"numeric": [">", "5"]}]}', "Value of > must be numeric"),
    ('{"a": [{"numeric": ["<=", null]}]}', "Value of <= must be numeric"),
    ('{"a": [{"numeric": ["=", "x"]}]}', "Value of equals must be numeric"),
    ('{"a": [{"numeric": ["=", 1, 2]}]}', "Too many elements in numeric expression"),
    ('{"a": [{"numeric": ["<", 1, ">", 0]}]}', "Too many elements in numeric expression"),
    ('{"a": [{"numeric": [">", 0, 5]}]}', "Bad value in numeric range: 5"),
    ('{"a": [{"numeric": [">", 0, ">", 5]}]}', "Bad numeric range operator: >"),
    ('{"a": [{"numeric": [">", 0, "<"]}]}', "Value of < must be numeric"),
    ('{"a": [{"numeric": [">", 0, "<", 5, 6]}]}', "Too many terms in numeric range expression"),
    ('{"a": [{"numeric": [">", 5, "<", 5]}]}', "Bottom must be less than top"),
    ('{"a": [{"numeric": [">=", 6, "<=", 5]}]}', "Bottom must be less than top"),
    ('{"a": [{"numeric": ["<", 5000000001]}]}', "Value must be between -5.0E9 and 5.0E9"),
    ('{"a": [{"numeric": [">", -5.1e9]}]}', "Value must be between -5.0E9 and 5.0E9"),
    ('{"a": [{"numeric": ["=", 0.0000001]}]}', "Only values upto 6 decimals are supported"),
    ('{"a": [{"numeric": ["=", 1.0000000000000000000000000001]}]}', "upto 6 decimals"),
    ('{"a": [{"numeric": [">", 0], "b": 1}]}', "Too many elements in numeric expression"),
    # anything-but
    ('{"a": [{"anything-but": null}]}', "Value of anything-but must be an array or single"),
    ('{"a": [{"anything-but": true}]}', "Value of anything-but must be an array or single"),
    ('{"a": [{"anything-but": []}]}', "either all values are number or string"),
    ('{"a": [{"anything-but": [["x"]]}]}', "Inside anything but list, start|null|boolean is not"),
    ('{"a": [{"anything-but": ["x", 1]}]}', "mixed type is not supported"),
    ('{"a": [{"anything-but": [null]}]}', "Inside anything but list, start|null|boolean is not"),
    ('{"a": [{"anything-but": [{"prefix": "x"}]}]}', "Inside anything but list, start|null|"),
    ('{"a": [{"anything-but": 123456789012}]}', "Value must be between -5.0E9 and 5.0E9"),
    ('{"a": [{"anything-but": [1, 0.0000001]}]}', "Only values upto 6 decimals are supported"),
    ('{"a": [{"anything-but": {}}]}', "Anything-But expression name not found"),
    ('{"a": [{"anything-but": {"numeric": [">", 1]}}]}', "Unsupported anything-but pattern: num"),
    ('{"a": [{"anything-but": {"exists": false}}]}', "Unsupported anything-but pattern: exists"),
    ('{"a": [{"anything-but": {"prefix": ""}}]}', "Null prefix/suffix not allowed"),
    ('{"a": [{"anything-but": {"suffix": ["x", ""]}}]}', "Null prefix/suffix not allowed"),
    ('{"a": [{"anything-but": {"prefix": 5}}]}', "prefix/suffix match pattern must be a string"),
    ('{"a": [{"anything-but": {"suffix": [5]}}]}', "prefix/suffix match pattern must be a string"),
    ('{"a": [{"anything-but": {"prefix": null}}]}', "Value of anything-but must be an array or"),
    ('{"a": [{"anything-but": {"prefix": {"x": 1}}}]}', "Value of anything-but must be an array"),
    (
        '{"a": [{"anything-but": {"equals-ignore-case": 5}}]}',
        "Inside anything-but/equals-ignore-case list, number|start|null|boolean is not supported.",
    ),
    ('{"a": [{"anything-but": {"wildcard": 5}}]}', "wildcard match pattern must be a string"),
    ('{"a": [{"anything-but": {"wildcard": "a**"}}]}', "Consecutive wildcard characters at pos 2"),
    ('{"a": [{"anything-but": "x", "b": 1}]}', "Too many elements in numeric expression"),
    (
        '{"a": [{"anything-but": {"prefix": "x", "suffix": "y"}}]}',
        "Too many elements in numeric expression",
    ),
    # $or
    ('{"$or": {"a": [1]}}', "It must be an Array followed with $or. at [path: $or]"),
    ('{"$or": [{"a": [1]}]}', "There must have at least 2 Objects in $or relationship."),
    ('{"$or": []}', "There must have at least 2 Objects in $or relationship."),
    ('{"$or": [{"a": [1]}, ["b"]]}', "Only JSON object is allowed in array of $or relationship."),
    ('{"$or": [{"a": [1]}, {}]}', "Empty objects are not allowed at [path: $or[1]]"),
    (
        '{"$or": [{"prefix": ["a"]}, {"b": [1]}]}',
        "prefix is Ruler reserved fieldName which cannot be used inside $or.",
    ),
    (
        '{"$or": [{"a": {"numeric": [1]}}, {"b": [1]}]}',
        "numeric is Ruler reserved fieldName which cannot be used inside $or.",
    ),
    ('{"d": {"$or": [{"a": [1]}, {"<=": [1]}]}}', "<= is Ruler reserved fieldName"),
    (
        '{"$or": [{"a": [1]}, {"b": [{"numeric": [">"]}]}]}',
        "Value of > must be numeric at [path: $or[1].b[0].numeric]",
    ),
    (
        '{"detail": {"$or": [{"a": [1]}, {"b": {"$or": [{"c": []}, {"d": [1]}]}}]}}',
        "Empty arrays are not allowed at [path: detail.$or[1].b.$or[0].c]",
    ),
]


@pytest.mark.parametrize(("text", "reason"), REFUSALS, ids=[text for text, _ in REFUSALS])
def test_refusal(text: str, reason: str) -> None:
    assert reason in refusal(text).message


def test_refusal_message_shape() -> None:
    message = refusal('{"detail": {"c-count": [{"numeric": 5}]}}').message
    assert message == (
        "Event pattern is not valid. Reason: Value of numeric must be an array. "
        "at [path: detail.c-count[0].numeric]"
    )


def test_pattern_size_limit() -> None:
    # The "Event pattern" quota: 2048 characters.
    filler = "x" * (MAX_PATTERN_LENGTH - len('{"a": [""]}'))
    assert parse_pattern(f'{{"a": ["{filler}"]}}').matches({"a": filler}) is True
    message = refusal(f'{{"a": ["{filler}y"]}}').message
    assert f"is {MAX_PATTERN_LENGTH + 1} characters long; the maximum is 2048" in message
    # an operator whose quota was raised can allow more
    longer = parse_pattern(f'{{"a": ["{filler}y"]}}', max_length=4096)
    assert longer.matches({"a": filler + "y"}) is True


def test_nesting_too_deep_is_refused_not_crashed() -> None:
    depth = 5000
    text = '{"a":' * depth + "[1]" + "}" * depth
    assert "nested too deeply" in refusal(text, max_length=len(text)).message


ACCEPTED = [
    '{"source": ["aws.ec2"]}',
    '{"prefix": ["a"], "numeric": [1]}',  # operator names are plain field names outside $or
    '{"a": [{"anything-but": {"prefix": ["us-", "eu-"]}}]}',
    '{"a": [{"anything-but": {"equals-ignore-case": ["x", "Y"]}}]}',
    '{"a": [{"numeric": ["<", 5000000000]}, {"numeric": [">", -5e9]}]}',
    '{"a": [{"numeric": ["=", 0.000001]}, {"anything-but": [1.5, 2]}]}',
    '{"a": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}, {"cidr": "10.0.0.0/31"}]}',
    '{"a": [{"wildcard": "a\\\\*b\\\\\\\\c*"}]}',
    '{"a": [{"prefix": ""}, {"suffix": ""}, {"equals-ignore-case": ""}, {"wildcard": ""}]}',
    '{"a": [123456789012, 1.23456789, null, true, false, ""]}',  # plain values: no limits
    '{"$or": [{"a": [1]}, {"b": [1]}, {"c": {"$or": [{"d": [1]}, {"e": [1]}]}}]}',
    ' \n{"a": [1]}\n ',
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted(text: str) -> None:
    pattern = parse_pattern(text)
    assert isinstance(pattern, EventPattern)
    assert pattern.source == text


# --- compiled once, matched fast ----------------------------------------------------------------


def test_compiled_pattern_is_reusable() -> None:
    pattern = parse_pattern('{"source": ["aws.ec2"], "detail": {"state": [{"prefix": "run"}]}}')
    assert [pattern.matches(e) for e in (RULER_EVENT, EC2_TERMINATED, EC2_PENDING)] == [
        True,
        False,
        False,
    ]
    assert pattern.matches(RULER_EVENT) is True  # matching has no side effects
    assert "aws.ec2" in repr(pattern)


def test_wildcard_does_not_backtrack() -> None:
    # A backtracking regex needs O(n^4) steps here; the segment search needs O(n).
    pattern = parse_pattern('{"a": [{"wildcard": "*a*a*a*a*b"}]}')
    value = "a" * 200_000
    started = time.perf_counter()
    assert pattern.matches({"a": value}) is False
    assert pattern.matches({"a": value + "b"}) is True
    assert time.perf_counter() - started < 1.0


def test_matching_a_typical_event_is_cheap() -> None:
    pattern = parse_pattern(
        json.dumps(
            {
                "source": ["aws.ec2", "aws.fargate"],
                "detail-type": ["EC2 Instance State-change Notification"],
                "detail": {
                    "state": [{"anything-but": "initializing"}],
                    "c-count": [{"numeric": [">", 0, "<=", 5]}],
                },
            }
        )
    )
    started = time.perf_counter()
    for _ in range(20_000):
        assert pattern.matches(RULER_EVENT)
    # ~1 µs a match on a laptop; the bound only catches a pathological regression.
    assert time.perf_counter() - started < 2.0
