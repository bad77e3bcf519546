"""IAM and STS through the real boto3 clients: identities, keys, policies, errors."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from support.aws import ACCOUNT, aws, error_of, unique
from support.daemon import Daemon
from support.iam import READ_ONLY, as_key, policy, trust_of


def test_user_lifecycle_and_errors(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("alice")
    user = iam.create_user(UserName=name, Path="/team-a/", Tags=[{"Key": "team", "Value": "a"}])
    assert user["User"]["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/team-a/{name}"
    assert user["User"]["UserId"].startswith("AIDA")
    assert iam.get_user(UserName=name)["User"]["Tags"] == [{"Key": "team", "Value": "a"}]

    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName=name.upper())  # IAM names are unique regardless of case
    assert error_of(exc) == (
        "EntityAlreadyExists",
        f"User with name {name.upper()} already exists.",
    )
    with pytest.raises(ClientError) as exc:
        iam.get_user(UserName="nobody-" + name)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error_of(exc)[0] == "NoSuchEntity"
    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName="bad name!")
    code, message = error_of(exc)
    assert code == "ValidationError" and "userName" in message and "pattern" in message

    listed = [u["UserName"] for u in iam.list_users(PathPrefix="/team-a/")["Users"]]
    assert name in listed
    pages = list(iam.get_paginator("list_users").paginate(PaginationConfig={"PageSize": 1}))
    assert len(pages) >= 2 and all(len(p["Users"]) == 1 for p in pages)

    iam.create_access_key(UserName=name)
    with pytest.raises(ClientError) as exc:
        iam.delete_user(UserName=name)
    assert error_of(exc) == (
        "DeleteConflict",
        "Cannot delete entity, must delete access keys first.",
    )


def test_access_keys_authenticate_until_deactivated(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("bob")
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    assert key["AccessKeyId"].startswith("AKIA") and len(key["AccessKeyId"]) == 20
    listed = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    assert "SecretAccessKey" not in listed[0]

    sts = as_key(daemon, "sts", key)
    identity = sts.get_caller_identity()
    assert identity["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/{name}"
    assert identity["Account"] == ACCOUNT

    iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    with pytest.raises(ClientError) as exc:
        sts.get_caller_identity()
    assert error_of(exc)[0] == "InvalidClientTokenId"
    iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status="Active")
    assert sts.get_caller_identity()["Arn"].endswith(name)

    iam.create_access_key(UserName=name)
    with pytest.raises(ClientError) as exc:
        iam.create_access_key(UserName=name)
    assert error_of(exc) == ("LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2")

    iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
    with pytest.raises(ClientError) as exc:
        sts.get_caller_identity()
    assert error_of(exc)[0] == "InvalidClientTokenId"

    # Secrets are encrypted at rest and never logged.
    for stored in ("mlfleet.db", "mlfleet.log", "daemon.out"):
        path = daemon.data_dir / stored
        if path.exists():
            assert key["SecretAccessKey"].encode() not in path.read_bytes(), stored


def test_groups_and_membership(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    group, user = unique("readers"), unique("carol")
    iam.create_group(GroupName=group)
    iam.create_user(UserName=user)
    iam.add_user_to_group(GroupName=group, UserName=user)
    got = iam.get_group(GroupName=group)
    assert got["Group"]["GroupId"].startswith("AGPA")
    assert [u["UserName"] for u in got["Users"]] == [user]
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName=user)["Groups"]] == [group]
    with pytest.raises(ClientError) as exc:
        iam.delete_group(GroupName=group)
    assert error_of(exc)[0] == "DeleteConflict"
    iam.remove_user_from_group(GroupName=group, UserName=user)
    with pytest.raises(ClientError) as exc:
        iam.remove_user_from_group(GroupName=group, UserName=user)
    assert error_of(exc)[0] == "NoSuchEntity"
    iam.delete_group(GroupName=group)
    assert group not in [g["GroupName"] for g in iam.list_groups()["Groups"]]


@pytest.mark.parametrize("kind", ["User", "Group", "Role"])
def test_inline_policies(daemon: Daemon, kind: str) -> None:
    iam = daemon.client("iam")
    owner = unique(kind.lower())
    create = {"User": iam.create_user, "Group": iam.create_group, "Role": iam.create_role}[kind]
    extra = {"AssumeRolePolicyDocument": trust_of(f"arn:aws:iam::{ACCOUNT}:root")}
    create(**{f"{kind}Name": owner}, **(extra if kind == "Role" else {}))
    doc = {
        "Version": "2012-10-17",
        "Statement": {"Effect": "Allow", "Action": "sagemaker-mlflow:Get*", "Resource": "*"},
    }
    names = {f"{kind}Name": owner, "PolicyName": "reads"}
    getattr(iam, f"put_{kind.lower()}_policy")(**names, PolicyDocument=json.dumps(doc))
    got = getattr(iam, f"get_{kind.lower()}_policy")(**names)
    assert got["PolicyDocument"] == doc  # URL-encoded on the wire, decoded by botocore
    listed = getattr(iam, f"list_{kind.lower()}_policies")(**{f"{kind}Name": owner})
    assert listed["PolicyNames"] == ["reads"]

    with pytest.raises(ClientError) as exc:
        getattr(iam, f"put_{kind.lower()}_policy")(
            **names,
            PolicyDocument=policy({"Effect": "Permit", "Action": "s3:*", "Resource": "*"}),
        )
    assert error_of(exc) == (
        "MalformedPolicyDocument",
        "Statement 1: Effect must be Allow or Deny.",
    )
    getattr(iam, f"delete_{kind.lower()}_policy")(**names)
    with pytest.raises(ClientError) as exc:
        getattr(iam, f"get_{kind.lower()}_policy")(**names)
    assert error_of(exc)[0] == "NoSuchEntity"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{not json", "Syntax errors in policy"),
        (policy({"Effect": "Allow", "Action": "s3", "Resource": "*"}), "prefaced by a vendor"),
        (policy({"Effect": "Allow", "Action": "s3:Get", "Resource": "bucket"}), "ARN format"),
        (
            policy(
                {
                    "Effect": "Allow",
                    "Action": "s3:*",
                    "Resource": "*",
                    "Condition": {"StringLikeish": {"aws:username": "x"}},
                }
            ),
            "StringLikeish",
        ),
        (
            policy({"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"}),
            "should not specify a principal",
        ),
    ],
)
def test_malformed_policies_are_refused_with_the_reason(
    daemon: Daemon, document: str, reason: str
) -> None:
    with pytest.raises(ClientError) as exc:
        daemon.client("iam").create_policy(PolicyName=unique("bad"), PolicyDocument=document)
    code, message = error_of(exc)
    assert code == "MalformedPolicyDocument"
    assert reason in message


def test_managed_policies(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    shipped = {p["PolicyName"] for p in iam.list_policies(Scope="AWS")["Policies"]}
    assert {
        "AdministratorAccess",
        "MlfleetFullAccess",
        "MlfleetReadOnlyAccess",
        "MlfleetDataScientistAccess",
    } <= shipped
    version = iam.get_policy_version(PolicyArn=READ_ONLY, VersionId="v1")["PolicyVersion"]
    assert version["Document"]["Statement"][0]["Sid"] == "SeeTrackingServers"

    name = unique("log-only")
    doc = policy({"Effect": "Allow", "Action": "sagemaker-mlflow:Log*", "Resource": "*"})
    created = iam.create_policy(PolicyName=name, Path="/ml/", PolicyDocument=doc)["Policy"]
    arn = created["Arn"]
    assert arn == f"arn:aws:iam::{ACCOUNT}:policy/ml/{name}"
    assert name in [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]]
    with pytest.raises(ClientError) as exc:
        iam.create_policy(PolicyName=name, PolicyDocument=doc)
    assert error_of(exc)[0] == "EntityAlreadyExists"

    user = unique("dave")
    iam.create_user(UserName=user)
    iam.attach_user_policy(UserName=user, PolicyArn=arn)
    iam.attach_user_policy(UserName=user, PolicyArn=READ_ONLY)
    attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
    assert {p["PolicyArn"] for p in attached} == {arn, READ_ONLY}
    assert iam.get_policy(PolicyArn=arn)["Policy"]["AttachmentCount"] == 1
    with pytest.raises(ClientError) as exc:
        iam.delete_policy(PolicyArn=arn)
    assert error_of(exc) == ("DeleteConflict", "Cannot delete a policy attached to entities.")
    with pytest.raises(ClientError) as exc:
        iam.attach_user_policy(UserName=user, PolicyArn=arn + "-missing")
    assert error_of(exc)[0] == "NoSuchEntity"
    iam.detach_user_policy(UserName=user, PolicyArn=arn)
    iam.delete_policy(PolicyArn=arn)
    with pytest.raises(ClientError) as exc:
        iam.get_policy(PolicyArn=arn)
    assert error_of(exc)[0] == "NoSuchEntity"


def test_roles(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("writer")
    trust = trust_of(f"arn:aws:iam::{ACCOUNT}:root")
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, MaxSessionDuration=7200)
    assert role["Role"]["RoleId"].startswith("AROA")
    got = iam.get_role(RoleName=name)["Role"]
    assert got["AssumeRolePolicyDocument"] == json.loads(trust)
    assert got["MaxSessionDuration"] == 7200
    with pytest.raises(ClientError) as exc:
        iam.create_role(
            RoleName=unique("bad"),
            AssumeRolePolicyDocument=policy({"Effect": "Allow", "Action": "sts:AssumeRole"}),
        )
    assert error_of(exc)[0] == "MalformedPolicyDocument"
    iam.attach_role_policy(RoleName=name, PolicyArn=READ_ONLY)
    with pytest.raises(ClientError) as exc:
        iam.delete_role(RoleName=name)
    assert error_of(exc)[0] == "DeleteConflict"
    iam.detach_role_policy(RoleName=name, PolicyArn=READ_ONLY)
    iam.delete_role(RoleName=name)
    assert name not in [r["RoleName"] for r in iam.list_roles()["Roles"]]


def test_a_user_without_policies_may_do_nothing(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("eve")
    user_arn = iam.create_user(UserName=name)["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]

    with pytest.raises(ClientError) as exc:
        as_key(daemon, "iam", key).list_users()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_of(exc) == (
        "AccessDenied",
        f"User: {user_arn} is not authorized to perform: iam:ListUsers on resource: * "
        "because no identity-based policy allows the iam:ListUsers action",
    )
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sagemaker", key).list_mlflow_tracking_servers()
    assert error_of(exc)[0] == "AccessDeniedException"
    # Who am I is never refused.
    assert as_key(daemon, "sts", key).get_caller_identity()["Arn"] == user_arn

    # Granted through a group, the permission applies at once (no stale cache).
    group = unique("listers")
    iam.create_group(GroupName=group)
    iam.put_group_policy(
        GroupName=group,
        PolicyName="list",
        PolicyDocument=policy({"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}),
    )
    iam.add_user_to_group(GroupName=group, UserName=name)
    assert as_key(daemon, "iam", key).list_users()["Users"]
    iam.remove_user_from_group(GroupName=group, UserName=name)
    with pytest.raises(ClientError):
        as_key(daemon, "iam", key).list_users()


def test_unsigned_and_badly_signed_query_calls(daemon: Daemon) -> None:
    key, _ = daemon.credentials
    wrong = boto3.client(
        "iam",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="x" * 40,
    )
    with pytest.raises(ClientError) as exc:
        wrong.list_users()
    assert error_of(exc)[0] == "SignatureDoesNotMatch"
    unknown = boto3.client(
        "sts",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id="AKIAUNKNOWNUNKNOWN00",
        aws_secret_access_key="x" * 40,
    )
    with pytest.raises(ClientError) as exc:
        unknown.get_caller_identity()
    assert error_of(exc) == (
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
    )


def cli(daemon: Daemon, service: str, *args: str, check: bool = True) -> Any:
    return aws(daemon, *args, check=check, service=service)


def test_aws_cli_iam_and_sts(daemon: Daemon) -> None:
    name = unique("cli")
    created = json.loads(cli(daemon, "iam", "create-user", "--user-name", name).stdout)
    assert created["User"]["UserName"] == name
    cli(
        daemon,
        "iam",
        "attach-user-policy",
        "--user-name",
        name,
        "--policy-arn",
        "arn:aws:iam::aws:policy/MlfleetDataScientistAccess",
    )
    simulated = json.loads(
        cli(
            daemon,
            "iam",
            "simulate-principal-policy",
            "--policy-source-arn",
            created["User"]["Arn"],
            "--action-names",
            "sagemaker-mlflow:LogMetric",
            "sagemaker-mlflow:DeleteRun",
        ).stdout
    )
    decisions = {r["EvalActionName"]: r["EvalDecision"] for r in simulated["EvaluationResults"]}
    assert decisions == {
        "sagemaker-mlflow:LogMetric": "allowed",
        "sagemaker-mlflow:DeleteRun": "implicitDeny",
    }
    who = json.loads(cli(daemon, "sts", "get-caller-identity").stdout)
    assert who["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/admin"
    refused = cli(daemon, "iam", "get-user", "--user-name", "nobody-" + name, check=False)
    assert refused.returncode != 0
    assert "NoSuchEntity" in refused.stderr
