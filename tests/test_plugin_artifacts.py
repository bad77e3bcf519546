"""The sagemaker-mlflow plugin's artifact path, unchanged client: with the tracking server's ARN
as tracking URI and the daemon's AWS config and credentials files (what `mlfleet up` writes),
artifacts and models go through the S3 endpoint and are the same files the plain MLflow client
sees through the TrackingServerUrl."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from support.chaos import trail_records
from support.daemon import Daemon
from support.plugin import as_notebook


class Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input * 2


@pytest.fixture
def plugin(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> MlflowClient:
    """An MLflow client set up as a SageMaker notebook is, against the daemon."""
    return as_notebook(daemon, monkeypatch, shared_server["TrackingServerArn"])


def plain(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> MlflowClient:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    return MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])


def test_artifacts_through_the_arn_are_the_servers_files(
    plugin: MlflowClient,
    daemon: Daemon,
    shared_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    run = plugin.create_run("0")
    assert run.info.artifact_uri.startswith("s3://shared/"), run.info.artifact_uri
    notes = tmp_path / "notes.txt"
    notes.write_text("logged through the plugin\n")
    plugin.log_artifact(run.info.run_id, str(notes), "docs")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.csv").write_text("x,y\n1,2\n")
    plugin.log_artifacts(run.info.run_id, str(folder), "tables")
    listed = sorted(f.path for f in plugin.list_artifacts(run.info.run_id))
    assert listed == ["docs", "tables"]
    back = plugin.download_artifacts(run.info.run_id, "docs/notes.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == "logged through the plugin\n"

    # The same files, seen by the plain client through the TrackingServerUrl, in MLflow's form.
    other = plain(daemon, shared_server, monkeypatch)
    seen = other.get_run(run.info.run_id)
    assert seen.info.artifact_uri.startswith("mlflow-artifacts:/"), seen.info.artifact_uri
    fetched = other.download_artifacts(run.info.run_id, "tables/sub/a.csv", str(tmp_path / "p"))
    assert Path(fetched).read_text() == "x,y\n1,2\n"

    # The MLflow UI (a presigned session) shows them: its artifact list and file view.
    link = daemon.client().create_presigned_mlflow_tracking_server_url(
        TrackingServerName=shared_server["TrackingServerName"]
    )["AuthorizedUrl"]
    browser = requests.Session()
    assert browser.get(link, timeout=30).status_code == 200
    base = shared_server["TrackingServerUrl"]
    run_id = run.info.run_id
    listed = browser.get(
        f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}&path=docs", timeout=30
    )
    assert [f["path"] for f in listed.json()["files"]] == ["docs/notes.txt"]
    shown = browser.get(f"{base}/get-artifact?path=docs/notes.txt&run_uuid={run_id}", timeout=30)
    assert shown.text == "logged through the plugin\n"

    # What the plugin sends in its view is stored in MLflow's form, on connections the gateway
    # serves and those it handed to the worker alike.
    for n in range(3):
        name = f"placed-{uuid.uuid4().hex[:6]}"
        created = plugin.create_experiment(name, artifact_location=f"s3://shared/placed/{n}")
        assert plugin.get_experiment(created).artifact_location == f"s3://shared/placed/{n}"
        assert other.get_experiment(created).artifact_location == f"mlflow-artifacts:/placed/{n}"


def test_a_notebook_logs_registers_and_loads_a_model(
    plugin: MlflowClient,
    daemon: Daemon,
    shared_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"doubler-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment(name)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Doubler(), registered_model_name=name
        )
    version = plugin.get_model_version(name, "1")
    assert version.source.startswith(("s3://shared/", "models:/")), version.source
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert loaded.predict(pd.DataFrame({"x": [1.0, 2.5]}))["x"].tolist() == [2.0, 5.0]
    assert mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"x": [3.0]}))[
        "x"
    ].tolist() == [6.0]

    # MLflow's records hold MLflow's own locations, not the plugin's view.
    stored = plain(daemon, shared_server, monkeypatch).get_model_version(name, "1")
    assert not stored.source.startswith("s3://"), stored.source


def test_presigned_uploads_are_the_callers_puts(
    plugin: MlflowClient,
    daemon: Daemon,
    shared_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SAGEMAKER_PRESIGNED_URL_UPLOAD_ENABLED", "true")
    run = plugin.create_run("0")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 4096)
    plugin.log_artifact(run.info.run_id, str(weights), "model")
    other = plain(daemon, shared_server, monkeypatch)
    fetched = other.download_artifacts(run.info.run_id, "model/weights.bin", str(tmp_path / "b"))
    assert Path(fetched).read_bytes() == weights.read_bytes()
    # Through a URL the gateway presigned for it, not a signed PutObject of the plugin's own.
    asked = [
        r
        for r in trail_records(daemon, "LogModel")
        if r["requestParameters"]["path"] == "/api/2.0/mlflow/artifacts/presigned-upload-url"
        and r["requestParameters"]["body"]["run_id"] == run.info.run_id
    ]
    assert [r["requestParameters"]["body"]["path"] for r in asked] == ["model/weights.bin"]
    [put] = [
        r
        for r in trail_records(daemon, "PutObject")
        if r["requestParameters"]["key"].endswith(f"{run.info.run_id}/artifacts/model/weights.bin")
    ]
    assert put["userIdentity"]["arn"].endswith(":user/admin")
