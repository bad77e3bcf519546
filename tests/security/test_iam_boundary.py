"""IAM permissions boundaries and the policy Version rule, through the real boto3 clients.

A boundary the administrator sets must hold: whatever the identity policies of a user or role
allow, the user, the role's sessions and the MLflow gateway do only what the boundary allows too.

No tracking server is needed: authorization is decided before a server's existence or a
request's content is looked at, so "allowed" shows as the operation's own refusal (no such
server, an unavailable MLflow version) and "denied" as the access error.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from support.daemon import Daemon

ACCOUNT = "123456789012"
SERVER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
SERVER_NAME = "never-created"
SERVER_ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/{SERVER_NAME}"
READ_ONLY = "arn:aws:iam::aws:policy/MlfleetReadOnlyAccess"
ADMINISTRATOR = "arn:aws:iam::aws:policy/AdministratorAccess"
CREATE = "sagemaker:CreateMlflowTrackingServer"
PATH = "/boundary-tests/"  # lists stay short whatever else the shared daemon holds
MUST_BE_CURRENT = "Policy document must be version 2012-10-17 or greater."


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": "*"}


EVERYTHING = policy(allow("*"))


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return err["Code"], err["Message"]


def as_key(daemon: Daemon, service: str, key: dict[str, Any]):  # type: ignore[no-untyped-def]
    return boto3.client(
        service,
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        aws_session_token=key.get("SessionToken"),
    )


def managed_policy(daemon: Daemon, document: str) -> str:
    iam = daemon.client("iam")
    return str(
        iam.create_policy(PolicyName=unique("boundary"), PolicyDocument=document)["Policy"]["Arn"]
    )


def new_user(daemon: Daemon, inline: str, **create: Any) -> dict[str, Any]:
    """A user with one inline policy and an access key: {"UserName", "Arn", "AccessKeyId", …}."""
    iam = daemon.client("iam")
    name = unique("bounded")
    arn = iam.create_user(UserName=name, **create)["User"]["Arn"]
    iam.put_user_policy(UserName=name, PolicyName="inline", PolicyDocument=inline)
    return {**iam.create_access_key(UserName=name)["AccessKey"], "Arn": arn}


def trusting_the_account() -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def create_refused(sm: Any) -> tuple[str, str]:
    """What a create that can never succeed answers: refused by IAM, or (let through) refused
    by the operation itself (ValidationException: no such MLflow version)."""
    with pytest.raises(ClientError) as exc:
        sm.create_mlflow_tracking_server(
            TrackingServerName=SERVER_NAME,
            ArtifactStoreUri="s3://mlfleet-boundary-tests/artifacts",
            RoleArn=SERVER_ROLE,
            MlflowVersion="0.1",
        )
    return error_of(exc)


def describe_allowed(sm: Any) -> None:
    with pytest.raises(ClientError) as exc:
        sm.describe_mlflow_tracking_server(TrackingServerName=SERVER_NAME)
    assert error_of(exc)[0] == "ResourceNotFound"


def no_boundary_allows(who: str, action: str, resource: str) -> str:
    return (
        f"User: {who} is not authorized to perform: {action} on resource: {resource} "
        f"because no permissions boundary allows the {action} action"
    )


def test_a_users_boundary_caps_an_administrators_inline_policy(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    describe_only = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    user = new_user(daemon, EVERYTHING, PermissionsBoundary=describe_only, Path=PATH)
    name = user["UserName"]
    boundary = {"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": describe_only}
    assert iam.get_user(UserName=name)["User"]["PermissionsBoundary"] == boundary
    listed = [u for u in iam.list_users(PathPrefix=PATH)["Users"] if u["UserName"] == name]
    assert listed and "PermissionsBoundary" not in listed[0]  # as IAM's ListUsers

    sm = as_key(daemon, "sagemaker", user)
    describe_allowed(sm)
    assert create_refused(sm) == (
        "AccessDeniedException",
        no_boundary_allows(user["Arn"], CREATE, SERVER_ARN),
    )
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "iam", user).list_users()
    assert error_of(exc) == (
        "AccessDenied",
        no_boundary_allows(user["Arn"], "iam:ListUsers", "*"),
    )

    # Removing the boundary gives the inline policy its full effect at once.
    iam.delete_user_permissions_boundary(UserName=name)
    assert "PermissionsBoundary" not in iam.get_user(UserName=name)["User"]
    assert create_refused(sm)[0] == "ValidationException"
    # And setting one again takes it away at once (no cached decision survives).
    iam.put_user_permissions_boundary(UserName=name, PermissionsBoundary=describe_only)
    assert create_refused(sm)[0] == "AccessDeniedException"

    cloudtrail = daemon.client("cloudtrail")
    for operation in ("PutUserPermissionsBoundary", "DeleteUserPermissionsBoundary"):
        found = cloudtrail.lookup_events(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": operation}]
        )["Events"]
        records = [json.loads(e["CloudTrailEvent"]) for e in found]
        assert any(r["requestParameters"]["userName"] == name for r in records), operation
        assert all(r["eventSource"] == "iam.amazonaws.com" for r in records)


def test_an_explicit_deny_in_the_boundary_wins(daemon: Daemon) -> None:
    no_creates = managed_policy(
        daemon, policy(allow("*"), {"Effect": "Deny", "Action": CREATE, "Resource": "*"})
    )
    user = new_user(daemon, EVERYTHING, PermissionsBoundary=no_creates)
    assert create_refused(as_key(daemon, "sagemaker", user)) == (
        "AccessDeniedException",
        f"User: {user['Arn']} is not authorized to perform: {CREATE} on resource: {SERVER_ARN} "
        "with an explicit deny in a permissions boundary",
    )


def test_a_roles_boundary_applies_to_its_sessions(daemon: Daemon) -> None:
    iam, sts = daemon.client("iam"), daemon.client("sts")
    describe_only = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    name = unique("bounded-role")
    created = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=trusting_the_account(),
        PermissionsBoundary=describe_only,
        Path=PATH,
    )["Role"]
    boundary = {"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": describe_only}
    assert created["PermissionsBoundary"] == boundary
    assert iam.get_role(RoleName=name)["Role"]["PermissionsBoundary"] == boundary
    listed = [r for r in iam.list_roles(PathPrefix=PATH)["Roles"] if r["RoleName"] == name]
    assert listed and "PermissionsBoundary" not in listed[0]  # as IAM's ListRoles
    iam.put_role_policy(RoleName=name, PolicyName="all", PolicyDocument=EVERYTHING)

    assumed = sts.assume_role(RoleArn=created["Arn"], RoleSessionName="capped")
    session = {**assumed["Credentials"]}
    sm = as_key(daemon, "sagemaker", session)
    describe_allowed(sm)
    assert create_refused(sm) == (
        "AccessDeniedException",
        no_boundary_allows(assumed["AssumedRoleUser"]["Arn"], CREATE, SERVER_ARN),
    )

    iam.delete_role_permissions_boundary(RoleName=name)
    assert "PermissionsBoundary" not in iam.get_role(RoleName=name)["Role"]
    assert create_refused(sm)[0] == "ValidationException"
    iam.put_role_permissions_boundary(RoleName=name, PermissionsBoundary=READ_ONLY)
    assert iam.get_role(RoleName=name)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == (
        READ_ONLY
    )
    assert create_refused(sm)[0] == "AccessDeniedException"


def test_a_users_boundary_must_allow_assuming_an_account_trusting_role(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    role = iam.create_role(
        RoleName=unique("trusting"), AssumeRolePolicyDocument=trusting_the_account()
    )["Role"]
    describe_only = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    user = new_user(daemon, EVERYTHING, PermissionsBoundary=describe_only)
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sts", user).assume_role(RoleArn=role["Arn"], RoleSessionName="capped")
    assert error_of(exc)[0] == "AccessDenied"
    iam.delete_user_permissions_boundary(UserName=user["UserName"])
    as_key(daemon, "sts", user).assume_role(RoleArn=role["Arn"], RoleSessionName="capped")


def test_the_boundary_also_holds_at_the_mlflow_gateway(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    reads = managed_policy(daemon, policy(allow(["sagemaker-mlflow:Search*"])))
    name = unique("bounded-admin")
    iam.create_user(UserName=name, PermissionsBoundary=reads)
    iam.attach_user_policy(UserName=name, PolicyArn=ADMINISTRATOR)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    auth = (key["AccessKeyId"], key["SecretAccessKey"])
    api = f"{daemon.url}/mlflow/{SERVER_NAME}/api/2.0/mlflow/experiments"

    searched = requests.post(f"{api}/search", json={"max_results": 1}, auth=auth, timeout=30)
    assert searched.status_code == 404, searched.text  # allowed: only then told there is none
    assert searched.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    created = requests.post(f"{api}/create", json={"name": unique("e")}, auth=auth, timeout=30)
    assert created.status_code == 403
    assert created.json()["error_code"] == "PERMISSION_DENIED"
    assert created.json()["message"].endswith(
        "because no permissions boundary allows the sagemaker-mlflow:CreateExperiment action"
    )


def test_simulate_principal_policy_reports_the_boundary(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    describe_only = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    bounded = new_user(daemon, EVERYTHING, PermissionsBoundary=describe_only)
    free = new_user(daemon, EVERYTHING)
    actions = ["sagemaker:DescribeMlflowTrackingServer", CREATE]

    def simulate(user: dict[str, Any], **extra: Any) -> dict[str, dict[str, Any]]:
        results = iam.simulate_principal_policy(
            PolicySourceArn=user["Arn"], ActionNames=actions, **extra
        )["EvaluationResults"]
        return {r["EvalActionName"]: r for r in results}

    capped = simulate(bounded)
    assert capped[actions[0]]["EvalDecision"] == "allowed"
    assert capped[actions[0]]["PermissionsBoundaryDecisionDetail"] == {
        "AllowedByPermissionsBoundary": True
    }
    assert capped[CREATE]["EvalDecision"] == "implicitDeny"
    assert capped[CREATE]["PermissionsBoundaryDecisionDetail"] == {
        "AllowedByPermissionsBoundary": False
    }

    unbounded = simulate(free)
    assert {r["EvalDecision"] for r in unbounded.values()} == {"allowed"}
    assert all("PermissionsBoundaryDecisionDetail" not in r for r in unbounded.values())

    # A boundary given to the simulation takes the place of the user's own.
    replaced = simulate(bounded, PermissionsBoundaryPolicyInputList=[policy(allow(CREATE))])
    assert replaced[CREATE]["EvalDecision"] == "allowed"
    assert replaced[actions[0]]["EvalDecision"] == "implicitDeny"


def test_a_boundary_must_be_an_existing_managed_policy(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    missing = f"arn:aws:iam::{ACCOUNT}:policy/{unique('nowhere')}"
    scope_error = ("NoSuchEntity", f"Scope ARN: {missing} does not exist or is not attachable.")
    name = unique("user")
    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName=name, PermissionsBoundary=missing)
    assert error_of(exc) == scope_error
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        iam.get_user(UserName=name)  # nothing was created
    assert error_of(exc)[0] == "NoSuchEntity"
    with pytest.raises(ClientError) as exc:
        iam.create_role(
            RoleName=unique("role"),
            AssumeRolePolicyDocument=trusting_the_account(),
            PermissionsBoundary=missing,
        )
    assert error_of(exc) == scope_error

    iam.create_user(UserName=name, PermissionsBoundary=READ_ONLY)  # AWS managed ones count
    with pytest.raises(ClientError) as exc:
        iam.put_user_permissions_boundary(UserName=name, PermissionsBoundary=missing)
    assert error_of(exc) == scope_error
    assert iam.get_user(UserName=name)["User"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == (
        READ_ONLY
    )
    with pytest.raises(ClientError) as exc:
        iam.put_user_permissions_boundary(UserName=unique("nobody"), PermissionsBoundary=READ_ONLY)
    assert error_of(exc)[0] == "NoSuchEntity"
    with pytest.raises(ClientError) as exc:
        iam.delete_role_permissions_boundary(RoleName=unique("nobody"))
    assert error_of(exc)[0] == "NoSuchEntity"


def test_a_policy_in_use_as_a_boundary_cannot_be_deleted(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    arn = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    name = unique("user")
    iam.create_user(UserName=name, PermissionsBoundary=arn)
    got = iam.get_policy(PolicyArn=arn)["Policy"]
    assert (got["AttachmentCount"], got["PermissionsBoundaryUsageCount"]) == (0, 1)
    with pytest.raises(ClientError) as exc:
        iam.delete_policy(PolicyArn=arn)
    assert error_of(exc) == ("DeleteConflict", "Cannot delete a policy attached to entities.")

    iam.delete_user_permissions_boundary(UserName=name)
    assert iam.get_policy(PolicyArn=arn)["Policy"]["PermissionsBoundaryUsageCount"] == 0
    iam.delete_policy(PolicyArn=arn)
    iam.delete_user(UserName=name)


def test_a_delegated_administrator_may_create_users_only_within_the_boundary(
    daemon: Daemon,
) -> None:
    boundary = managed_policy(daemon, policy(allow("sagemaker:Describe*")))
    delegate = new_user(
        daemon,
        policy(
            {
                "Effect": "Allow",
                "Action": ["iam:CreateUser", "iam:PutUserPermissionsBoundary"],
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:PermissionsBoundary": boundary}},
            }
        ),
    )
    iam = as_key(daemon, "iam", delegate)
    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName=unique("free"))
    assert error_of(exc)[0] == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName=unique("other"), PermissionsBoundary=READ_ONLY)
    assert error_of(exc)[0] == "AccessDenied"
    name = unique("capped")
    iam.create_user(UserName=name, PermissionsBoundary=boundary)
    with pytest.raises(ClientError) as exc:
        iam.put_user_permissions_boundary(UserName=name, PermissionsBoundary=READ_ONLY)
    assert error_of(exc)[0] == "AccessDenied"


NOT_CURRENT = {
    "no Version": {"Statement": [allow("sagemaker:Describe*")]},
    "2008-10-17": {"Version": "2008-10-17", "Statement": [allow("sagemaker:Describe*")]},
}


@pytest.mark.parametrize("document", NOT_CURRENT.values(), ids=NOT_CURRENT.keys())
@pytest.mark.parametrize(
    "operation", ["CreatePolicy", "PutUserPolicy", "PutGroupPolicy", "PutRolePolicy"]
)
def test_identity_policies_must_use_the_current_language_version(
    daemon: Daemon, document: dict[str, Any], operation: str
) -> None:
    iam = daemon.client("iam")
    owner = unique("owner")
    if operation == "PutUserPolicy":
        iam.create_user(UserName=owner)
    elif operation == "PutGroupPolicy":
        iam.create_group(GroupName=owner)
    elif operation == "PutRolePolicy":
        iam.create_role(RoleName=owner, AssumeRolePolicyDocument=trusting_the_account())
    kind = operation.removeprefix("Put").removesuffix("Policy")
    params = (
        {"PolicyName": owner}
        if operation == "CreatePolicy"
        else {f"{kind}Name": owner, "PolicyName": "p"}
    )
    call = getattr(
        iam, {"CreatePolicy": "create_policy"}.get(operation, f"put_{kind.lower()}_policy")
    )
    with pytest.raises(ClientError) as exc:
        call(**params, PolicyDocument=json.dumps(document))
    assert error_of(exc) == ("MalformedPolicyDocument", MUST_BE_CURRENT)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    call(**params, PolicyDocument=json.dumps({**document, "Version": "2012-10-17"}))


def test_an_unknown_version_is_malformed_and_trust_policies_keep_the_legacy_one(
    daemon: Daemon,
) -> None:
    iam = daemon.client("iam")
    with pytest.raises(ClientError) as exc:
        iam.create_policy(
            PolicyName=unique("p"),
            PolicyDocument=json.dumps(
                {"Version": "2013-10-17", "Statement": [allow("sagemaker:Describe*")]}
            ),
        )
    assert error_of(exc)[0] == "MalformedPolicyDocument"
    assert error_of(exc)[1] != MUST_BE_CURRENT
    legacy_trust = json.loads(trusting_the_account()) | {"Version": "2008-10-17"}
    role = iam.create_role(
        RoleName=unique("legacy-trust"), AssumeRolePolicyDocument=json.dumps(legacy_trust)
    )["Role"]
    assert role["AssumeRolePolicyDocument"]["Version"] == "2008-10-17"
