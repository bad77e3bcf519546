"""Tracking servers on an MLflow release other than mlfleet's own, beside servers on it: the
release resolved from the package index, installed once, and served through the same gateway,
fast lane, data events and sandbox. Needs the package index (PyPI): skipped when unreachable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from mlfleet.versions.releases import Catalog, fetch_catalog, resolve
from support.audit import logged_metric
from support.aws import ACCOUNT, unique
from support.chaos import worker_pids
from support.daemon import Daemon
from support.waiting import wait_for

# The newest 2.x line: the oldest MLflow line the README says is tested.
OLD_LINE = "2.22"


@pytest.fixture(scope="module")
def index() -> Catalog:
    try:
        return fetch_catalog()
    except (OSError, ValueError) as exc:
        pytest.skip(f"the package index cannot be reached: {exc}")


@pytest.fixture
def signed_in(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)


def use(url: str, tmp_path: Path, tag: str) -> dict[str, Any]:
    """What a training script does, through the MLflow client; what it wrote, read back."""
    client = MlflowClient(url)
    experiment = client.create_experiment(f"exp-{tag}")
    run = client.create_run(experiment, tags={"team": "vision"}).info.run_id
    client.log_param(run, "alpha", "0.5")
    for step in range(5):
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
    notes = tmp_path / f"notes-{tag}.txt"
    notes.write_text(f"weights of {tag}")
    client.log_artifact(run, str(notes), artifact_path="docs")
    client.set_terminated(run)
    model = f"model-{tag}"
    client.create_registered_model(model)
    version = client.create_model_version(model, f"{client.get_run(run).info.artifact_uri}/m", run)
    downloaded = client.download_artifacts(run, f"docs/notes-{tag}.txt", str(tmp_path))
    found = client.search_runs([experiment], "params.alpha = '0.5'")
    return {
        "params": client.get_run(run).data.params,
        "losses": [m.value for m in client.get_metric_history(run, "loss")],
        "artifact": Path(downloaded).read_text(),
        "found": [r.info.run_id for r in found] == [run],
        "version": client.get_model_version(model, version.version).run_id == run,
        "status": client.get_run(run).info.status,
    }


def test_a_2x_server_beside_a_3x_server(
    daemon: Daemon, tmp_path: Path, signed_in: None, index: Catalog, shared_server: dict[str, Any]
) -> None:
    release = resolve(OLD_LINE, index)
    assert release is not None
    sm = daemon.client()
    name = unique("v2")
    created = daemon.mlfleet(
        "create",
        name,
        "--artifact-store-uri",
        f"file://{tmp_path / 'artifacts'}",
        "--mlflow-version",
        OLD_LINE,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    desc = sm.describe_mlflow_tracking_server(TrackingServerName=name)
    assert desc["TrackingServerStatus"] == "Created", desc
    # The line resolved to its newest release, which the server itself reports.
    assert desc["MlflowVersion"] == release
    key, secret = daemon.credentials
    answered = requests.get(f"{desc['TrackingServerUrl']}/version", auth=(key, secret), timeout=30)
    assert answered.text == release
    listed = sm.list_mlflow_tracking_servers(MlflowVersion=release)["TrackingServerSummaries"]
    assert [s["TrackingServerName"] for s in listed] == [name]

    expected = {
        "params": {"alpha": "0.5"},
        "losses": [1.0, 0.5, 1 / 3, 0.25, 0.2],
        "found": True,
        "version": True,
        "status": "FINISHED",
    }
    for server, tag in ((desc, "old"), (shared_server, "new")):
        seen = use(server["TrackingServerUrl"], tmp_path, tag + unique(""))
        assert seen.pop("artifact").startswith("weights of")
        assert seen == expected, server["TrackingServerName"]

    # Its writes are data events in the trail, as any server's.
    arn = desc["TrackingServerArn"]
    wait_for(lambda: len(logged_metric(daemon, arn, "loss")) == 5, 60, what="LogMetric events")

    environment = daemon.data_dir / "mlflow-versions" / release
    workers = [
        pid
        for pid in worker_pids(daemon.data_dir)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        == str(environment / "bin" / "python").encode()
    ]
    assert len(workers) == 1, "the server's one worker runs its release's interpreter"
    health = requests.get(f"{daemon.url}/health", timeout=5).json()
    if health["sandbox"]["confined"] and os.geteuid() == 0:
        root = Path(f"/proc/{workers[0]}/root")
        inside = root / str(daemon.data_dir).lstrip("/")
        assert not (inside / "master.key").exists()
        assert len(list((inside / "servers").iterdir())) == 1  # its own database's folder
        # Its release's environment, read-only; no other release's.
        assert (root / str(environment).lstrip("/") / "bin").is_dir()
        assert sorted(p.name for p in (inside / "mlflow-versions").iterdir()) == [release]

    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    # No other server runs that release: its environment goes with the last one.
    wait_for(lambda: not environment.exists(), 60, what=f"removal of {environment}")


def test_versions_that_cannot_run_are_refused_at_create(
    daemon: Daemon, index: Catalog, tmp_path: Path
) -> None:
    sm = daemon.client()
    for requested, says in (
        ("2.99", "no MLflow release from 2.10 on matches it"),
        ("1.30", "mlfleet runs MLflow 2.10 and later"),
        ("3.17.2rc1", "regular expression pattern"),
    ):
        with pytest.raises(ClientError) as refused:
            sm.create_mlflow_tracking_server(
                TrackingServerName=unique("bad-version"),
                ArtifactStoreUri=f"file://{tmp_path / unique('x')}",
                RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
                MlflowVersion=requested,
            )
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException", requested
        assert says in error["Message"], error["Message"]
