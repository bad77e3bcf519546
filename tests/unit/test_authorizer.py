"""The authorizer over a real IAM store: decisions follow policy changes and the clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox
from mlfleet.iam.store import IamStore
from mlfleet.policy.authorizer import Authorizer, RequestFacts
from mlfleet.state.db import open_database

ACTION = "sagemaker-mlflow:LogMetric"
SERVER = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/a"


@pytest.fixture
def iam(tmp_path: Path) -> tuple[IamStore, Authorizer, Principal]:
    sessions = open_database(f"sqlite:///{tmp_path / 'control.db'}")
    authorizer_ref: list[Authorizer] = []
    store = IamStore(
        sessions,
        "123456789012",
        SecretBox.from_file(tmp_path / "master.key"),
        on_change=lambda: authorizer_ref[0].invalidate(),
    )
    authorizer = Authorizer(store, "123456789012")
    authorizer_ref.append(authorizer)
    user = store.create_user({"UserName": "alice"})["User"]
    return store, authorizer, Principal(user["Arn"], user["UserId"], "alice")


def allow(**condition: Any) -> str:
    statement = {"Effect": "Allow", "Action": ACTION, "Resource": "*"}
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def test_policy_changes_apply_to_the_next_decision(iam: Any) -> None:
    store, authorizer, alice = iam
    facts = RequestFacts(source_ip="127.0.0.1")
    assert not authorizer.check(alice, ACTION, SERVER, facts).allowed
    store.put_inline_policy("user", "alice", "log", allow())
    assert authorizer.check(alice, ACTION, SERVER, facts).allowed
    store.delete_inline_policy("user", "alice", "log")
    assert not authorizer.check(alice, ACTION, SERVER, facts).allowed


def test_decisions_that_depend_on_the_clock_are_not_cached(iam: Any) -> None:
    store, authorizer, alice = iam
    deadline = int(time.time()) + 2
    store.put_inline_policy(
        "user", "alice", "until", allow(NumericLessThan={"aws:EpochTime": str(deadline)})
    )
    facts = RequestFacts(source_ip="127.0.0.1")
    assert authorizer.check(alice, ACTION, SERVER, facts).allowed
    time.sleep(max(0.0, deadline - time.time()) + 0.1)
    assert not authorizer.check(alice, ACTION, SERVER, facts).allowed


def test_cached_decisions_are_per_source_address_and_resource_tags(iam: Any) -> None:
    store, authorizer, alice = iam
    store.put_inline_policy(
        "user", "alice", "office", allow(IpAddress={"aws:SourceIp": "10.0.0.0/8"})
    )
    inside, outside = RequestFacts(source_ip="10.1.2.3"), RequestFacts(source_ip="127.0.0.1")
    for _ in range(2):  # the second round is answered from the cache
        assert authorizer.check(alice, ACTION, SERVER, inside).allowed
        assert not authorizer.check(alice, ACTION, SERVER, outside).allowed

    store.put_inline_policy("user", "alice", "office", allow())
    deny = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}},
                }
            ],
        }
    )
    store.put_inline_policy("user", "alice", "no-prod", deny)
    prod = RequestFacts(source_ip="127.0.0.1", resource_tags=[{"Key": "env", "Value": "prod"}])
    dev = RequestFacts(source_ip="127.0.0.1", resource_tags=[{"Key": "env", "Value": "dev"}])
    for _ in range(2):
        assert not authorizer.check(alice, ACTION, SERVER, prod).allowed
        assert authorizer.check(alice, ACTION, SERVER, dev).allowed
