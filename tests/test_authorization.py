"""Authorization with the real clients: IAM policies decide what each identity may do.

Control plane through boto3, data plane through the MLflow client (HTTP Basic), the
sagemaker-mlflow plugin (SigV4, temporary credentials) and raw HTTP for every mapped route.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support.aws import ACCOUNT, error_of, unique
from support.daemon import Daemon
from support.iam import DATA_SCIENTIST, READ_ONLY, as_key, new_user, policy, trust_of

ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
ACTION_TABLE = Path(__file__).parents[1] / "src/mlfleet/mlflow_api/action_table.json"


def mlflow_as(monkeypatch: pytest.MonkeyPatch, user: dict[str, Any], url: str) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user["AccessKeyId"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user["SecretAccessKey"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=url)


def get_as(user: dict[str, Any], url: str) -> requests.Response:
    return requests.get(url, auth=(user["AccessKeyId"], user["SecretAccessKey"]), timeout=30)


@pytest.fixture(scope="module")
def seeded_run(daemon: Daemon, shared_server: dict[str, Any]) -> dict[str, str]:
    """An experiment and a run logged by the admin, for others to read."""
    key, secret = daemon.credentials
    url = shared_server["TrackingServerUrl"]
    auth = {"MLFLOW_TRACKING_USERNAME": key, "MLFLOW_TRACKING_PASSWORD": secret}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in auth.items():
            patch.setenv(name, value)
        admin = MlflowClient(tracking_uri=url)
        exp_id = admin.create_experiment(unique("authz"))
        run_id = admin.create_run(exp_id).info.run_id
        admin.log_metric(run_id, "acc", 0.9)
    return {"experiment_id": exp_id, "run_id": run_id}


def test_read_only_user_reads_runs_but_cannot_log(
    daemon: Daemon,
    shared_server: dict[str, Any],
    seeded_run: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = new_user(daemon, READ_ONLY)
    client = mlflow_as(monkeypatch, reader, shared_server["TrackingServerUrl"])
    run = client.get_run(seeded_run["run_id"])
    assert run.data.metrics["acc"] == pytest.approx(0.9)
    assert client.search_runs([seeded_run["experiment_id"]])

    with pytest.raises(MlflowException) as exc:
        client.log_metric(seeded_run["run_id"], "acc", 1.0)
    message = str(exc.value)
    assert "PERMISSION_DENIED" in message or "403" in message
    assert (
        f"User: {reader['Arn']} is not authorized to perform: sagemaker-mlflow:LogMetric on "
        f"resource: {shared_server['TrackingServerArn']}"
    ) in message
    with pytest.raises(MlflowException, match="sagemaker-mlflow:CreateExperiment"):
        client.create_experiment(unique("nope"))
    # Nothing was written.
    assert len(client.get_metric_history(seeded_run["run_id"], "acc")) == 1


def test_control_plane_actions_and_pass_role(daemon: Daemon) -> None:
    scientist = new_user(daemon, DATA_SCIENTIST)
    sm = as_key(daemon, "sagemaker", scientist)
    assert sm.describe_mlflow_tracking_server(TrackingServerName="shared")["TrackingServerName"]
    name = unique("mine")
    with pytest.raises(ClientError) as exc:
        sm.create_mlflow_tracking_server(
            TrackingServerName=name, ArtifactStoreUri="file:/tmp/x", RoleArn=ROLE
        )
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_of(exc) == (
        "AccessDeniedException",
        f"User: {scientist['Arn']} is not authorized to perform: "
        f"sagemaker:CreateMlflowTrackingServer on resource: "
        f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/{name} "
        "because no identity-based policy allows the sagemaker:CreateMlflowTrackingServer action",
    )
    with pytest.raises(ClientError) as exc:
        sm.stop_mlflow_tracking_server(TrackingServerName="shared")
    assert "sagemaker:StopMlflowTrackingServer" in error_of(exc)[1]

    # Creating a server also passes its role: without iam:PassRole nothing is created.
    creator = new_user(
        daemon,
        inline=policy(
            {"Effect": "Allow", "Action": "sagemaker:CreateMlflowTrackingServer", "Resource": "*"}
        ),
    )
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sagemaker", creator).create_mlflow_tracking_server(
            TrackingServerName=name, ArtifactStoreUri="file:/tmp/x", RoleArn=ROLE
        )
    assert f"iam:PassRole on resource: {ROLE}" in error_of(exc)[1]
    listed = daemon.client().list_mlflow_tracking_servers()["TrackingServerSummaries"]
    assert name not in [s["TrackingServerName"] for s in listed]


def test_request_tag_condition_on_create(daemon: Daemon) -> None:
    """aws:RequestTag / aws:TagKeys: creates must carry the team's tag."""
    iam = daemon.client("iam")
    user = new_user(
        daemon,
        inline=policy(
            {
                "Effect": "Allow",
                "Action": "sagemaker:CreateMlflowTrackingServer",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:RequestTag/team": "${aws:username}"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["team"]},
                },
            },
            {"Effect": "Allow", "Action": "iam:PassRole", "Resource": ROLE},
        ),
    )
    user_name = user["Arn"].rsplit("/", 1)[1]
    sm = as_key(daemon, "sagemaker", user)
    name = unique("tagged")
    with pytest.raises(ClientError) as exc:
        sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri="file:/tmp/x",
            RoleArn=ROLE,
            Tags=[{"Key": "team", "Value": "someone-else"}],
        )
    assert error_of(exc)[0] == "AccessDeniedException"
    assert iam.get_user(UserName=user_name)  # still there: only the create was refused


