"""Where mlfleet differs from stock MLflow for a reason of its own (a template, a bound, a
refusal that protects other tenants), what the MLflow client sees is still what MLflow answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
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
