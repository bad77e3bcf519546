"""A full disk (issue 17): the daemon's data dir and a ``file:`` artifact store on a small disk
of their own, filled to the last byte while a tracking server is in use.

While it is full, writes fail with a clear error (MLflow's 507 ``RESOURCE_EXHAUSTED``, AWS's
``ServiceUnavailable``), an artifact upload leaves no file behind, and reads are answered.
Writes go on succeeding as long as a database has room in the files it already holds, so each
kind is tried until it is refused, and what was acknowledged meanwhile is kept. Once space is
freed, with nothing restarted, every kind of write succeeds again, every acknowledged write is
there exactly once with its data event or audit record, events are delivered, the server is
settled and the audit trail verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from support.chaos import live_workers, stop_and_verify, trail_records
from support.daemon import Daemon
from support.disk import SmallDisk
from support.events import Receiver, route_to
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"
NAME = "brimful"
METRIC = "loss"
# Writes tried, each kind, before the test gives up waiting for a refusal.
TRIES = 200
BLOB = "blob.bin"
STAGED = ".artifact.uploading."


def until_refused(write: Callable[[int], None]) -> Exception:
    """Call ``write(0)``, ``write(1)``, … until one raises; that error."""
    for attempt in range(TRIES):
        try:
            write(attempt)
        except Exception as refused:
            return refused
    raise AssertionError(f"{TRIES} writes succeeded on a full disk")


def assert_storage_full(error: Exception) -> None:
    """MLflow's answer for a full disk: 507 RESOURCE_EXHAUSTED, in words, no internals."""
    assert isinstance(error, MlflowException), repr(error)
    assert error.error_code == "RESOURCE_EXHAUSTED", error.message
    assert "storage is full" in error.message
    for internal in ("Traceback", "INSERT", "sqlite", "SQL"):
        assert internal not in error.message


def assert_answered_storage_full(error: Exception) -> None:
    """The same, as answered over HTTP: status 507 and MLflow's JSON error."""
    assert isinstance(error, requests.HTTPError), repr(error)
    answer = error.response
    assert answer is not None and answer.status_code == 507, answer
    assert_storage_full(RestException(answer.json()))


def assert_unavailable(error: Exception) -> None:
    assert isinstance(error, ClientError), repr(error)
    assert error.response["Error"]["Code"] == "ServiceUnavailable", error.response
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "storage is full" in error.response["Error"]["Message"]


