"""Role trust policies: who may assume a role, and when the caller's own policies must agree."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlfleet.policy.evaluation import RequestContext, parse_policy
from mlfleet.policy.trust import Trust, parse_trust
from mlfleet.protocol.errors import AwsError

ACCOUNT = "123456789012"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/writer"


def trust(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole", **extra}


def ctx(**keys: Any) -> RequestContext:
    return RequestContext("sts:AssumeRole", ROLE, {"aws:PrincipalArn": ALICE, **keys})


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ({"AWS": ALICE}, Trust.NAMED),
        ({"AWS": [BOB, ALICE]}, Trust.NAMED),
        ({"AWS": BOB}, Trust.NONE),
        ({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, Trust.ACCOUNT),
        ({"AWS": ACCOUNT}, Trust.ACCOUNT),
        ({"AWS": "arn:aws:iam::999999999999:root"}, Trust.NONE),
        ("*", Trust.ACCOUNT),
        ({"Service": "sagemaker.amazonaws.com"}, Trust.NONE),
    ],
)
def test_principal_matching(principal: Any, expected: Trust) -> None:
    assert parse_trust(trust(allow(principal))).trusts(ctx(), (ALICE,), ACCOUNT) is expected


def test_a_deny_in_the_trust_policy_wins() -> None:
    document = trust(
        allow({"AWS": ALICE}),
        {"Effect": "Deny", "Principal": "*", "Action": "sts:AssumeRole"},
    )
    assert parse_trust(document).trusts(ctx(), (ALICE,), ACCOUNT) is Trust.NONE


def test_conditions_apply_to_the_assume_request() -> None:
    document = trust(
        allow({"AWS": ALICE}, Condition={"StringLike": {"sts:RoleSessionName": "ci-*"}})
    )
    policy = parse_trust(document)
    assert policy.trusts(ctx(**{"sts:RoleSessionName": "ci-1"}), (ALICE,), ACCOUNT) is Trust.NAMED
    assert policy.trusts(ctx(**{"sts:RoleSessionName": "me"}), (ALICE,), ACCOUNT) is Trust.NONE


def test_not_principal_trusts_everyone_else_through_the_account() -> None:
    document = trust({"Effect": "Allow", "NotPrincipal": {"AWS": BOB}, "Action": "sts:AssumeRole"})
    assert parse_trust(document).trusts(ctx(), (ALICE,), ACCOUNT) is Trust.ACCOUNT
    assert parse_trust(document).trusts(ctx(), (BOB,), ACCOUNT) is Trust.NONE


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (trust({"Effect": "Allow", "Action": "sts:AssumeRole"}), "invalid principal"),
        (trust(allow({"AWS": ALICE}, Resource="*")), "prohibited field Resource"),
        (trust(allow({"Nobody": ALICE})), 'Invalid principal type "Nobody"'),
        (trust(allow({"AWS": "alice"})), 'Invalid principal in policy: "AWS":"alice"'),
        (trust(allow({"AWS": ALICE}, Effect="Maybe")), "Effect must be Allow or Deny"),
        ("[]", "JSON object"),
    ],
)
def test_malformed_trust_policies(document: str, reason: str) -> None:
    with pytest.raises(AwsError) as exc:
        parse_trust(document)
    assert exc.value.code == "MalformedPolicyDocument"
    assert reason in exc.value.message


def test_time_dependent_policies_are_marked() -> None:
    timed = {
        "Effect": "Allow",
        "Action": "s3:*",
        "Resource": "*",
        "Condition": {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}},
    }
    plain = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    assert parse_policy({"Version": "2012-10-17", "Statement": [timed]}).time_dependent
    assert not parse_policy({"Version": "2012-10-17", "Statement": [plain]}).time_dependent
