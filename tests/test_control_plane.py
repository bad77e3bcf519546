"""The SageMaker control plane through boto3: validation, errors, authentication, listing."""

from __future__ import annotations

import configparser
import datetime as dt
import json
import time
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from support.daemon import Daemon

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def error_of(call, **params: Any) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as info:
        call(**params)
    err = info.value.response["Error"]
    return err["Code"], err["Message"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (
            {"TrackingServerName": "bad_name!"},
            "Value 'bad_name!' at 'trackingServerName' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern",
        ),
        ({"TrackingServerName": "a" * 257}, "Member must have length less than or equal to 256"),
        (
            {"TrackingServerSize": "Huge"},
            "Member must satisfy enum value set: [Small, Medium, Large]",
        ),
        ({"RoleArn": "arn:aws:iam::12:role/x" + "y"}, "at 'roleArn' failed to satisfy constraint"),
        ({"MlflowVersion": "1.2.3.4.5.6.7.8.9"}, "at 'mlflowVersion'"),
        ({"WeeklyMaintenanceWindowStart": "Xyz:25:00"}, "at 'weeklyMaintenanceWindowStart'"),
        ({"S3BucketOwnerAccountId": "abcdefghijkl"}, "at 's3BucketOwnerAccountId'"),
        ({"ArtifactStoreUri": "ftp://x/y"}, "at 'artifactStoreUri'"),
        (
            {"Tags": [{"Key": "k", "Value": "v"}] * 51},
            "Member must have length less than or equal to 50",
        ),
        ({"Tags": [{"Key": "bad#key", "Value": "v"}]}, "at 'tags.1.member.key'"),
    ],
)
def test_create_validation(daemon: Daemon, params: dict[str, Any], fragment: str) -> None:
    base = {"TrackingServerName": "valid", "ArtifactStoreUri": "s3://b/p", "RoleArn": ROLE}
    code, message = error_of(daemon.client().create_mlflow_tracking_server, **{**base, **params})
    assert code == "ValidationException"
    assert fragment in message


def test_several_violations_reported_together(daemon: Daemon) -> None:
    code, message = error_of(
        daemon.client().create_mlflow_tracking_server,
        TrackingServerName="bad_name!",
        ArtifactStoreUri="s3://b/p",
        RoleArn=ROLE,
        TrackingServerSize="Huge",
    )
    assert code == "ValidationException"
    assert message.startswith("2 validation errors detected:")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"ExpiresInSeconds": 999}, "Member must have value less than or equal to 300"),
        ({"SessionExpirationDurationInSeconds": 60000}, "less than or equal to 43200"),
    ],
)
def test_presigned_ranges(daemon: Daemon, params: dict[str, Any], fragment: str) -> None:
    code, message = error_of(
        daemon.client().create_presigned_mlflow_tracking_server_url,
        TrackingServerName="whatever",
        **params,
    )
    assert (code, fragment in message) == ("ValidationException", True)


def test_list_validation(daemon: Daemon) -> None:
    sm = daemon.client()
    code, message = error_of(sm.list_mlflow_tracking_servers, MaxResults=101)
    assert code == "ValidationException" and "less than or equal to 100" in message
    code, message = error_of(sm.list_mlflow_tracking_servers, SortBy="Size")
    assert code == "ValidationException" and "[Name, CreationTime, Status]" in message
    code, _ = error_of(sm.list_mlflow_tracking_servers, NextToken="garbage")
    assert code == "ValidationException"


def test_local_folder_extension_and_s3_only(daemon: Daemon) -> None:
    code, message = error_of(
        daemon.client().create_mlflow_tracking_server,
        TrackingServerName="https-store",
        ArtifactStoreUri="https://bucket.example/prefix",
        RoleArn=ROLE,
    )
    assert code == "ValidationException" and "file:///" in message


@pytest.mark.parametrize(
    "operation",
    [
        "describe_mlflow_tracking_server",
        "delete_mlflow_tracking_server",
        "start_mlflow_tracking_server",
        "stop_mlflow_tracking_server",
        "update_mlflow_tracking_server",
        "create_presigned_mlflow_tracking_server_url",
    ],
)
def test_unknown_server(daemon: Daemon, operation: str) -> None:
    sm = daemon.client()
    code, message = error_of(getattr(sm, operation), TrackingServerName="no-such-server")
    assert code == "ResourceNotFound"
    assert "no-such-server" in message
    with pytest.raises(sm.exceptions.ResourceNotFound):
        getattr(sm, operation)(TrackingServerName="no-such-server")