def test_full_disk_refuses_writes_clearly_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmallDisk(tmp_path / "disk", 96) as disk:
        daemon = Daemon(disk.path / "data", artifact_root=disk.path / "artifacts").start()
        receiver = Receiver().start()
        try:
            sm = daemon.client()
            # Each refusal as the first answer, not after boto3's retries of a 503.
            once = daemon.client(config=Config(retries={"total_max_attempts": 1}))
            store = disk.path / "artifacts" / NAME
            sm.create_mlflow_tracking_server(
                TrackingServerName=NAME, ArtifactStoreUri=f"file://{store}", RoleArn=ROLE
            )
            desc = daemon.wait_status(NAME, "Created")
            url, arn = desc["TrackingServerUrl"], desc["TrackingServerArn"]
            route_to(daemon, receiver, {"source": ["aws.sagemaker"], "resources": [arn]})
            key, secret = daemon.credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            client = MlflowClient(tracking_uri=url)

            # What the server acknowledged: metric steps, params, runs, server tags.
            steps: list[int] = []
            params: dict[str, str] = {}
            tags: dict[str, str] = {}
            run_id = client.create_run("0").info.run_id
            runs = [run_id]

            def log_step(step: int) -> None:
                client.log_metric(run_id, METRIC, float(step), step=step)
                steps.append(step)

            def log_param(index: int) -> None:
                client.log_param(run_id, f"p{index}", str(index))
                params[f"p{index}"] = str(index)

            def create_run(_: int) -> None:
                runs.append(client.create_run("0").info.run_id)

            def add_tag(index: int) -> None:
                once.add_tags(ResourceArn=arn, Tags=[{"Key": f"t{index}", "Value": str(index)}])
                tags[f"t{index}"] = str(index)

            def log_step_by_gateway(step: int) -> None:
                # Connection: close keeps the call with the gateway (not handed to the worker).
                answer = requests.post(
                    f"{url}/api/2.0/mlflow/runs/log-metric",
                    json={
                        "run_id": run_id,
                        "key": METRIC,
                        "value": 0.0,
                        "timestamp": 0,
                        "step": step,
                    },
                    auth=(key, secret),
                    headers={"Connection": "close"},
                    timeout=60,
                )
                answer.raise_for_status()
                steps.append(step)

            for step in range(10):
                log_step(step)
            log_param(0)
            add_tag(0)
            blob = tmp_path / BLOB
            blob.write_bytes(bytes(range(256)) * 8192)  # 2 MiB

            # Full. Something may free a little space (a database's journal, a temporary
            # file): each kind of write is tried on a disk filled again.
            disk.fill()
            assert_storage_full(until_refused(lambda i: log_step(1000 + i)))
            disk.fill()
            assert_answered_storage_full(until_refused(lambda i: log_step_by_gateway(2000 + i)))
            disk.fill()
            assert_storage_full(until_refused(lambda i: log_param(1 + i)))
            disk.fill()
            assert_storage_full(until_refused(create_run))

            # An upload larger than the space left gets part of the way, then fails whole.
            disk.fill(leave=256 * 1024)
            with pytest.raises(requests.HTTPError) as upload:
                client.log_artifact(run_id, str(blob), "blobs")
            assert_answered_storage_full(upload.value)
            assert not list(store.rglob(BLOB)), "an artifact was left by a failed upload"
            assert not list(store.rglob(f"{STAGED}*")), "a partial upload was left behind"

            disk.fill()
            assert_unavailable(until_refused(lambda i: add_tag(1 + i)))
            with pytest.raises(ClientError) as created:
                once.create_mlflow_tracking_server(
                    TrackingServerName=f"{NAME}-2",
                    ArtifactStoreUri=f"file://{store}-2",
                    RoleArn=ROLE,
                )
            assert_unavailable(created.value)

            # Reads are answered, and the daemon lives on.
            disk.fill()
            assert sm.describe_mlflow_tracking_server(TrackingServerName=NAME)["IsActive"] == (
                "Active"
            )
            listed = sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
            assert [s["TrackingServerName"] for s in listed] == [NAME]
            history = client.get_metric_history(run_id, METRIC)
            assert sorted(m.step for m in history) == sorted(steps)
            assert daemon.proc is not None and daemon.proc.poll() is None

            # Space again: every kind of write succeeds, nothing restarted.
            disk.free()
            log_step(5000)
            log_step_by_gateway(5001)
            log_param(5000)
            create_run(5000)
            client.set_tag(run_id, "after", "yes")
            client.log_artifact(run_id, str(blob), "blobs")
            fetched = Path(client.download_artifacts(run_id, f"blobs/{BLOB}", str(tmp_path)))
            assert fetched.read_bytes() == blob.read_bytes()
            assert not list(store.rglob(f"{STAGED}*"))
            client.create_registered_model("brimful-model")
            add_tag(5000)
            sm.create_mlflow_tracking_server(
                TrackingServerName=f"{NAME}-2", ArtifactStoreUri=f"file://{store}-2", RoleArn=ROLE
            )
            assert daemon.wait_status(f"{NAME}-2", "Created")["IsActive"] == "Active"
            sm.delete_mlflow_tracking_server(TrackingServerName=f"{NAME}-2")

            # Every acknowledged write, exactly once.
            history = client.get_metric_history(run_id, METRIC)
            assert sorted(m.step for m in history) == sorted(steps)
            run = client.get_run(run_id)
            assert {k: v for k, v in run.data.params.items() if k.startswith("p")} == params
            assert run.data.tags["after"] == "yes"
            for acknowledged in runs:
                assert client.get_run(acknowledged).info.run_id == acknowledged
            on_server = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
            assert on_server == tags

            # Their data events and records reach the trail, their events the receiver.
            def logged_steps() -> set[int]:
                found = set()
                for record in trail_records(daemon, "LogMetric"):
                    body = (record.get("requestParameters") or {}).get("body") or {}
                    run = body.get("run_id") or body.get("run_uuid")
                    if record.get("errorCode") is None and run == run_id:
                        found.add(int(body["step"]))
                return found

            wait_for(lambda: set(steps) <= logged_steps(), 60, 1, "the LogMetric data events")
            tagged = {
                tag["key"]
                for record in trail_records(daemon, "AddTags")
                if record.get("errorCode") is None
                for tag in record["requestParameters"]["tags"]
            }
            assert set(tags) <= tagged

            def delivered_tags() -> set[str]:
                return {
                    tag["key"]
                    for body in receiver.bodies()
                    if body["detail"].get("eventName") == "AddTags"
                    and body["detail"].get("errorCode") is None
                    for tag in body["detail"]["requestParameters"]["tags"]
                }

            wait_for(lambda: set(tags) <= delivered_tags(), 60, 0.5, "the AddTags events")

            # Settled: not in a transitional status, its worker running, the other one gone.
            wait_for(
                lambda: (
                    not [
                        s
                        for s in sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
                        if s["TrackingServerName"] != NAME
                    ]
                ),
                120,
                what=f"{NAME}-2 to be deleted",
            )
            desc = sm.describe_mlflow_tracking_server(TrackingServerName=NAME)
            assert (desc["TrackingServerStatus"], desc["IsActive"]) == ("Created", "Active")
            assert len(live_workers(daemon.data_dir)) == 1

            # No secret in what the daemon and its workers wrote.
            for written in daemon.data_dir.rglob("*"):
                if written.is_file() and written.suffix in (".log", ".out"):
                    assert secret not in written.read_text(errors="replace"), written

            stop_and_verify(daemon)
        finally:
            receiver.stop()
            daemon.stop()