@pytest.fixture(scope="module")
def prod_server(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sm = daemon.client()
    name = unique("prod")
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp('prod-artifacts')}",
        RoleArn=ROLE,
        Tags=[{"Key": "env", "Value": "prod"}],
    )
    desc = daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    yield desc["TrackingServerUrl"]
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


def test_resource_tag_deny_blocks_one_server_not_another(
    daemon: Daemon, shared_server: dict[str, Any], prod_server: str
) -> None:
    user = new_user(
        daemon,
        DATA_SCIENTIST,
        inline=policy(
            {
                "Sid": "NoProd",
                "Effect": "Deny",
                "Action": ["sagemaker-mlflow:*", "sagemaker:*"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}},
            }
        ),
    )
    search = "/api/2.0/mlflow/experiments/search?max_results=5"
    assert get_as(user, shared_server["TrackingServerUrl"] + search).status_code == 200
    refused = get_as(user, prod_server + search)
    assert refused.status_code == 403
    assert refused.json()["error_code"] == "PERMISSION_DENIED"
    assert "with an explicit deny in an identity-based policy" in refused.json()["message"]

    sm = as_key(daemon, "sagemaker", user)
    sm.describe_mlflow_tracking_server(TrackingServerName="shared")
    with pytest.raises(ClientError) as exc:
        sm.describe_mlflow_tracking_server(TrackingServerName=prod_server.rsplit("/", 1)[1])
    assert error_of(exc)[0] == "AccessDeniedException"


