"""The audit trail through the real boto3 CloudTrail client and the `mlfleet audit` command."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support.audit import data_events, logged_metric
from support.aws import ACCOUNT, error_of, unique
from support.daemon import Daemon
from support.iam import as_key
from support.waiting import wait_for

HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"


def events_named(daemon: Daemon, name: str, **extra: Any) -> list[dict[str, Any]]:
    cloudtrail = daemon.client("cloudtrail")
    found = cloudtrail.lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": name}], **extra
    )["Events"]
    return [{**event, "record": json.loads(event["CloudTrailEvent"])} for event in found]


def test_a_control_plane_call_becomes_a_cloudtrail_record(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    daemon.client().describe_mlflow_tracking_server(TrackingServerName="shared")
    event = events_named(daemon, "DescribeMlflowTrackingServer")[0]
    record = event["record"]
    key, _ = daemon.credentials
    assert record["eventVersion"] == "1.11"
    assert record["userIdentity"] == {
        "type": "IAMUser",
        "principalId": record["userIdentity"]["principalId"],
        "arn": f"arn:aws:iam::{ACCOUNT}:user/admin",
        "accountId": ACCOUNT,
        "accessKeyId": key,
        "userName": "admin",
    }
    assert record["eventSource"] == "sagemaker.amazonaws.com"
    assert record["awsRegion"] == "us-east-1"
    assert record["sourceIPAddress"] == "127.0.0.1"
    assert "Boto3" in record["userAgent"]
    assert record["requestParameters"] == {"trackingServerName": "shared"}
    assert record["responseElements"]["trackingServerStatus"] in ("Created", "Started", "Updated")
    assert record["readOnly"] is True
    assert record["resources"] == [
        {
            "accountId": ACCOUNT,
            "type": "AWS::SageMaker::MlflowTrackingServer",
            "ARN": shared_server["TrackingServerArn"],
        }
    ]
    assert record["eventType"] == "AwsApiCall"
    assert record["managementEvent"] is True
    assert record["eventCategory"] == "Management"
    assert record["requestID"] and record["eventID"] == event["EventId"]
    assert event["Username"] == "admin" and event["AccessKeyId"] == key
    assert event["Resources"] == [
        {
            "ResourceType": "AWS::SageMaker::MlflowTrackingServer",
            "ResourceName": shared_server["TrackingServerArn"],
        }
    ]


def test_refused_calls_are_recorded_with_their_error(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("nobody")
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    with pytest.raises(ClientError):
        as_key(daemon, "sagemaker", key).stop_mlflow_tracking_server(TrackingServerName="shared")

    found = daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": name}]
    )["Events"]
    record = json.loads(found[0]["CloudTrailEvent"])
    assert record["eventName"] == "StopMlflowTrackingServer"
    assert record["errorCode"] == "AccessDeniedException"
    assert (
        "is not authorized to perform: sagemaker:StopMlflowTrackingServer"
        in (record["errorMessage"])
    )
    assert record["readOnly"] is False

    # A call with a wrong secret is recorded too, though nobody could be identified.
    wrong = as_key(daemon, "iam", {**key, "SecretAccessKey": "x" * 40})
    with pytest.raises(ClientError):
        wrong.list_users()
    by_key = daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": key["AccessKeyId"]}]
    )["Events"]
    unsigned = [json.loads(e["CloudTrailEvent"]) for e in by_key]
    assert any(
        r["errorCode"] == "SignatureDoesNotMatch" and r["userIdentity"]["type"] == "Unknown"
        for r in unsigned
    )


def test_secrets_are_hidden_in_records(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("secretive")
    iam.create_user(UserName=name)
    secret = iam.create_access_key(UserName=name)["AccessKey"]["SecretAccessKey"]
    record = next(
        e["record"]
        for e in events_named(daemon, "CreateAccessKey")
        if e["record"]["requestParameters"] == {"userName": name}
    )
    assert record["responseElements"]["accessKey"]["secretAccessKey"] == HIDDEN
    assert secret not in json.dumps(record)
    url = daemon.client().create_presigned_mlflow_tracking_server_url(TrackingServerName="shared")
    presigned = events_named(daemon, "CreatePresignedMlflowTrackingServerUrl")[0]["record"]
    assert presigned["responseElements"] == {"authorizedUrl": HIDDEN}
    assert url["AuthorizedUrl"].split("authToken=")[1] not in json.dumps(presigned)


def test_lookup_paging_time_range_and_errors(daemon: Daemon) -> None:
    sm = daemon.client()
    for _ in range(3):
        sm.list_mlflow_tracking_servers()
    daemon.client("iam").create_group(GroupName=unique("audited"))  # a write, not read-only
    cloudtrail = daemon.client("cloudtrail")
    pages = list(
        cloudtrail.get_paginator("lookup_events").paginate(
            LookupAttributes=[
                {"AttributeKey": "EventName", "AttributeValue": "ListMlflowTrackingServers"}
            ],
            PaginationConfig={"PageSize": 1, "MaxItems": 3},
        )
    )
    ids = [e["EventId"] for page in pages for e in page["Events"]]
    assert len(ids) == 3 and len(set(ids)) == 3
    times = [e["EventTime"] for page in pages for e in page["Events"]]
    assert times == sorted(times, reverse=True)  # newest first

    future = datetime.now(UTC) + timedelta(hours=1)
    assert cloudtrail.lookup_events(StartTime=future)["Events"] == []
    with pytest.raises(ClientError) as exc:
        cloudtrail.lookup_events(StartTime=future, EndTime=future - timedelta(hours=2))
    assert error_of(exc)[0] == "InvalidTimeRangeException"
    with pytest.raises(ClientError) as exc:
        cloudtrail.lookup_events(
            LookupAttributes=[
                {"AttributeKey": "EventName", "AttributeValue": "a"},
                {"AttributeKey": "Username", "AttributeValue": "b"},
            ]
        )
    assert error_of(exc)[0] == "InvalidLookupAttributesException"
    read_only = cloudtrail.lookup_events(
        LookupAttributes=[{"AttributeKey": "ReadOnly", "AttributeValue": "false"}], MaxResults=5
    )["Events"]
    assert read_only and all(e["ReadOnly"] == "false" for e in read_only)


def test_lookup_needs_permission(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    name = unique("curious")
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "cloudtrail", key).lookup_events()
    assert error_of(exc)[0] == "AccessDeniedException"
    assert "cloudtrail:LookupEvents" in error_of(exc)[1]


def audit_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlfleet", "audit", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def stopped_trail(tmp_path: Path) -> Path:
    """A data dir whose daemon recorded a few calls and stopped."""
    own = Daemon(tmp_path / "audited").start()
    try:
        iam = own.client("iam")
        for n in range(4):
            iam.create_user(UserName=f"u{n}")
        own.client().list_mlflow_tracking_servers()
    finally:
        own.stop()
    return own.data_dir


def test_audit_verify_detects_tampering(stopped_trail: Path) -> None:
    verified = audit_cli(stopped_trail, "verify")
    assert verified.returncode == 0, verified.stderr
    assert "ok: 5 records" in verified.stdout

    db = stopped_trail / "mlfleet.db"
    with sqlite3.connect(db) as conn:
        original = conn.execute("SELECT document FROM audit_records WHERE seq = 2").fetchone()[0]
        conn.execute(
            "UPDATE audit_records SET document = ? WHERE seq = 2",
            (original.replace('"userName":"u1"', '"userName":"someone"'),),
        )
    altered = audit_cli(stopped_trail, "verify")
    assert altered.returncode == 1
    assert "record 2 was altered" in altered.stderr

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_records SET document = ? WHERE seq = 2", (original,))
        rows = conn.execute("SELECT seq, document, hash, prev_hash FROM audit_records").fetchall()
        # Swap two records, links and all: the chain no longer leads from one to the next.
        conn.execute(
            "UPDATE audit_records SET document = ?, hash = ?, prev_hash = ? WHERE seq = 3",
            rows[3][1:],
        )
        conn.execute(
            "UPDATE audit_records SET document = ?, hash = ?, prev_hash = ? WHERE seq = 4",
            rows[2][1:],
        )
    reordered = audit_cli(stopped_trail, "verify")
    assert reordered.returncode == 1
    assert "does not follow" in reordered.stderr

    with sqlite3.connect(db) as conn:
        for seq, document, link, prev in rows[2:4]:
            conn.execute(
                "UPDATE audit_records SET document = ?, hash = ?, prev_hash = ? WHERE seq = ?",
                (document, link, prev, seq),
            )
        conn.commit()
        assert audit_cli(stopped_trail, "verify").returncode == 0
        conn.execute("DELETE FROM audit_records WHERE seq = 3")
    removed = audit_cli(stopped_trail, "verify")
    assert removed.returncode == 1
    assert "records 3..3 are missing" in removed.stderr

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq >= 3")
    truncated = audit_cli(stopped_trail, "verify")
    assert truncated.returncode == 1
    assert "most recent records were removed" in truncated.stderr


def test_audit_export_writes_cloudtrail_log_files(stopped_trail: Path, tmp_path: Path) -> None:
    exported = audit_cli(stopped_trail, "export", str(tmp_path / "logs"))
    assert exported.returncode == 0, exported.stderr
    files = list((tmp_path / "logs" / "AWSLogs" / ACCOUNT / "CloudTrail" / "us-east-1").rglob("*"))
    logs = [f for f in files if f.name.endswith(".json.gz")]
    assert logs and all(f.name.startswith(f"{ACCOUNT}_CloudTrail_us-east-1_") for f in logs)
    records = [r for f in logs for r in json.loads(gzip.decompress(f.read_bytes()))["Records"]]
    assert [r["eventName"] for r in records] == ["CreateUser"] * 4 + ["ListMlflowTrackingServers"]


def test_audit_events_command(daemon: Daemon) -> None:
    daemon.client().list_mlflow_tracking_servers()
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlfleet",
            "audit",
            "events",
            "--event",
            "ListMlflowTrackingServers",
            "--limit",
            "2",
            "--data-dir",
            str(daemon.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "sagemaker:ListMlflowTrackingServers" in shown.stdout
    assert "admin" in shown.stdout


def test_mlflow_writes_are_data_events_and_reads_are_not(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    run_id = client.create_run(client.create_experiment(unique("audited"))).info.run_id
    metric = unique("metric")
    client.log_metric(run_id, metric, 0.5)
    client.get_run(run_id)

    arn = shared_server["TrackingServerArn"]
    # The client's keep-alive connection was handed to the worker, which stored the record
    # with MLflow's write; the daemon's trail has it moments after the answer.
    wait_for(lambda: logged_metric(daemon, arn, metric), 10, what="the LogMetric data event")
    logged = logged_metric(daemon, arn, metric)
    assert len(logged) == 1
    record = logged[0]
    assert record["eventSource"] == "sagemaker-mlflow.amazonaws.com"
    assert record["eventCategory"] == "Data" and record["managementEvent"] is False
    assert record["userIdentity"]["userName"] == "admin"
    assert record["requestParameters"]["httpMethod"] == "POST"
    assert record["requestParameters"]["path"] == "/api/2.0/mlflow/runs/log-metric"
    assert record["requestParameters"]["body"]["run_id"] == run_id
    # Recorded as forwarded, durably, while MLflow worked: no outcome for a success.
    assert record["responseElements"] is None and "errorCode" not in record
    assert not [
        r
        for r in data_events(daemon, "GetRun", arn)
        if r["requestParameters"].get("queryString", "").endswith(run_id)
    ]


def test_refused_writes_are_data_events_too(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = daemon.client("iam")
    name = unique("reader")
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn="arn:aws:iam::aws:policy/MlfleetReadOnlyAccess")
    key = iam.create_access_key(UserName=name)["AccessKey"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key["AccessKeyId"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", key["SecretAccessKey"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException):
        MlflowClient(tracking_uri=shared_server["TrackingServerUrl"]).create_experiment(unique("x"))
    refused = [
        r
        for r in data_events(daemon, "CreateExperiment", shared_server["TrackingServerArn"])
        if r["userIdentity"].get("userName") == name
    ]
    assert len(refused) == 1
    assert refused[0]["errorCode"] == "PERMISSION_DENIED"
    assert refused[0]["responseElements"] == {"statusCode": 403}


def test_data_events_can_be_switched_off_per_server(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    sm = daemon.client()
    arn = shared_server["TrackingServerArn"]
    key, secret = daemon.credentials
    url = shared_server["TrackingServerUrl"] + "/api/2.0/mlflow/experiments/create"

    def create(name: str) -> None:
        answer = requests.post(url, json={"name": name}, auth=(key, secret), timeout=30)
        assert answer.status_code == 200, answer.text

    def audited(name: str) -> bool:
        return any(
            r["requestParameters"].get("body", {}).get("name") == name
            for r in data_events(daemon, "CreateExperiment", arn)
        )

    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "mlfleet:data-events", "Value": "off"}])
    try:
        assert {"Key": "mlfleet:data-events", "Value": "off"} in sm.list_tags(ResourceArn=arn)[
            "Tags"
        ]
        quiet = unique("quiet")
        create(quiet)
        assert not audited(quiet)
    finally:
        sm.delete_tags(ResourceArn=arn, TagKeys=["mlfleet:data-events"])
    loud = unique("loud")
    create(loud)
    assert audited(loud)


def test_a_write_mlflow_refuses_is_recorded_with_its_outcome(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    key, secret = daemon.credentials
    run_id = unique("no-such-run")
    answer = requests.post(
        shared_server["TrackingServerUrl"] + "/api/2.0/mlflow/runs/log-metric",
        json={"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 1},
        auth=(key, secret),
        timeout=30,
    )
    assert answer.status_code >= 400
    records = [
        r
        for r in data_events(daemon, "LogMetric", shared_server["TrackingServerArn"])
        if (r["requestParameters"].get("body") or {}).get("run_id") == run_id
    ]
    # As forwarded, then what MLflow answered.
    assert [r["responseElements"] for r in records] == [
        {"statusCode": answer.status_code},
        None,
    ]  # newest first
    assert records[0]["errorCode"] == answer.json()["error_code"]
