"""Where mlfleet differs from stock MLflow for a reason of its own (a template, a bound, a
refusal that protects other tenants), what the MLflow client sees is still what MLflow answers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support.aws import unique
from support.daemon import Daemon

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def test_default_experiment_dated_at_the_servers_creation(
    any_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = any_daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    sm = any_daemon.client()
    name = unique("dated")
    before_ms = int(time.time() * 1000)
    sm.create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri=f"file://{tmp_path}", RoleArn=ROLE
    )
    try:
        desc = any_daemon.wait_status(name, "Created", "CreateFailed")
        after_ms = int(time.time() * 1000)
        assert desc["TrackingServerStatus"] == "Created", desc

        default = MlflowClient(desc["TrackingServerUrl"]).get_experiment("0")
        # Not the template's time (when the data dir first made one): this server's.
        assert before_ms <= default.creation_time <= after_ms
        assert default.last_update_time == default.creation_time
        assert default.creation_time == round(desc["CreationTime"].timestamp() * 1000)
    finally:
        sm.delete_mlflow_tracking_server(TrackingServerName=name)


def history_bulk_interval(server_url: str, run_ids: int) -> str:
    """A GetMetricHistoryBulkInterval URL naming ``run_ids`` runs, as MLflow's UI builds it."""
    query = "&".join(f"run_ids={uuid.uuid4().hex}" for _ in range(run_ids))
    return f"{server_url}/api/2.0/mlflow/metrics/get-history-bulk-interval?{query}&metric_key=m"


def test_a_long_query_string_gets_mlflows_own_answer(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    url = history_bulk_interval(shared_server["TrackingServerUrl"], 350)
    assert len(url.partition("?")[2]) > 14_000  # beyond aiohttp's default 8190-byte line
    with requests.Session() as session:
        session.auth = daemon.credentials
        # The second call on the same keep-alive connection: the worker's fast lane serves it.
        for _ in range(2):
            answer = session.get(url, timeout=30)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "at most 100 run_ids. Received 350" in answer.json()["message"]
        # Beyond the bound aiohttp refuses the request itself (no hook shapes that answer),
        # logged as the client's doing: one line, no traceback.
        answer = session.get(history_bulk_interval(shared_server["TrackingServerUrl"], 2000))
        assert answer.status_code == 400
    log = (daemon.data_dir / "mlfleet.log").read_text()
    assert "Error handling request from 127.0.0.1: LineTooLong" in log
    assert "aiohttp.http_exceptions.LineTooLong" not in log


@pytest.mark.parametrize(
    "query",
    [
        "path=%2e%2e/%2e%2e/secret",  # MLflow's own check refuses these too: its very answer
        "path=%252e%252e%252fsecret",
        "path=%2Fetc%2Fpasswd",
        "path=model%23/../x",
    ],
)
def test_traversing_artifact_paths_are_refused_as_mlflow_refuses_them(
    daemon: Daemon, shared_server: dict[str, Any], query: str
) -> None:
    url = f"{shared_server['TrackingServerUrl']}/api/2.0/mlflow/artifacts/list?run_id=r&{query}"
    with requests.Session() as session:
        session.auth = daemon.credentials
        # The gateway, then the worker's fast lane on the same connection (which leaves what
        # the gateway refuses to the gateway).
        for _ in range(2):
            answer = session.get(url, timeout=30)
            assert answer.status_code == 400
            assert answer.json() == {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": "Invalid path",
            }


def test_an_experiment_may_keep_its_artifacts_anywhere_in_its_servers_store(
    daemon: Daemon,
    shared_server: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    store = tmp_path / "store"
    sm = daemon.client()
    name = unique("located")
    sm.create_mlflow_tracking_server(
        TrackingServerName=name, ArtifactStoreUri=f"file://{store}", RoleArn=ROLE
    )
    try:
        desc = daemon.wait_status(name, "Created", "CreateFailed")
        assert desc["TrackingServerStatus"] == "Created", desc
        client = MlflowClient(desc["TrackingServerUrl"])
        (tmp_path / "notes.txt").write_text("kept")

        # In the store: through the artifact proxy, or as a folder of the store itself.
        for location, folder in (
            ("mlflow-artifacts:/chosen/proxied", store / "chosen" / "proxied"),
            (f"file://{store}/chosen/direct", store / "chosen" / "direct"),
            (f"file:{store}/chosen/direct-too/", store / "chosen" / "direct-too"),
        ):
            experiment_id = client.create_experiment(unique("e"), artifact_location=location)
            assert client.get_experiment(experiment_id).artifact_location == location
            run = client.create_run(experiment_id)
            client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
            assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["notes.txt"]
            found = folder / run.info.run_id / "artifacts" / "notes.txt"
            assert found.read_text() == "kept"

        # Outside it: another server's store, the data dir, a way out by '..' or a link.
        (store / "link").symlink_to(daemon.data_dir)
        for location in (
            shared_server["ArtifactStoreUri"],
            f"{shared_server['ArtifactStoreUri']}/x",
            f"file://{daemon.data_dir}",
            f"file://{store}/../escaped",
            f"file://{store}/%2e%2e/escaped",
            f"file://{store}/link/x",
            f"file://{store}-b",
            "mlflow-artifacts:/../escaped",
            "s3://bucket/x",
        ):
            with pytest.raises(MlflowException) as refused:
                client.create_experiment(unique("e"), artifact_location=location)
            assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
            message = refused.value.message
            assert "must lie in this tracking server's artifact store" in message, message
            assert f"file://{store}" in message
    finally:
        sm.delete_mlflow_tracking_server(TrackingServerName=name)
