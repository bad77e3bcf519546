"""A tracking server's whole life through boto3, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from support.daemon import PG_URL, Daemon

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def basic_env(monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    # A stopped server must fail at once, not after MLflow's retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def pg_database_exists(name: str) -> bool:
    out = subprocess.run(
        ["psql", PG_URL, "-tAc", f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "1"


def test_lifecycle(any_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = any_daemon
    sm = daemon.client()
    basic_env(monkeypatch, daemon)
    name = f"life-{uuid.uuid4().hex[:8]}"
    artifacts = tmp_path / "artifacts"

    arn = sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{artifacts}",
        RoleArn=ROLE,
        TrackingServerSize="Small",
        WeeklyMaintenanceWindowStart="Tue:03:30",
        Tags=[{"Key": "team", "Value": "a"}],
    )["TrackingServerArn"]
    assert arn.endswith(f":mlflow-tracking-server/{name}")
    first = sm.describe_mlflow_tracking_server(TrackingServerName=name)
    assert first["TrackingServerStatus"] in ("Creating", "Created")

    desc = daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    assert desc["IsActive"] == "Active"
    assert desc["WeeklyMaintenanceWindowStart"] == "Tue:03:30"
    url = desc["TrackingServerUrl"]

    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment("lifecycle")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    (tmp_path / "note.txt").write_text("kept across stop and start")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))

    metadata_db = _metadata_db(daemon, name)
    assert metadata_db is not None

    # Stop: processes go, data stays, calls fail at once with a clear message.
    sm.stop_mlflow_tracking_server(TrackingServerName=name)
    desc = daemon.wait_status(name, "Stopped", "StopFailed")
    assert desc["TrackingServerStatus"] == "Stopped"
    assert desc["IsActive"] == "Inactive"
    response = requests.get(
        f"{url}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": exp},
        auth=daemon.credentials,
        timeout=10,
    )
    assert response.status_code == 409
    assert "Stopped" in response.json()["message"]
    code = _error_code(sm.stop_mlflow_tracking_server, TrackingServerName=name)
    assert code == "ValidationException"

    # Start: everything is still there.
    sm.start_mlflow_tracking_server(TrackingServerName=name)
    desc = daemon.wait_status(name, "Started", "StartFailed")
    assert desc["TrackingServerStatus"] == "Started"
    assert desc["IsActive"] == "Active"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.value, m.step) for m in history] == [(0.5, 1)]
    local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "down"))
    assert Path(local).read_text() == "kept across stop and start"

    # Update: a new size means new worker processes, same data.
    sm.update_mlflow_tracking_server(
        TrackingServerName=name, TrackingServerSize="Medium", AutomaticModelRegistration=True
    )
    desc = daemon.wait_status(name, "Updated", "UpdateFailed")
    assert desc["TrackingServerStatus"] == "Updated"
    assert desc["TrackingServerSize"] == "Medium"
    assert desc["AutomaticModelRegistration"] is True
    assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.5

    # Delete: the record and the metadata DB go, the artifacts stay.
    sm.delete_mlflow_tracking_server(TrackingServerName=name)

    daemon.wait_gone(name)
    if metadata_db.startswith("sqlite"):
        assert not Path(metadata_db.split("sqlite:///", 1)[1]).exists()
    else:
        assert not pg_database_exists(metadata_db.rsplit("/", 1)[1])
    stored = list(artifacts.rglob("note.txt"))
    assert stored and stored[0].read_text() == "kept across stop and start"
    names = [
        s["TrackingServerName"]
        for s in sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
    ]
    assert name not in names


def _metadata_db(daemon: Daemon, name: str) -> str | None:
    """The metadata DB URI, read from the control-plane database the way an operator would."""
    from sqlalchemy import create_engine, text

    url = _control_url(daemon)
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT metadata_db_uri FROM tracking_servers WHERE name = :n"), {"n": name}
        ).scalar()
    engine.dispose()
    return value


def _control_url(daemon: Daemon) -> str:
    if "--database-url" in daemon.extra:
        url = daemon.extra[daemon.extra.index("--database-url") + 1]
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{daemon.data_dir / 'mlfleet.db'}"


def _error_code(call, **params) -> str:  # type: ignore[no-untyped-def]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call(**params)
    return str(info.value.response["Error"]["Code"])