def test_duplicate_name_and_status_conflicts(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    sm = daemon.client()
    code, message = error_of(
        sm.create_mlflow_tracking_server,
        TrackingServerName="shared",
        ArtifactStoreUri="s3://b/p",
        RoleArn=ROLE,
    )
    assert code == "ValidationException" and "already exists" in message
    code, message = error_of(sm.start_mlflow_tracking_server, TrackingServerName="shared")
    assert code == "ValidationException"
    assert message == (
        f"Tracking Server with ARN {shared_server['TrackingServerArn']} is currently in status "
        "CREATED, can't be started."
    )


def test_unknown_and_unimplemented_operations(daemon: Daemon) -> None:
    sm = daemon.client()
    code, message = error_of(sm.list_training_jobs)
    assert code == "UnknownOperationException" and "ListTrainingJobs" in message
    key, secret = daemon.credentials
    response = signed_post(daemon, key, secret, target="SageMaker.NoSuchThing", body=b"{}")
    assert response.status_code == 400
    assert response.json()["__type"] == "UnknownOperationException"


def test_describe_shape(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    desc = daemon.client().describe_mlflow_tracking_server(TrackingServerName="shared")
    assert desc["TrackingServerArn"] == (
        "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/shared"
    )
    assert desc["TrackingServerSize"] == "Small"
    assert desc["IsActive"] == "Active"
    assert desc["TrackingServerUrl"] == f"{daemon.url}/mlflow/shared"
    assert desc["AutomaticModelRegistration"] is False
    assert isinstance(desc["CreationTime"], dt.datetime)
    assert desc["CreatedBy"]["IamIdentity"]["Arn"] == "arn:aws:iam::123456789012:user/admin"
    assert desc["S3BucketOwnerAccountId"] == "123456789012"


# authentication --------------------------------------------------------------------------------


def signed_post(
    daemon: Daemon,
    key: str,
    secret: str,
    *,
    target: str = "SageMaker.ListMlflowTrackingServers",
    body: bytes = b"{}",
    service: str = "sagemaker",
    region: str = "us-east-1",
    tamper: bool = False,
) -> requests.Response:
    request = AWSRequest(
        method="POST",
        url=daemon.url + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    prepared = request.prepare()
    data = body + b" " if tamper else body
    return requests.post(daemon.url + "/", data=data, headers=dict(prepared.headers), timeout=10)


def test_unsigned_request_refused(daemon: Daemon) -> None:
    response = requests.post(
        daemon.url + "/",
        data=b"{}",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "SageMaker.ListMlflowTrackingServers",
        },
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["__type"] == "MissingAuthenticationToken"


def test_unknown_access_key(daemon: Daemon) -> None:
    sm = daemon.client(key="AKIAUNKNOWNUNKNOWN00", secret="x" * 40)
    code, _ = error_of(sm.list_mlflow_tracking_servers)
    assert code == "UnrecognizedClientException"


def test_wrong_secret(daemon: Daemon) -> None:
    key, _ = daemon.credentials
    code, message = error_of(daemon.client(secret="wrong" * 8).list_mlflow_tracking_servers)
    assert code == "InvalidSignatureException"
    assert "signature we calculated does not match" in message
    assert key not in message


def test_tampered_body_and_scope(daemon: Daemon) -> None:
    key, secret = daemon.credentials
    assert signed_post(daemon, key, secret).status_code == 200
    tampered = signed_post(daemon, key, secret, tamper=True)
    assert tampered.status_code == 403
    assert tampered.json()["__type"] == "InvalidSignatureException"
    other_service = signed_post(daemon, key, secret, service="s3")
    assert other_service.json()["__type"] == "InvalidSignatureException"
    assert "sagemaker" in other_service.json()["Message"]
    other_region = signed_post(daemon, key, secret, region="eu-west-1")
    assert other_region.json()["__type"] == "InvalidSignatureException"


def test_expired_signature(daemon: Daemon) -> None:
    key, secret = daemon.credentials
    request = AWSRequest(
        method="POST",
        url=daemon.url + "/",
        data=b"{}",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "SageMaker.ListMlflowTrackingServers",
        },
    )
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    request.context["timestamp"] = old.strftime("%Y%m%dT%H%M%SZ")
    signer = SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1")
    signer._modify_request_before_signing(request)
    signature = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    signer._inject_signature_to_request(request, signature)
    response = requests.post(
        daemon.url + "/", data=b"{}", headers=dict(request.headers.items()), timeout=10
    )
    assert response.status_code == 403
    body = response.json()
    assert body["__type"] == "InvalidSignatureException"
    assert "Signature expired" in body["Message"]


def test_errors_are_aws_json_not_tracebacks(daemon: Daemon) -> None:
    key, secret = daemon.credentials
    response = signed_post(
        daemon, key, secret, target="SageMaker.DescribeMlflowTrackingServer", body=b"{not json"
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["__type"] == "SerializationException"
    assert "Traceback" not in json.dumps(payload)


# listing ---------------------------------------------------------------------------------------


def test_list_filters_sort_and_pages(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    sm = daemon.client()
    names = [
        s["TrackingServerName"]
        for s in sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
    ]
    assert "shared" in names

    created = shared_server["CreationTime"]
    after = sm.list_mlflow_tracking_servers(CreatedAfter=created + dt.timedelta(seconds=1))
    assert "shared" not in [s["TrackingServerName"] for s in after["TrackingServerSummaries"]]
    before = sm.list_mlflow_tracking_servers(CreatedBefore=created + dt.timedelta(seconds=1))
    assert "shared" in [s["TrackingServerName"] for s in before["TrackingServerSummaries"]]
    stopped = sm.list_mlflow_tracking_servers(TrackingServerStatus="Stopped")
    assert "shared" not in [s["TrackingServerName"] for s in stopped["TrackingServerSummaries"]]

    summary = next(
        s
        for s in sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
        if s["TrackingServerName"] == "shared"
    )
    assert summary["IsActive"] == "Active"
    assert summary["TrackingServerStatus"] == "Created"
    assert summary["MlflowVersion"] == shared_server["MlflowVersion"]


def test_pagination_walks_every_server(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    """Servers that fail to create still list: three cheap CreateFailed servers page at size 2."""
    sm = daemon.client()
    for i in range(3):
        sm.create_mlflow_tracking_server(
            TrackingServerName=f"page-{i}",
            ArtifactStoreUri=f"s3://no-such-bucket-{i}/x",
            RoleArn=ROLE,
        )
    for i in range(3):
        desc = daemon.wait_status(f"page-{i}", "CreateFailed", "Created")
        assert desc["TrackingServerStatus"] == "CreateFailed"
        assert desc["IsActive"] == "Inactive"

    seen: list[str] = []
    paginator = sm.get_paginator("list_mlflow_tracking_servers")
    pages = list(
        paginator.paginate(SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 2})
    )
    assert len(pages) >= 2
    for page in pages:
        assert len(page["TrackingServerSummaries"]) <= 2
        seen += [s["TrackingServerName"] for s in page["TrackingServerSummaries"]]
    assert seen == sorted(seen)
    assert {"page-0", "page-1", "page-2", "shared"} <= set(seen)

    by_status = sm.list_mlflow_tracking_servers(SortBy="Status", SortOrder="Descending")
    statuses = [s["TrackingServerStatus"] for s in by_status["TrackingServerSummaries"]]
    assert statuses == sorted(statuses, reverse=True)

    for i in range(3):
        sm.delete_mlflow_tracking_server(TrackingServerName=f"page-{i}")
    for i in range(3):
        with pytest.raises(sm.exceptions.ResourceNotFound):
            _wait_gone(daemon, f"page-{i}")


def _wait_gone(daemon: Daemon, name: str) -> None:
    sm = daemon.client()
    for _ in range(300):
        sm.describe_mlflow_tracking_server(TrackingServerName=name)
        time.sleep(0.1)
    raise AssertionError(f"{name} was not deleted")


def test_boto3_session_from_written_files(daemon: Daemon) -> None:
    """The credentials and config files mlfleet writes are the AWS CLI's own formats."""
    config = configparser.ConfigParser()
    config.read(daemon.data_dir / "config")
    assert config["default"]["region"] == "us-east-1"
    assert config["default"]["endpoint_url"] == daemon.url
    mode = (daemon.data_dir / "credentials").stat().st_mode & 0o777
    assert mode == 0o600
