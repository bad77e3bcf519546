"""Scale to zero: a tracking server tagged ``mlfleet:idle-timeout`` sleeps when idle, holding no
process, and the next request of any kind wakes it and is answered, not failed. Driven through
boto3, the MLflow client (plain and with the sagemaker-mlflow plugin), CloudTrail and
EventBridge."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from support.aws import ACCOUNT, unique
from support.chaos import live_workers, trail_records
from support.daemon import Daemon
from support.events import Receiver, detail_types, route_to
from support.iam import new_user
from support.waiting import wait_for

IDLE_TAG = "mlfleet:idle-timeout"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    """The MLflow client signed in, and without retries: a request that met a sleeping server
    must be answered the first time."""
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def create_sleepy(daemon: Daemon, tmp_path: Path, timeout: str = "2s") -> dict[str, Any]:
    name = unique("idle")
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path / name}",
        RoleArn=ROLE,
        Tags=[{"Key": IDLE_TAG, "Value": timeout}],
    )
    desc = daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    return desc


def workers_of(daemon: Daemon, name: str) -> list[int]:
    server_id = daemon.server_id(name)
    return [
        pid
        for pid in live_workers(daemon.data_dir)
        if server_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def is_active(daemon: Daemon, name: str) -> str:
    return str(daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)["IsActive"])


def wait_asleep(daemon: Daemon, name: str) -> None:
    wait_for(
        lambda: is_active(daemon, name) == "Inactive" and not workers_of(daemon, name),
        60,
        what=f"{name} asleep",
    )


def records_for(daemon: Daemon, event_name: str, arn: str) -> list[dict[str, Any]]:
    return [r for r in trail_records(daemon, event_name) if r["resources"][0]["ARN"] == arn]


def test_a_server_sleeps_when_idle_and_the_next_call_wakes_it(
    daemon: Daemon, tmp_path: Path, no_retries: None, receiver: Receiver
) -> None:
    route_to(
        daemon,
        receiver,
        {"source": ["aws.sagemaker"], "detail-type": [{"prefix": "SageMaker Tracking Server A"}]},
    )
    desc = create_sleepy(daemon, tmp_path)
    name, arn = desc["TrackingServerName"], desc["TrackingServerArn"]
    # Created asleep: nothing runs until it is used.
    assert desc["IsActive"] == "Inactive"
    assert workers_of(daemon, name) == []

    client = MlflowClient(tracking_uri=desc["TrackingServerUrl"])
    experiment = client.create_experiment("woken")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    assert is_active(daemon, name) == "Active"
    assert len(workers_of(daemon, name)) == 1
    woken = records_for(daemon, "WakeMlflowTrackingServer", arn)
    assert [r["eventType"] for r in woken] == ["AwsServiceEvent"]
    assert woken[0]["serviceEventDetails"] == {"reason": "a request arrived"}

    # Two seconds without a request: it sleeps, its status unchanged.
    wait_asleep(daemon, name)
    described = daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)
    assert described["TrackingServerStatus"] == "Created"
    slept = records_for(daemon, "SleepMlflowTrackingServer", arn)
    assert len(slept) == 1 and "idle timeout 2 s" in slept[0]["serviceEventDetails"]["reason"]

    # The same client's next calls (its kept connection went with the worker) are answered.
    client.log_metric(run.info.run_id, "loss", 0.25, step=2)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert len(records_for(daemon, "WakeMlflowTrackingServer", arn)) == 2

    kinds = detail_types(receiver, "Tracking Server A", 3)
    assert kinds == [
        "SageMaker Tracking Server Awake",
        "SageMaker Tracking Server Asleep",
        "SageMaker Tracking Server Awake",
    ]
    details = [b["detail"] for b in receiver.bodies() if b["resources"] == [arn]]
    assert [d["IsActive"] for d in details[:3]] == ["Active", "Inactive", "Active"]
    assert {d["TrackingServerStatus"] for d in details} == {"Created"}


def test_the_plugin_and_the_ui_wake_a_sleeping_server(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = create_sleepy(daemon, tmp_path)
    name, arn = desc["TrackingServerName"], desc["TrackingServerArn"]
    key, secret = daemon.credentials
    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", daemon.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", arn)
    # MLflow's own retries, as a training script has them: a connection handed to the worker
    # can be reset when the server falls asleep (README, "Not built yet"); the plain client's
    # test above shows a call held, not failed, without any retry.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")

    client = MlflowClient()
    experiment = client.create_experiment("through the plugin")
    assert client.get_experiment(experiment).name == "through the plugin"
    wait_asleep(daemon, name)
    assert client.get_experiment_by_name("through the plugin").experiment_id == experiment

    wait_asleep(daemon, name)
    url = daemon.client().create_presigned_mlflow_tracking_server_url(TrackingServerName=name)
    page = requests.get(url["AuthorizedUrl"], timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert is_active(daemon, name) == "Active"


def test_control_plane_operations_work_on_a_sleeping_server(
    daemon: Daemon, tmp_path: Path, no_retries: None
) -> None:
    desc = create_sleepy(daemon, tmp_path)
    name = desc["TrackingServerName"]
    sm = daemon.client()

    # An update is recorded asleep and applied at the next wake.
    sm.update_mlflow_tracking_server(TrackingServerName=name, TrackingServerSize="Medium")
    desc = daemon.wait_status(name, "Updated", "UpdateFailed")
    assert desc["TrackingServerStatus"] == "Updated" and desc["IsActive"] == "Inactive"
    assert workers_of(daemon, name) == []
    client = MlflowClient(tracking_uri=desc["TrackingServerUrl"])
    client.create_experiment("medium")

    def two_workers() -> bool:
        client.search_experiments()  # kept busy: it would sleep 2 s after the last call
        return len(workers_of(daemon, name)) == 2

    wait_for(two_workers, 60, what="two workers (Medium)")

    wait_asleep(daemon, name)
    sm.stop_mlflow_tracking_server(TrackingServerName=name)
    assert daemon.wait_status(name, "Stopped", "StopFailed")["TrackingServerStatus"] == "Stopped"
    answer = requests.get(
        f"{desc['TrackingServerUrl']}/api/2.0/mlflow/experiments/search?max_results=5",
        auth=daemon.credentials,
        timeout=30,
    )
    assert answer.status_code == 409  # stopped is stopped: no request wakes it

    # Started, it serves awake, then sleeps again when idle.
    sm.start_mlflow_tracking_server(TrackingServerName=name)
    desc = daemon.wait_status(name, "Started", "StartFailed")
    assert desc["IsActive"] == "Active"
    wait_asleep(daemon, name)
    assert client.get_experiment_by_name("medium") is not None

    wait_asleep(daemon, name)
    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    daemon.wait_gone(name)


def test_an_idle_timeout_that_is_no_duration_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    sm = daemon.client()
    with pytest.raises(ClientError) as refused:
        create_sleepy(daemon, tmp_path, timeout="soon")
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "mlfleet:idle-timeout" in error["Message"] and "30s, 15m, 2h" in error["Message"]

    desc = create_sleepy(daemon, tmp_path, timeout="never")
    assert desc["IsActive"] == "Active"  # never sleeps: created serving, as without the tag
    with pytest.raises(ClientError) as refused:
        sm.add_tags(ResourceArn=desc["TrackingServerArn"], Tags=[{"Key": IDLE_TAG, "Value": "-5m"}])
    assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_the_daemon_default_and_a_restart_keep_servers_asleep(tmp_path: Path) -> None:
    own = Daemon(tmp_path / "data", "--idle-timeout", "1s").start()
    try:
        sm = own.client()
        name = unique("default")
        sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri=f"file://{tmp_path / 'artifacts' / name}",
            RoleArn=ROLE,
        )
        desc = own.wait_status(name, "Created", "CreateFailed")
        assert desc["IsActive"] == "Inactive" and workers_of(own, name) == []
        url = f"{desc['TrackingServerUrl']}/api/2.0/mlflow/experiments/search?max_results=5"

        # Requests that arrive together at a sleeping server are all held and answered.
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: requests.get(url, auth=own.credentials, timeout=120), range(8))
            )
        assert [a.status_code for a in answers] == [200] * 8
        assert len(records_for(own, "WakeMlflowTrackingServer", desc["TrackingServerArn"])) == 1

        wait_asleep(own, name)
        own.stop()
        own.start()
        # A restarted daemon starts no sleeping server; the first request wakes it.
        assert is_active(own, name) == "Inactive" and workers_of(own, name) == []
        assert requests.get(url, auth=own.credentials, timeout=120).status_code == 200
    finally:
        own.stop()


def test_a_stranger_or_a_caller_refused_wakes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    """Waking costs a worker: only a caller authenticated and allowed the action wakes a
    server. The rest are answered as at any server, and it stays asleep."""
    desc = create_sleepy(daemon, tmp_path)
    name, arn = desc["TrackingServerName"], desc["TrackingServerArn"]
    url = f"{desc['TrackingServerUrl']}/api/2.0/mlflow/experiments/search?max_results=1"
    nobody = new_user(daemon)  # no policy at all
    key, _ = daemon.credentials
    for auth, refused in (
        (None, 401),
        ((key, "not-the-secret"), 401),
        ((nobody["AccessKeyId"], nobody["SecretAccessKey"]), 403),
    ):
        answer = requests.get(url, auth=auth, timeout=30)
        assert answer.status_code == refused, answer.text
    # As the plugin would send it, by ARN, unsigned.
    answer = requests.get(
        f"{daemon.url}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"x-mlflow-sm-tracking-server-arn": arn},
        timeout=30,
    )
    assert answer.status_code == 401
    assert is_active(daemon, name) == "Inactive" and workers_of(daemon, name) == []
    assert records_for(daemon, "WakeMlflowTrackingServer", arn) == []
