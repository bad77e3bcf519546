"""The IAM policy language: which documents IAM refuses, and how policies decide a request."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlfleet.policy.evaluation import (
    Decision,
    EvaluationResult,
    Policy,
    RequestContext,
    evaluate,
    parse_policy,
)
from mlfleet.protocol.errors import AwsError

ACCOUNT = "123456789012"
SERVER = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/team-a"
SERVERS = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server"
LOG_METRIC = "sagemaker-mlflow:LogMetric"
ABSENT = object()  # a condition key the request does not carry


def statement(effect: str = "Allow", action: Any = "*", resource: Any = "*", **more: Any) -> dict:
    """A statement; pass action=None or resource=None to leave that element out."""
    elements = {"Effect": effect, "Action": action, "Resource": resource, **more}
    return {name: value for name, value in elements.items() if value is not None}


def policy(*statements: dict, version: str = "2012-10-17") -> Policy:
    return parse_policy({"Version": version, "Statement": list(statements)})


def decide(
    policies: Policy | list[tuple[str, Policy]],
    action: str = LOG_METRIC,
    resource: str = SERVER,
    keys: dict[str, Any] | None = None,
) -> Decision:
    named = [("policy", policies)] if isinstance(policies, Policy) else policies
    return evaluate(named, RequestContext(action, resource, keys or {})).decision


def holds(condition: dict, keys: dict[str, Any], version: str = "2012-10-17") -> bool:
    """Whether an Allow statement guarded by `condition` allows a request carrying `keys`."""
    return decide(policy(statement(Condition=condition), version=version), keys=keys) is (
        Decision.ALLOW
    )


def refusal(document: Any) -> AwsError:
    with pytest.raises(AwsError) as raised:
        parse_policy(document)
    return raised.value


# --- Condition operators ----------------------------------------------------------------------

JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("operator", "key", "policy_values", "request_value", "expected"),
    [
        # Strings: case-sensitive unless IgnoreCase; values listed for a key OR together.
        ("StringEquals", "aws:username", "alice", "alice", True),
        ("StringEquals", "aws:username", "alice", "Alice", False),
        ("StringEquals", "aws:username", "alice", ABSENT, False),
        ("StringEquals", "aws:username", ["bob", "alice"], "alice", True),
        ("StringEquals", "aws:username", "*", "alice", False),
        ("StringNotEquals", "aws:username", "alice", "bob", True),
        ("StringNotEquals", "aws:username", "alice", "alice", False),
        ("StringNotEquals", "aws:username", "alice", ABSENT, True),
        ("StringNotEquals", "aws:username", ["alice", "bob"], "bob", False),
        ("StringEqualsIgnoreCase", "aws:username", "ALICE", "alice", True),
        ("StringEqualsIgnoreCase", "aws:username", "ALICE", "bob", False),
        ("StringNotEqualsIgnoreCase", "aws:username", "ALICE", "alice", False),
        ("StringNotEqualsIgnoreCase", "aws:username", "ALICE", "bob", True),
        ("StringLike", "aws:PrincipalTag/team", "team-*", "team-a", True),
        ("StringLike", "aws:PrincipalTag/team", "t?am-a", "team-a", True),
        ("StringLike", "aws:PrincipalTag/team", "team-*", "Team-a", False),
        ("StringLike", "aws:PrincipalTag/team", "team-?", "team-ab", False),
        ("StringNotLike", "aws:PrincipalTag/team", "team-*", "team-a", False),
        ("StringNotLike", "aws:PrincipalTag/team", "team-*", "ops", True),
        ("StringNotLike", "aws:PrincipalTag/team", "team-*", ABSENT, True),
        ("StringEquals", "aws:SecureTransport", "true", True, True),
        # Numbers: JSON numbers or numeric strings, on both sides.
        ("NumericEquals", "mlflow:MaxResults", "10", 10, True),
        ("NumericEquals", "mlflow:MaxResults", 10, "10.0", True),
        ("NumericEquals", "mlflow:MaxResults", "10", 11, False),
        ("NumericEquals", "mlflow:MaxResults", "10", "ten", False),
        ("NumericNotEquals", "mlflow:MaxResults", "10", 10, False),
        ("NumericNotEquals", "mlflow:MaxResults", "10", 11, True),
        ("NumericLessThan", "mlflow:MaxResults", "10", 9, True),
        ("NumericLessThan", "mlflow:MaxResults", "10", 10, False),
        ("NumericLessThan", "mlflow:MaxResults", "10", ABSENT, False),
        ("NumericLessThanEquals", "mlflow:MaxResults", "10", 10, True),
        ("NumericLessThanEquals", "mlflow:MaxResults", "10", 10.5, False),
        ("NumericGreaterThan", "mlflow:MaxResults", "10", 11, True),
        ("NumericGreaterThan", "mlflow:MaxResults", "10", 10, False),
        ("NumericGreaterThanEquals", "mlflow:MaxResults", "10", 10, True),
        ("NumericGreaterThanEquals", "mlflow:MaxResults", "10", 9, False),
        # Dates: ISO 8601 or epoch seconds, on both sides.
        ("DateEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", JAN_1, True),
        ("DateEquals", "aws:CurrentTime", "1704067200", JAN_1, True),
        ("DateEquals", "aws:CurrentTime", "2024-01-01T01:00:00+01:00", JAN_1, True),
        ("DateEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", False),
        ("DateNotEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", JAN_1, False),
        ("DateNotEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", "2023-12-31", True),
        ("DateLessThan", "aws:CurrentTime", "2024-06-01T00:00:00Z", JAN_1, True),
        ("DateLessThan", "aws:CurrentTime", "2023-06-01T00:00:00Z", JAN_1, False),
        ("DateLessThan", "aws:EpochTime", 1704067201, 1704067200, True),
        ("DateLessThanEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", JAN_1, True),
        ("DateLessThanEquals", "aws:CurrentTime", "2023-12-31T23:59:59Z", JAN_1, False),
        ("DateGreaterThan", "aws:CurrentTime", "2023-12-31T23:59:59Z", JAN_1, True),
        ("DateGreaterThan", "aws:CurrentTime", "2024-01-01T00:00:00Z", JAN_1, False),
        ("DateGreaterThanEquals", "aws:CurrentTime", "2024-01-01T00:00:00Z", JAN_1, True),
        ("DateGreaterThanEquals", "aws:CurrentTime", "2024-01-01T00:00:01Z", JAN_1, False),
        ("DateLessThan", "aws:CurrentTime", "2024-06-01T00:00:00Z", "not a date", False),
        # Bool: JSON booleans or "true"/"false", on both sides.
        ("Bool", "aws:SecureTransport", "true", True, True),
        ("Bool", "aws:SecureTransport", "true", False, False),
        ("Bool", "aws:SecureTransport", True, "true", True),
        ("Bool", "aws:SecureTransport", "false", False, True),
        ("Bool", "aws:SecureTransport", "true", ABSENT, False),
        # BinaryEquals: policies hold base64; requests hold bytes, or base64 text.
        ("BinaryEquals", "mlflow:Digest", "QmluYXJ5", b"Binary", True),
        ("BinaryEquals", "mlflow:Digest", "QmluYXJ5", "QmluYXJ5", True),
        ("BinaryEquals", "mlflow:Digest", "QmluYXJ5", b"binary", False),
        # IP addresses: CIDR blocks or single addresses, IPv4 and IPv6.
        ("IpAddress", "aws:SourceIp", "203.0.113.0/24", "203.0.113.7", True),
        ("IpAddress", "aws:SourceIp", "203.0.113.0/24", "198.51.100.1", False),
        ("IpAddress", "aws:SourceIp", "203.0.113.5", "203.0.113.5", True),
        ("IpAddress", "aws:SourceIp", "2001:db8::/32", "2001:db8:1::9", True),
        ("IpAddress", "aws:SourceIp", "2001:db8::/32", "2001:db9::1", False),
        ("IpAddress", "aws:SourceIp", "203.0.113.0/24", "2001:db8::1", False),
        ("IpAddress", "aws:SourceIp", ["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", True),
        ("IpAddress", "aws:SourceIp", "203.0.113.0/24", "not-an-ip", False),
        ("IpAddress", "aws:SourceIp", "203.0.113.0/24", ABSENT, False),
        ("NotIpAddress", "aws:SourceIp", "10.0.0.0/8", "10.1.2.3", False),
        ("NotIpAddress", "aws:SourceIp", "10.0.0.0/8", "192.0.2.1", True),
        ("NotIpAddress", "aws:SourceIp", "10.0.0.0/8", ABSENT, True),
        # ARNs: wildcards within each segment, case-sensitive.
        ("ArnLike", "aws:SourceArn", f"arn:aws:sagemaker:*:{ACCOUNT}:*", SERVER, True),
        ("ArnLike", "aws:SourceArn", "arn:aws:sagemaker:*:999999999999:*", SERVER, False),
        ("ArnLike", "aws:SourceArn", f"{SERVERS}/team-?", SERVER, True),
        ("ArnLike", "aws:SourceArn", f"{SERVERS}/team-?", f"{SERVERS}/team-ab", False),
        ("ArnEquals", "aws:SourceArn", SERVER, SERVER, True),
        ("ArnEquals", "aws:SourceArn", SERVER, SERVER.upper(), False),
        ("ArnEquals", "aws:SourceArn", SERVER, "not-an-arn", False),
        ("ArnNotEquals", "aws:SourceArn", SERVER, SERVER, False),
        ("ArnNotEquals", "aws:SourceArn", SERVER, f"{SERVERS}/team-b", True),
        ("ArnNotLike", "aws:SourceArn", f"{SERVERS}/*", SERVER, False),
        ("ArnNotLike", "aws:SourceArn", f"{SERVERS}/*", ABSENT, True),
        # ...IfExists: an absent key passes; a present one is tested as usual.
        ("StringEqualsIfExists", "aws:username", "alice", ABSENT, True),
        ("StringEqualsIfExists", "aws:username", "alice", "alice", True),
        ("StringEqualsIfExists", "aws:username", "alice", "bob", False),
        ("StringNotEqualsIfExists", "aws:username", "alice", "alice", False),
        ("NumericLessThanIfExists", "mlflow:MaxResults", "10", ABSENT, True),
        ("NumericLessThanIfExists", "mlflow:MaxResults", "10", 20, False),
        ("DateLessThanIfExists", "aws:CurrentTime", "2024-06-01T00:00:00Z", ABSENT, True),
        ("BoolIfExists", "aws:MultiFactorAuthPresent", "true", ABSENT, True),
        ("BoolIfExists", "aws:MultiFactorAuthPresent", "true", False, False),
        ("IpAddressIfExists", "aws:SourceIp", "10.0.0.0/8", ABSENT, True),
        ("IpAddressIfExists", "aws:SourceIp", "10.0.0.0/8", "192.0.2.1", False),
        ("ArnLikeIfExists", "aws:SourceArn", f"{SERVERS}/*", ABSENT, True),
        ("BinaryEqualsIfExists", "mlflow:Digest", "QmluYXJ5", ABSENT, True),
        # Null: "true" asks for the key to be absent, "false" for it to be present.
        ("Null", "aws:TokenIssueTime", "true", ABSENT, True),
        ("Null", "aws:TokenIssueTime", "true", JAN_1, False),
        ("Null", "aws:TokenIssueTime", "false", ABSENT, False),
        ("Null", "aws:TokenIssueTime", False, JAN_1, True),
        ("Null", "aws:TagKeys", "true", [], True),
    ],
)
def test_condition_operator(
    operator: str, key: str, policy_values: Any, request_value: Any, expected: bool
) -> None:
    keys = {} if request_value is ABSENT else {key: request_value}
    assert holds({operator: {key: policy_values}}, keys) is expected


@pytest.mark.parametrize(
    ("operator", "policy_values", "tag_keys", "expected"),
    [
        # ForAnyValue: at least one request value matches; an absent or empty key fails.
        ("ForAnyValue:StringEquals", ["env"], ["env", "team"], True),
        ("ForAnyValue:StringEquals", ["env"], ["team"], False),
        ("ForAnyValue:StringEquals", ["env"], ABSENT, False),
        ("ForAnyValue:StringEquals", ["env"], [], False),
        ("ForAnyValue:StringNotEquals", ["env"], ["env", "team"], True),
        ("ForAnyValue:StringNotEquals", ["env"], ["env"], False),
        ("ForAnyValue:StringLike", ["cost-*"], ["env", "cost-center"], True),
        # ForAllValues: every request value matches; an absent or empty key passes.
        ("ForAllValues:StringEquals", ["env", "team"], ["env"], True),
        ("ForAllValues:StringEquals", ["env", "team"], ["env", "team"], True),
        ("ForAllValues:StringEquals", ["env", "team"], ["env", "cost"], False),
        ("ForAllValues:StringEquals", ["env"], ABSENT, True),
        ("ForAllValues:StringEquals", ["env"], [], True),
        ("ForAllValues:StringNotEquals", ["secret"], ["env", "team"], True),
        ("ForAllValues:StringNotEquals", ["secret"], ["env", "secret"], False),
        ("ForAllValues:StringLike", ["team-*"], ["team-a", "team-b"], True),
        ("ForAllValues:StringLike", ["team-*"], ["team-a", "ops"], False),
        ("ForAllValues:StringEqualsIfExists", ["env"], ABSENT, True),
        ("ForAnyValue:StringEqualsIfExists", ["env"], ABSENT, True),
        # Without a set qualifier, a multivalued key matches when any of its values does.
        ("StringEquals", ["team"], ["env", "team"], True),
        ("StringNotEquals", ["team"], ["env", "team"], False),
    ],
)
def test_set_qualifiers_for_multivalued_keys(
    operator: str, policy_values: list[str], tag_keys: Any, expected: bool
) -> None:
    keys = {} if tag_keys is ABSENT else {"aws:TagKeys": tag_keys}
    assert holds({operator: {"aws:TagKeys": policy_values}}, keys) is expected


def test_operators_and_keys_are_anded_together() -> None:
    condition = {
        "StringEquals": {"aws:username": "alice", "aws:PrincipalTag/team": "ml"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    everything = {
        "aws:username": "alice",
        "aws:PrincipalTag/team": "ml",
        "aws:SecureTransport": True,
    }
    assert holds(condition, everything)
    assert not holds(condition, {**everything, "aws:PrincipalTag/team": "ops"})
    assert not holds(condition, {**everything, "aws:SecureTransport": False})


def test_condition_keys_are_case_insensitive_both_ways() -> None:
    assert holds({"StringEquals": {"AWS:UserName": "alice"}}, {"aws:username": "alice"})
    assert holds({"StringEquals": {"aws:username": "alice"}}, {"AWS:USERNAME": "alice"})
    assert holds({"StringEquals": {"aws:PrincipalTag/Team": "ml"}}, {"aws:principaltag/team": "ml"})
    assert not holds({"StringEquals": {"aws:username": "alice"}}, {"aws:username": "ALICE"})


def test_current_time_window() -> None:
    until = policy(
        statement(Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})
    )
    now = datetime.now(UTC)
    assert decide(until, keys={"aws:CurrentTime": now}) is Decision.ALLOW
    later = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=1)
    assert decide(until, keys={"aws:CurrentTime": later}) is Decision.IMPLICIT_DENY
    assert decide(until, keys={"aws:CurrentTime": "2029-12-31T23:59:59Z"}) is Decision.ALLOW
    # A naive datetime is taken as UTC.
    assert decide(until, keys={"aws:CurrentTime": datetime(2030, 1, 2)}) is Decision.IMPLICIT_DENY


# --- Policy variables -------------------------------------------------------------------------


def test_variable_in_resource() -> None:
    own_server = policy(statement(resource=f"{SERVERS}/${{aws:username}}"))
    assert decide(own_server, keys={"aws:username": "team-a"}) is Decision.ALLOW
    assert decide(own_server, keys={"aws:username": "team-b"}) is Decision.IMPLICIT_DENY


def test_missing_variable_makes_the_resource_entry_match_nothing() -> None:
    own_server = policy(statement(resource=[f"{SERVERS}/${{aws:username}}", f"{SERVERS}/shared"]))
    assert decide(own_server) is Decision.IMPLICIT_DENY
    assert decide(own_server, resource=f"{SERVERS}/shared") is Decision.ALLOW


def test_tag_variable_is_looked_up_case_insensitively() -> None:
    team_servers = policy(statement(resource=f"{SERVERS}/${{aws:PrincipalTag/team}}-*"))
    ml_prod = f"{SERVERS}/ml-prod"
    assert (
        decide(team_servers, resource=ml_prod, keys={"aws:principaltag/TEAM": "ml"})
        is Decision.ALLOW
    )
    assert (
        decide(team_servers, resource=f"{SERVERS}/ops-prod", keys={"aws:PrincipalTag/team": "ml"})
        is Decision.IMPLICIT_DENY
    )


def test_variable_value_is_literal_not_a_wildcard() -> None:
    own_server = policy(statement(resource=f"{SERVERS}/${{aws:username}}"))
    assert decide(own_server, keys={"aws:username": "*"}) is Decision.IMPLICIT_DENY
    assert decide(own_server, resource=f"{SERVERS}/*", keys={"aws:username": "*"}) is (
        Decision.ALLOW
    )


def test_variable_in_condition_value() -> None:
    owner_is_caller = {"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}}
    assert holds(owner_is_caller, {"aws:ResourceTag/owner": "alice", "aws:username": "alice"})
    assert not holds(owner_is_caller, {"aws:ResourceTag/owner": "alice", "aws:username": "bob"})
    assert not holds(owner_is_caller, {"aws:ResourceTag/owner": "alice"})
    like = {"StringLike": {"aws:ResourceTag/owner": "${aws:username}-*"}}
    assert holds(like, {"aws:ResourceTag/owner": "alice-bot", "aws:username": "alice"})


def test_missing_variable_in_a_negated_condition_excludes_nothing() -> None:
    not_owner = {"StringNotEquals": {"aws:ResourceTag/owner": "${aws:username}"}}
    assert holds(not_owner, {"aws:ResourceTag/owner": "alice"})


def test_multivalued_key_cannot_be_a_variable() -> None:
    tagged = {"StringEquals": {"aws:ResourceTag/env": "${aws:TagKeys}"}}
    assert not holds(tagged, {"aws:ResourceTag/env": "prod", "aws:TagKeys": ["prod"]})


def test_variable_default_value() -> None:
    team = {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team, 'shared'}"}}
    assert holds(team, {"aws:ResourceTag/team": "shared"})
    assert not holds(team, {"aws:ResourceTag/team": "shared", "aws:PrincipalTag/team": "ml"})
    assert holds(team, {"aws:ResourceTag/team": "ml", "aws:PrincipalTag/team": "ml"})


def test_escaped_special_characters() -> None:
    literal = {"StringLike": {"mlflow:RunName": "${*}-${?}-${$}"}}
    assert holds(literal, {"mlflow:RunName": "*-?-$"})
    assert not holds(literal, {"mlflow:RunName": "a-b-$"})


def test_variables_are_plain_text_in_the_2008_grammar() -> None:
    legacy = policy(statement(resource=f"{SERVERS}/${{aws:username}}"), version="2008-10-17")
    assert decide(legacy, keys={"aws:username": "team-a"}) is Decision.IMPLICIT_DENY
    literal_arn = f"{SERVERS}/${{aws:username}}"
    assert decide(legacy, resource=literal_arn, keys={"aws:username": "x"}) is Decision.ALLOW


def test_missing_version_is_the_2008_grammar() -> None:
    parsed = parse_policy({"Statement": statement(resource=f"{SERVERS}/${{aws:username}}")})
    assert parsed.version == "2008-10-17"
    assert decide(parsed, keys={"aws:username": "team-a"}) is Decision.IMPLICIT_DENY


# --- Action and Resource ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_pattern", "action", "expected"),
    [
        ("sagemaker-mlflow:Log*", "sagemaker-mlflow:LogMetric", True),
        ("sagemaker-mlflow:Log*", "sagemaker-mlflow:LogParam", True),
        ("sagemaker-mlflow:Log*", "sagemaker-mlflow:GetRun", False),
        ("sagemaker-mlflow:Get?un", "sagemaker-mlflow:GetRun", True),
        ("sagemaker-mlflow:Get?un", "sagemaker-mlflow:GetRRun", False),
        ("SageMaker-MLflow:logmetric", "sagemaker-mlflow:LogMetric", True),
        ("sagemaker-mlflow:LogMetric", "SAGEMAKER-MLFLOW:LOGMETRIC", True),
        ("sagemaker:*", "sagemaker-mlflow:LogMetric", False),
        ("*", "iam:CreateUser", True),
    ],
)
def test_action_wildcards_ignore_case(action_pattern: str, action: str, expected: bool) -> None:
    allowed = decide(policy(statement(action=action_pattern)), action=action) is Decision.ALLOW
    assert allowed is expected


def test_not_action() -> None:
    all_but_admin = policy(statement(NotAction=["iam:*", "sts:*"], action=None))
    assert decide(all_but_admin) is Decision.ALLOW
    assert decide(all_but_admin, action="IAM:CreateUser") is Decision.IMPLICIT_DENY
    assert decide(all_but_admin, action="sts:AssumeRole") is Decision.IMPLICIT_DENY


@pytest.mark.parametrize(
    ("resource_pattern", "resource", "expected"),
    [
        ("*", SERVER, True),
        (f"arn:aws:sagemaker:*:{ACCOUNT}:mlflow-tracking-server/*", SERVER, True),
        (
            f"arn:aws:sagemaker:*:{ACCOUNT}:mlflow-tracking-server/*",
            "arn:aws:sagemaker:us-east-1:999999999999:mlflow-tracking-server/team-a",
            False,
        ),
        (f"{SERVERS}/team-?", SERVER, True),
        (f"{SERVERS}/team-?", f"{SERVERS}/team-ab", False),
        # Resources are case-sensitive.
        (f"{SERVERS}/Team-A", SERVER, False),
        # A `*` inside an ARN segment stays within it...
        (f"arn:aws:sagemaker:us-*-1:{ACCOUNT}:*", SERVER, True),
        (
            f"arn:aws:sagemaker:us-*-1:{ACCOUNT}:*",
            f"arn:aws:sagemaker:us-east:x-1:{ACCOUNT}:mlflow-tracking-server/a",
            False,
        ),
        # ...one ending a segment may run beyond it, and anything goes in the resource segment.
        ("arn:aws:sagemaker:*", SERVER, True),
        (f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-*/team-a", SERVER, True),
        (
            f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:*",
            f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:a:b",
            True,
        ),
    ],
)
def test_resource_wildcards(resource_pattern: str, resource: str, expected: bool) -> None:
    allowed = decide(policy(statement(resource=resource_pattern)), resource=resource)
    assert (allowed is Decision.ALLOW) is expected


def test_not_resource() -> None:
    all_but_secret = policy(statement(NotResource=f"{SERVERS}/secret-*", resource=None))
    assert decide(all_but_secret) is Decision.ALLOW
    assert decide(all_but_secret, resource=f"{SERVERS}/secret-x") is Decision.IMPLICIT_DENY


# --- Evaluation -------------------------------------------------------------------------------


def test_deny_in_any_policy_beats_allow_in_another() -> None:
    allow_all = policy(statement(Sid="Everything"))
    deny_logging = policy(statement("Deny", action="sagemaker-mlflow:Log*", Sid="NoLogging"))
    for order in (
        [("allow", allow_all), ("deny", deny_logging)],
        [("deny", deny_logging), ("allow", allow_all)],
    ):
        result = evaluate(order, RequestContext(LOG_METRIC, SERVER))
        assert result == EvaluationResult(Decision.EXPLICIT_DENY, "deny", "NoLogging")
        assert not result.allowed
    other = evaluate(
        [("allow", allow_all), ("deny", deny_logging)],
        RequestContext("sagemaker-mlflow:GetRun", SERVER),
    )
    assert other == EvaluationResult(Decision.ALLOW, "allow", "Everything")
    assert other.allowed


def test_deny_with_unmet_condition_does_not_deny() -> None:
    allow_all = policy(statement())
    deny_insecure = policy(statement("Deny", Condition={"Bool": {"aws:SecureTransport": "false"}}))
    policies = [("allow", allow_all), ("deny", deny_insecure)]
    assert decide(policies, keys={"aws:SecureTransport": True}) is Decision.ALLOW
    assert decide(policies, keys={"aws:SecureTransport": False}) is Decision.EXPLICIT_DENY


def test_implicit_deny() -> None:
    read_only = policy(statement(action="sagemaker-mlflow:Get*"))
    result = evaluate([("read-only", read_only)], RequestContext(LOG_METRIC, SERVER))
    assert result == EvaluationResult(Decision.IMPLICIT_DENY)
    assert evaluate([], RequestContext(LOG_METRIC, SERVER)).decision is Decision.IMPLICIT_DENY


def test_policies_may_be_any_iterable() -> None:
    allow_all = policy(statement())
    result = evaluate((("p", allow_all) for _ in range(2)), RequestContext(LOG_METRIC, SERVER))
    assert result.decision is Decision.ALLOW


def test_decision_values_are_iam_eval_decisions() -> None:
    assert [d.value for d in Decision] == ["allowed", "explicitDeny", "implicitDeny"]


# --- Parsing ----------------------------------------------------------------------------------


def test_accepts_json_text_and_single_values() -> None:
    parsed = parse_policy(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Id": "mlflow-access",
                "Statement": {
                    "Sid": "Log1",
                    "Effect": "Allow",
                    "Action": LOG_METRIC,
                    "Resource": SERVER,
                },
            }
        )
    )
    assert parsed.version == "2012-10-17"
    assert parsed.policy_id == "mlflow-access"
    assert [s.sid for s in parsed.statements] == ["Log1"]
    assert decide(parsed) is Decision.ALLOW


def document(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def with_condition(condition: Any) -> dict:
    return document(statement(Condition=condition))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "Syntax errors in policy: invalid JSON at line 1, column 2."),
        ("[" * 100_000 + "]" * 100_000, "Syntax errors in policy"),
        ("[]", "the document must be a JSON object"),
        (
            '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Effect": "Deny",'
            ' "Action": "*", "Resource": "*"}}',
            'duplicate key "Effect"',
        ),
        ({**document(statement()), "Statements": []}, 'unknown element "Statements"'),
        ({"Version": "2020-01-01", "Statement": [statement()]}, "The policy failed legacy parsing"),
        ({"Version": "2012-10-17"}, "Statement is required"),
        ({"Version": "2012-10-17", "Statement": []}, "non-empty list"),
        ({**document(statement()), "Id": 7}, "Id must be a string"),
        (document("Allow"), "Statement 1: a statement must be a JSON object."),
        (document(statement("allow")), "Statement 1: Effect must be Allow or Deny."),
        (document(statement(), statement("Permit")), "Statement 2: Effect must be Allow or Deny."),
        (document({"Action": "*", "Resource": "*"}), "Effect must be Allow or Deny"),
        (document({"Effect": "Allow", "Resource": "*"}), "Policy statement must contain actions."),
        (document(statement(action=[])), "Policy statement must contain actions."),
        (document(statement(NotAction="iam:*")), "Action and NotAction cannot both be specified"),
        (document({"Effect": "Allow", "Action": "*"}), "Policy statement must contain resources."),
        (document(statement(NotResource=SERVER)), "Resource and NotResource cannot both"),
        (document(statement(Actions="*")), 'unknown element "Actions"'),
        (document(statement(Principal={"AWS": "*"})), "should not specify a principal"),
        (document(statement(NotPrincipal={"AWS": "*"})), "should not specify a principal"),
        (
            document(statement(action="LogMetric")),
            "Actions/Conditions must be prefaced by a vendor",
        ),
        (document(statement(action="sagemaker:Log Metric")), "not a valid service:action pattern"),
        (document(statement(action=["iam:*", 7])), "Action must be a string or a list of strings"),
        (document(statement(resource="team-a")), 'Resource team-a must be in ARN format or "*"'),
        (document(statement(resource="arn:aws:s3")), "must be in ARN format"),
        (document(statement(resource=f"{SERVERS}/${{}}")), "not a valid policy variable"),
        (
            document(statement(Sid="Same"), statement(Sid="Same")),
            "Statement IDs (SID) in a single policy must be unique.",
        ),
        (document(statement(Sid="not-alnum")), "Statement IDs (SID) must be alpha-numeric"),
        (with_condition(["aws:username"]), "Condition must be a JSON object"),
        (with_condition({"StringEquals": "alice"}), "Condition StringEquals must be a JSON object"),
        (with_condition({"StringEquals": {}}), "Condition StringEquals must be a JSON object"),
        (
            with_condition({"StringEqualz": {"aws:username": "a"}}),
            'unknown condition operator "StringEqualz"',
        ),
        (
            with_condition({"ForSomeValues:StringEquals": {"aws:TagKeys": "a"}}),
            "unknown condition operator",
        ),
        (with_condition({"NullIfExists": {"aws:username": "true"}}), "unknown condition operator"),
        (
            with_condition({"ForAnyValue:Null": {"aws:TagKeys": "true"}}),
            "unknown condition operator",
        ),
        (with_condition({"StringEquals": {"username": "a"}}), "must be prefaced by a vendor"),
        (with_condition({"StringEquals": {"aws:username": []}}), "at least one value is required"),
        (with_condition({"StringEquals": {"aws:username": {"a": 1}}}), "values must be strings"),
        (
            with_condition({"NumericLessThan": {"mlflow:MaxResults": "ten"}}),
            'NumericLessThan condition on mlflow:MaxResults: "ten" is not a valid number.',
        ),
        (with_condition({"DateLessThan": {"aws:CurrentTime": "tomorrow"}}), "not a valid date"),
        (with_condition({"IpAddress": {"aws:SourceIp": "300.1.1.1/8"}}), "not a valid IP address"),
        (with_condition({"IpAddress": {"aws:SourceIp": 10}}), "not a valid IP address"),
        (with_condition({"Bool": {"aws:SecureTransport": "yes"}}), "not a valid boolean"),
        (with_condition({"BinaryEquals": {"mlflow:Digest": "!!"}}), "not a valid base64 value"),
        (with_condition({"Null": {"aws:username": "maybe"}}), "not a valid Null value"),
    ],
)
def test_malformed_documents_are_refused(bad: Any, message: str) -> None:
    error = refusal(bad)
    assert (error.code, error.status) == ("MalformedPolicyDocument", 400)
    assert message in error.message


def test_refusals_do_not_leak_python_internals() -> None:
    error = refusal('{"Version": "2012-10-17", "Statement": [}')
    assert json.loads(error.body()) == {
        "__type": "MalformedPolicyDocument",
        "Message": "Syntax errors in policy: invalid JSON at line 1, column 41.",
    }