def test_source_ip_condition(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    iam = daemon.client("iam")

    def only_from(network: str) -> str:
        return policy(
            {
                "Effect": "Allow",
                "Action": "sagemaker-mlflow:*",
                "Resource": "*",
                "Condition": {"IpAddress": {"aws:SourceIp": network}},
            }
        )

    user = new_user(daemon, inline=only_from("10.0.0.0/8"))
    url = shared_server["TrackingServerUrl"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert get_as(user, url).status_code == 403
    # Changing the policy takes effect on the next request: cached decisions are dropped.
    iam.put_user_policy(
        UserName=user["Arn"].rsplit("/", 1)[1],
        PolicyName="inline",
        PolicyDocument=only_from("127.0.0.0/8"),
    )
    assert get_as(user, url).status_code == 200


def test_assumed_role_works_until_its_credentials_expire(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = daemon.client("iam")
    caller = new_user(daemon)  # no policies: the trust policy names it, which is enough
    role_name = unique("ci-writer")
    role_arn = iam.create_role(
        RoleName=role_name, AssumeRolePolicyDocument=trust_of(caller["Arn"])
    )["Role"]["Arn"]
    iam.attach_role_policy(RoleName=role_name, PolicyArn=DATA_SCIENTIST)

    # botocore checks AWS's 900-second floor itself; this daemon's floor is lower (conftest).
    sts = as_key(daemon, "sts", caller, config=Config(parameter_validation=False))
    # Credentials that outlive the test on a slow machine for the calls that must work; one
    # second ones for those that must not, once expired.
    assumed = sts.assume_role(RoleArn=role_arn, RoleSessionName="nightly", DurationSeconds=900)
    creds = assumed["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    assumed_arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/nightly"
    assert assumed["AssumedRoleUser"]["Arn"] == assumed_arn
    temporary = as_key(daemon, "sts", creds)
    assert temporary.get_caller_identity()["Arn"] == assumed_arn

    # The sagemaker-mlflow plugin signs with the session token.
    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", daemon.url)
    _sign_with(monkeypatch, creds)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server["TrackingServerArn"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient()
    exp_id = client.create_experiment(unique("from-role"))
    with pytest.raises(MlflowException, match="sagemaker-mlflow:DeleteExperiment"):
        client.delete_experiment(exp_id)  # the role's policy has no deletes

    # Without its session token the temporary key is no credential at all.
    no_token = as_key(daemon, "sts", {**creds, "SessionToken": None})
    with pytest.raises(ClientError) as exc:
        no_token.get_caller_identity()
    assert error_of(exc)[0] == "InvalidClientTokenId"

    brief = sts.assume_role(RoleArn=role_arn, RoleSessionName="brief", DurationSeconds=1)
    brief_creds = brief["Credentials"]
    time.sleep(max(0.0, brief_creds["Expiration"].timestamp() - time.time()) + 0.5)
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sts", brief_creds).get_caller_identity()
    assert error_of(exc) == (
        "ExpiredToken",
        "The security token included in the request is expired",
    )
    _sign_with(monkeypatch, brief_creds)
    with pytest.raises(MlflowException, match="expired"):
        MlflowClient().get_experiment(exp_id)


def _sign_with(monkeypatch: pytest.MonkeyPatch, creds: dict[str, Any]) -> None:
    """What the sagemaker-mlflow plugin signs its next calls with."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])


def test_assume_role_refusals(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    stranger = new_user(daemon)
    account_trusting = iam.create_role(
        RoleName=unique("account-trust"),
        AssumeRolePolicyDocument=trust_of(f"arn:aws:iam::{ACCOUNT}:root"),
    )["Role"]["Arn"]
    # Trusting the account is not enough: the caller's own policies must allow it too.
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sts", stranger).assume_role(
            RoleArn=account_trusting, RoleSessionName="probe"
        )
    assert error_of(exc) == (
        "AccessDenied",
        f"User: {stranger['Arn']} is not authorized to perform: sts:AssumeRole on resource: "
        f"{account_trusting} because no identity-based policy allows the sts:AssumeRole action",
    )
    allowed = new_user(
        daemon,
        inline=policy(
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": account_trusting}
        ),
    )
    got = as_key(daemon, "sts", allowed).assume_role(
        RoleArn=account_trusting, RoleSessionName="probe"
    )
    assert got["Credentials"]["SessionToken"]

    # A role that trusts someone else, and a role that does not exist, are both refused.
    other = iam.create_role(
        RoleName=unique("other"), AssumeRolePolicyDocument=trust_of(stranger["Arn"])
    )["Role"]["Arn"]
    for role_arn in (other, f"arn:aws:iam::{ACCOUNT}:role/{unique('missing')}"):
        with pytest.raises(ClientError) as exc:
            as_key(daemon, "sts", allowed).assume_role(RoleArn=role_arn, RoleSessionName="probe")
        assert error_of(exc)[0] == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sts", stranger).assume_role(
            RoleArn=other, RoleSessionName="probe", DurationSeconds=7200
        )
    assert error_of(exc)[0] == "ValidationError"
    assert "MaxSessionDuration" in error_of(exc)[1]


def test_ui_session_acts_with_its_owners_permissions(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    reader = new_user(daemon, READ_ONLY)
    url = as_key(daemon, "sagemaker", reader).create_presigned_mlflow_tracking_server_url(
        TrackingServerName="shared"
    )["AuthorizedUrl"]
    browser = requests.Session()
    assert browser.get(url, timeout=30).status_code == 200  # AccessUI: the UI page
    base = shared_server["TrackingServerUrl"]
    searched = browser.get(f"{base}/ajax-api/2.0/mlflow/experiments/search?max_results=1")
    assert searched.status_code == 200
    created = browser.post(
        f"{base}/ajax-api/2.0/mlflow/experiments/create", json={"name": unique("ui")}
    )
    assert created.status_code == 403
    assert "sagemaker-mlflow:CreateExperiment" in created.json()["message"]

    # Without AccessUI, the API still works but the UI does not open.
    api_only = new_user(
        daemon,
        inline=policy({"Effect": "Allow", "Action": "sagemaker-mlflow:Search*", "Resource": "*"}),
    )
    assert get_as(api_only, base + "/").status_code == 403
    assert (
        get_as(api_only, base + "/api/2.0/mlflow/experiments/search?max_results=1").status_code
        == 200
    )


def _representative_requests() -> dict[str, tuple[str, str]]:
    """One (method, path) per action, preferring /api/ routes and reads."""
    routes = json.loads(ACTION_TABLE.read_text())["routes"]
    order = {"GET": 0, "POST": 1, "PATCH": 2, "PUT": 3, "DELETE": 4}
    chosen: dict[str, tuple[str, str]] = {}
    for route, requirement in sorted(
        routes.items(),
        key=lambda item: ("/ajax-api/" in item[0], order.get(item[0].split()[0], 9), item[0]),
    ):
        action = requirement.get("action")
        if action and action not in chosen:
            method, template = route.split(" ", 1)
            chosen[action] = (method, _fill(template))
    return chosen


def _fill(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(2)
        return "authz-probe/file.txt" if match.group(1) == "path" else f"probe-{name}"

    return re.sub(r"<(?:(\w+):)?(\w+)>", value, template)


@pytest.mark.parametrize("managed", [DATA_SCIENTIST, READ_ONLY])
def test_simulate_principal_policy_agrees_with_the_gateway_for_every_action(
    daemon: Daemon, shared_server: dict[str, Any], managed: str
) -> None:
    requests_by_action = _representative_requests()
    extensions = {a for a in requests_by_action if a.startswith("mlfleet-mlflow:")}
    assert len(requests_by_action) - len(extensions) == 61
    user = new_user(daemon, managed)
    server_arn = shared_server["TrackingServerArn"]
    # More than one page of results (100 by default), as IAM pages them.
    pages = daemon.client("iam").get_paginator("simulate_principal_policy")
    simulated = [
        result
        for page in pages.paginate(
            PolicySourceArn=user["Arn"],
            ActionNames=sorted(requests_by_action),
            ResourceArns=[server_arn],
        )
        for result in page["EvaluationResults"]
    ]
    decisions = {r["EvalActionName"]: r["EvalDecision"] for r in simulated}
    assert len(decisions) == len(requests_by_action)
    assert set(decisions.values()) == {"allowed", "implicitDeny"}

    auth = (user["AccessKeyId"], user["SecretAccessKey"])
    base = shared_server["TrackingServerUrl"]
    disagreements = []
    for action, (method, path) in sorted(requests_by_action.items()):
        body = b"" if method in ("GET", "DELETE") else b"{}"
        answer = requests.request(
            method,
            base + path,
            data=body,
            auth=auth,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        refused = answer.status_code == 403 and action in answer.text
        if refused != (decisions[action] != "allowed"):
            disagreements.append((action, method, path, answer.status_code, answer.text[:200]))
    assert not disagreements


def test_tag_changes_apply_to_the_next_request(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    sm, arn = daemon.client(), shared_server["TrackingServerArn"]
    marker = unique("blocked")
    user = new_user(
        daemon,
        READ_ONLY,
        inline=policy(
            {
                "Effect": "Deny",
                "Action": "sagemaker-mlflow:*",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:ResourceTag/quarantine": marker}},
            }
        ),
    )
    url = shared_server["TrackingServerUrl"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert get_as(user, url).status_code == 200
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "quarantine", "Value": marker}])
    try:
        assert get_as(user, url).status_code == 403
        # Tagging is itself authorized: a read-only user may not lift the quarantine.
        with pytest.raises(ClientError) as exc:
            as_key(daemon, "sagemaker", user).delete_tags(ResourceArn=arn, TagKeys=["quarantine"])
        assert "sagemaker:DeleteTags" in error_of(exc)[1]
    finally:
        sm.delete_tags(ResourceArn=arn, TagKeys=["quarantine"])
    assert get_as(user, url).status_code == 200
