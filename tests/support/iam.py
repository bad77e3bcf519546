"""IAM for tests: managed policies, policy documents, users with keys, clients as a key."""

from __future__ import annotations

import json
from typing import Any

import boto3

from support.aws import unique
from support.daemon import Daemon

DATA_SCIENTIST = "arn:aws:iam::aws:policy/MlfleetDataScientistAccess"
READ_ONLY = "arn:aws:iam::aws:policy/MlfleetReadOnlyAccess"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def trust_of(*principals: str) -> str:
    return policy(
        {"Effect": "Allow", "Principal": {"AWS": list(principals)}, "Action": "sts:AssumeRole"}
    )


def as_key(daemon: Daemon, service: str, key: dict[str, Any], **kwargs: Any):  # type: ignore[no-untyped-def]
    return boto3.client(
        service,
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        aws_session_token=key.get("SessionToken"),
        **kwargs,
    )


def new_user(daemon: Daemon, *policy_arns: str, inline: str | None = None) -> dict[str, Any]:
    """A user with the given policies and an access key: {"Arn", "AccessKeyId", ...}."""
    iam = daemon.client("iam")
    name = unique("user")
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    for policy_arn in policy_arns:
        iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)
    if inline is not None:
        iam.put_user_policy(UserName=name, PolicyName="inline", PolicyDocument=inline)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {**key, "Arn": arn}
