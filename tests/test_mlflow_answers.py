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
