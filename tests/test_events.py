"""Events end to end: real boto3 events client, a real HTTP receiver on loopback, real servers."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from support.aws import unique
from support.daemon import Daemon
from support.events import API_KEY, Receiver, route_to, wait_received
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def test_lifecycle_events_for_every_transition(
    daemon: Daemon, receiver: Receiver, tmp_path: Path
) -> None:
    name = unique("lifecycle")
    route_to(
        daemon,
        receiver,
        {"source": ["aws.sagemaker"], "detail": {"TrackingServerName": [name]}},
    )
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri=f"file://{tmp_path}", RoleArn=ROLE
    )
    daemon.wait_status(name, "Created")
    sm.stop_mlflow_tracking_server(TrackingServerName=name)
    daemon.wait_status(name, "Stopped")
    sm.start_mlflow_tracking_server(TrackingServerName=name)
    daemon.wait_status(name, "Started")
    sm.update_mlflow_tracking_server(TrackingServerName=name, TrackingServerSize="Medium")
    daemon.wait_status(name, "Updated")
    sm.delete_mlflow_tracking_server(TrackingServerName=name)

    expected = [
        "Creating", "Created", "Stopping", "Stopped", "Starting", "Started",
        "Updating", "Updated", "Deleting", "Deleted",
    ]  # fmt: skip
    bodies = wait_received(receiver, len(expected))
    assert [b["detail-type"] for b in bodies] == [
        f"SageMaker Tracking Server {status}" for status in expected
    ]
    created = bodies[1]
    assert created["source"] == "aws.sagemaker" and created["version"] == "0"
    assert created["account"] == "123456789012" and created["region"] == "us-east-1"
    assert created["resources"] == [created["detail"]["TrackingServerArn"]]
    assert created["detail"]["TrackingServerStatus"] == "Created"
    assert created["detail"]["IsActive"] == "Active"
    assert bodies[-1]["detail"]["TrackingServerStatus"] == "Deleted"
    # Every delivery is signed with the connection's key.
    for delivery in receiver.received:
        stamp, mac = delivery["headers"]["X-Mlfleet-Signature"].split(",")
        moment = stamp.removeprefix("t=")
        expected_mac = hmac.new(
            API_KEY.encode(), f"{moment}.".encode() + delivery["raw"], hashlib.sha256
        ).hexdigest()
        assert mac == f"v1={expected_mac}"
        assert delivery["headers"]["x-api-key"] == API_KEY


def test_a_failed_create_is_an_event(daemon: Daemon, receiver: Receiver) -> None:
    name = unique("doomed")
    route_to(
        daemon,
        receiver,
        {"detail-type": ["SageMaker Tracking Server Create Failed"], "resources": [
            f"arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/{name}"
        ]},
    )  # fmt: skip
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri="s3://no-such-bucket-anywhere/x", RoleArn=ROLE
    )
    body = wait_received(receiver, 1)[0]
    assert body["detail"]["TrackingServerStatus"] == "CreateFailed"
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=name)


def test_the_five_mlflow_events(
    daemon: Daemon,
    shared_server: dict[str, Any],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route_to(
        daemon,
        receiver,
        {
            "source": ["aws.sagemaker"],
            "detail-type": [{"prefix": "SageMaker MLFlow Tracking Server"}],
            "detail": {"UserArn": [{"suffix": ":user/admin"}]},
        },
    )
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    run = client.create_run(client.create_experiment(unique("events")))
    model = unique("model")
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/m", run.info.run_id)
    client.transition_model_version_stage(model, version.version, "Staging")
    client.set_registered_model_alias(model, "champion", version.version)

    bodies = wait_received(receiver, 5)
    assert [b["detail-type"] for b in bodies] == [
        "SageMaker MLFlow Tracking Server Creating Run",
        "SageMaker MLFlow Tracking Server Creating RegisteredModel",
        "SageMaker MLFlow Tracking Server Creating ModelVersion",
        "SageMaker MLFlow Tracking Server Transitioning ModelVersion Stage",
        "SageMaker MLFlow Tracking Server Setting Registered Model Alias",
    ]
    assert bodies[0]["detail"]["Response"]["run"]["info"]["run_id"] == run.info.run_id
    assert bodies[1]["detail"]["Request"]["name"] == model
    assert bodies[3]["detail"]["Request"]["stage"] == "Staging"
    assert bodies[4]["detail"]["Request"]["alias"] == "champion"
    assert all(b["resources"] == [shared_server["TrackingServerArn"]] for b in bodies)


def test_api_calls_arrive_as_cloudtrail_events(daemon: Daemon, receiver: Receiver) -> None:
    user = unique("watched")
    route_to(
        daemon,
        receiver,
        {
            "source": ["aws.iam"],
            "detail-type": ["AWS API Call via CloudTrail"],
            "detail": {"eventName": ["CreateUser"], "requestParameters": {"userName": [user]}},
        },
    )
    daemon.client("iam").create_user(UserName=user)
    body = wait_received(receiver, 1)[0]
    assert body["detail"]["eventSource"] == "iam.amazonaws.com"
    assert body["detail"]["userIdentity"]["userName"] == "admin"


def test_put_events_with_an_input_transformer(daemon: Daemon, receiver: Receiver) -> None:
    source = unique("com.example")
    route_to(
        daemon,
        receiver,
        {"source": [source], "detail": {"amount": [{"numeric": [">", 100]}]}},
        InputTransformer={
            "InputPathsMap": {"who": "$.detail.who", "amount": "$.detail.amount"},
            "InputTemplate": (
                '{"text": "<who> paid", "amount": <amount>, "rule": "<aws.events.rule-name>"}'
            ),
        },
    )
    entries = [
        {"Source": source, "DetailType": "payment", "Detail": json.dumps({"who": w, "amount": a})}
        for w, a in (("ana", 50), ("bo", 150), ("cy", 300))
    ]
    put = daemon.client("events").put_events(Entries=entries)
    assert put["FailedEntryCount"] == 0 and all("EventId" in e for e in put["Entries"])
    bodies = wait_received(receiver, 2)
    assert [(b["text"], b["amount"]) for b in bodies] == [("bo paid", 150), ("cy paid", 300)]
    time.sleep(0.5)
    assert len(receiver.received) == 2  # ana's payment matched no rule


def test_deliveries_follow_changes_to_the_destination_and_connection(
    daemon: Daemon, receiver: Receiver
) -> None:
    """The worker caches how to reach a target; every change through the API must reach it."""
    source = unique("com.example")
    rule = route_to(daemon, receiver, {"source": [source]})
    events = daemon.client("events")

    def send(number: int) -> None:
        entry = {"Source": source, "DetailType": "t", "Detail": json.dumps({"n": number})}
        assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0

    send(1)
    assert wait_received(receiver, 1)[0]["detail"] == {"n": 1}
    moved = Receiver().start()
    try:
        events.update_api_destination(Name=rule, InvocationEndpoint=moved.url)
        events.update_connection(
            Name=rule,
            AuthorizationType="API_KEY",
            AuthParameters={
                "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": "rotated"}
            },
        )
        send(2)
        arrived = wait_received(moved, 1)
        assert arrived[0]["detail"] == {"n": 2}
        assert moved.received[0]["headers"]["x-api-key"] == "rotated"
        assert len(receiver.received) == 1
    finally:
        moved.stop()


def test_a_receiver_that_was_down_gets_everything_in_order(daemon: Daemon) -> None:
    down = Receiver()  # not listening yet: connections are refused
    source = unique("com.orders")
    route_to(daemon, down, {"source": [source]})
    events = daemon.client("events")
    for n in range(5):
        events.put_events(
            Entries=[{"Source": source, "DetailType": "order", "Detail": json.dumps({"n": n})}]
        )
    time.sleep(2)
    down.start()
    try:
        bodies = wait_received(down, 5, timeout=90)
        assert [b["detail"]["n"] for b in bodies] == [0, 1, 2, 3, 4]
    finally:
        down.stop()


def events_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlfleet", "events", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "400"},
    )


def test_dead_letters_are_listed_and_redriven(daemon: Daemon, receiver: Receiver) -> None:
    source = unique("com.dlq")
    rule = route_to(
        daemon,
        receiver,
        {"source": [source]},
        RetryPolicy={"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 60},
    )
    receiver.status = 400  # a refusal retrying cannot fix: dead at once
    daemon.client("events").put_events(
        Entries=[{"Source": source, "DetailType": "x", "Detail": json.dumps({"k": 1})}]
    )

    def listed() -> str | None:
        out = events_cli(daemon.data_dir, "dead-letters", "--rule", rule)
        return out.stdout if source in out.stdout else None

    shown = wait_for(listed, 30, what="a dead letter")
    assert "HTTP 400" in shown
    receiver.status = 200
    redriven = events_cli(daemon.data_dir, "redrive", "--rule", rule)
    assert redriven.returncode == 0, redriven.stderr
    body = wait_received(receiver, 1)[0]
    assert body["detail"] == {"k": 1}
    assert source not in events_cli(daemon.data_dir, "dead-letters", "--rule", rule).stdout


def test_kill_9_between_the_call_and_the_delivery_loses_nothing(tmp_path: Path) -> None:
    own = Daemon(tmp_path / "events").start()
    receiver = Receiver()  # down while the daemon dies
    try:
        source = unique("com.durable")
        route_to(own, receiver, {"source": [source]})
        put = own.client("events").put_events(
            Entries=[
                {"Source": source, "DetailType": "x", "Detail": json.dumps({"n": n})}
                for n in range(3)
            ]
        )
        assert put["FailedEntryCount"] == 0
        own.kill()
        receiver.start()
        own.start()
        bodies = wait_received(receiver, 3, timeout=90)
        assert sorted(b["detail"]["n"] for b in bodies) == [0, 1, 2]
    finally:
        own.stop()
        receiver.stop()


def test_audit_and_events_on_both_databases(any_daemon: Daemon, receiver: Receiver) -> None:
    """The trail, the outbox and the delivery worker on SQLite and on PostgreSQL."""
    source = unique("com.both")
    route_to(any_daemon, receiver, {"source": [source]})
    any_daemon.client("events").put_events(
        Entries=[
            {"Source": source, "DetailType": "x", "Detail": json.dumps({"n": n})} for n in range(3)
        ]
    )
    assert [b["detail"]["n"] for b in wait_received(receiver, 3)] == [0, 1, 2]
    found = any_daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "PutEvents"}]
    )["Events"]
    assert (
        found and json.loads(found[0]["CloudTrailEvent"])["eventSource"] == "events.amazonaws.com"
    )
