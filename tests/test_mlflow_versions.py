"""Tracking servers on an MLflow release other than mlfleet's own, beside servers on it: the
release resolved from the package index, installed once, and served through the same gateway,
fast lane, data events and sandbox. Needs the package index (PyPI): skipped when unreachable."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow
import psycopg
import pytest
import requests
from botocore.exceptions import ClientError
from mlflow import MlflowClient
from packaging.version import Version

from mlfleet.cli.common import service_client
from mlfleet.versions.releases import Catalog, fetch_catalog, resolve
from support.audit import logged_metric
from support.aws import ACCOUNT, unique
from support.chaos import worker_pids
from support.daemon import Daemon
from support.events import Receiver, detail_types, route_to
from support.procs import argv_of
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
    daemon: Daemon,
    tmp_path: Path,
    signed_in: None,
    index: Catalog,
    shared_server: dict[str, Any],
    receiver: Receiver,
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
        "--automatic-model-registration",
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
    old_tag = unique("old")
    for server, tag in ((desc, old_tag), (shared_server, unique("new"))):
        seen = use(server["TrackingServerUrl"], tmp_path, tag)
        assert seen.pop("artifact").startswith("weights of")
        assert seen == expected, server["TrackingServerName"]
    # Automatic registration works for its model versions as for any server's.
    old_client = MlflowClient(desc["TrackingServerUrl"])
    registered = wait_for(
        lambda: old_client.get_model_version(f"model-{old_tag}", "1").tags.get(
            "sagemaker.model_package_arn"
        ),
        60,
        what="the model package of the 2.x server's model version",
    )
    assert f"model-package/model-{old_tag}-" in registered

    # Its writes are data events in the trail, as any server's.
    arn = desc["TrackingServerArn"]
    wait_for(lambda: len(logged_metric(daemon, arn, "loss")) == 5, 60, what="LogMetric events")

    environment = daemon.data_dir / "mlflow-versions" / release
    workers = [
        pid
        for pid in worker_pids(daemon.data_dir)
        if argv_of(pid)[:1] == [str(environment / "bin" / "python")]
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
        # Read-only by the kernel: code in one tenant's worker cannot change the software every
        # server of that release runs.
        mounts = [m.split() for m in Path(f"/proc/{workers[0]}/mountinfo").read_text().splitlines()]
        software = next(m for m in mounts if m[4] == str(environment))
        assert "ro" in software[5].split(","), software

    database = daemon.data_dir / "servers" / daemon.server_id(desc["TrackingServerName"])

    def in_sqlite(statement: str) -> None:
        with closing(sqlite3.connect(database / "mlflow.db")) as conn:
            conn.execute(statement)
            conn.commit()

    route_to(
        daemon, receiver, {"source": ["aws.sagemaker"], "detail": {"TrackingServerName": [name]}}
    )
    upgraded_in_place(daemon, desc, environment, tmp_path, in_sqlite)

    assert detail_types(receiver, "Tracking Server Updat", 4) == [
        "SageMaker Tracking Server Updating",
        "SageMaker Tracking Server Update Failed",
        "SageMaker Tracking Server Updating",
        "SageMaker Tracking Server Updated",
    ]


def upgraded_in_place(
    daemon: Daemon,
    desc: dict[str, Any],
    environment: Path,
    tmp_path: Path,
    in_database: Callable[[str], None],
) -> None:
    """The 2.x server moved to mlfleet's own 3.x release: first an upgrade that fails in
    MLflow's migrations (a table one of them creates is already there), rolled back; then one
    that works. Its data is all there after each. ``in_database`` runs a statement in the
    server's database, as its operator could."""
    name, old = desc["TrackingServerName"], desc["MlflowVersion"]
    new = mlflow.__version__
    client = MlflowClient(desc["TrackingServerUrl"])
    before = snapshot(client, tmp_path)
    in_database("CREATE TABLE webhooks (id INTEGER)")  # MLflow 3.x's migrations make it

    failed = daemon.mlfleet("update", name, "--mlflow-version", new)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    after_failure = daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)
    assert after_failure["TrackingServerStatus"] == "UpdateFailed"
    assert after_failure["MlflowVersion"] == old
    assert after_failure["IsActive"] == "Active", "serving again on its old release"
    # mlfleet's extension of Describe, which boto3 drops and mlfleet's CLI keeps.
    extended = service_client(daemon.data_dir, daemon.url).describe_mlflow_tracking_server(
        TrackingServerName=name
    )
    reason = extended["FailureReason"]
    assert f"back on MLflow {old}" in reason and "webhooks" in reason, reason
    assert snapshot(client, tmp_path) == before

    in_database("DROP TABLE webhooks")
    upgraded = daemon.mlfleet("update", name, "--mlflow-version", new)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    after = daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)
    assert (after["TrackingServerStatus"], after["MlflowVersion"]) == ("Updated", new)
    key, secret = daemon.credentials
    answered = requests.get(f"{after['TrackingServerUrl']}/version", auth=(key, secret), timeout=30)
    assert answered.text == new
    assert snapshot(client, tmp_path) == before
    # One backup per attempt, taken before anything changed.
    backups = daemon.client("mlfleet").list_tracking_server_backups(TrackingServerName=name)
    assert len(backups["TrackingServerBackups"]) == 2
    # No server runs the old release any more: its environment goes (removed after Updated).
    wait_for(lambda: not environment.exists(), 60, what=f"removal of {environment}")
    # And the new release serves writes as well as reads.
    assert use(after["TrackingServerUrl"], tmp_path, "after")["status"] == "FINISHED"
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=name)


def snapshot(client: MlflowClient, scratch: Path) -> dict[str, Any]:
    """Every experiment, run (params, metrics' histories, tags, artifacts) and model version."""

    def artifacts(run_id: str) -> dict[str, str]:
        # Downloaded, not listed: MLflow 3's client lists a run's artifacts through logged
        # models, which a 2.x server does not have.
        folder = Path(client.download_artifacts(run_id, "docs", str(scratch / unique("a"))))
        return {p.name: p.read_text() for p in folder.iterdir()}

    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    return {
        "experiments": sorted(e.name for e in experiments),
        "runs": {
            r.info.run_id: (
                r.data.params,
                {
                    k: [m.value for m in client.get_metric_history(r.info.run_id, k)]
                    for k in r.data.metrics
                },
                {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
                artifacts(r.info.run_id),
                r.info.status,
            )
            for r in runs
        },
        "versions": sorted((v.name, v.version, v.run_id) for v in client.search_model_versions()),
    }


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


def test_maintenance_installs_the_newest_patch_release_when_tagged(
    daemon: Daemon, tmp_path: Path, signed_in: None, index: Catalog
) -> None:
    line = sorted((v for v in index if v.startswith(f"{OLD_LINE}.")), key=Version)
    if len(line) < 2:
        pytest.skip(f"MLflow {OLD_LINE} has one release only")
    older, newest = line[-2], line[-1]
    sm = daemon.client()
    name = unique("patch")
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path / name}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
        MlflowVersion=older,
        Tags=[{"Key": "mlfleet:patch-upgrades", "Value": "on"}],
    )
    desc = daemon.wait_status(name, "Created", "CreateFailed", timeout=600)
    assert (desc["TrackingServerStatus"], desc["MlflowVersion"]) == ("Created", older)
    client = MlflowClient(desc["TrackingServerUrl"])
    use(desc["TrackingServerUrl"], tmp_path, "patch")
    before = snapshot(client, tmp_path)

    done = daemon.mlfleet("maintenance", name)
    assert done.returncode == 0, done.stdout + done.stderr
    after = sm.describe_mlflow_tracking_server(TrackingServerName=name)
    assert after["TrackingServerStatus"] == "MaintenanceComplete"
    assert after["TrackingServerMaintenanceStatus"] == "MaintenanceComplete"
    assert after["MlflowVersion"] == newest
    key, secret = daemon.credentials
    answered = requests.get(f"{after['TrackingServerUrl']}/version", auth=(key, secret), timeout=30)
    assert answered.text == newest
    assert snapshot(client, tmp_path) == before

    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    versions = daemon.data_dir / "mlflow-versions"
    wait_for(
        lambda: not (versions / older).exists() and not (versions / newest).exists(),
        60,
        what="removal of the environments no server runs",
    )


def test_a_2x_server_on_postgresql_upgraded_in_place(
    pg_daemon: Daemon, tmp_path: Path, index: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same upgrade, failed and then done, with the server's database on PostgreSQL (the
    copy to go back to is a database made from it as a template)."""
    key, secret = pg_daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    release = resolve(OLD_LINE, index)
    name = unique("v2pg")
    pg_daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path / name}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
        MlflowVersion=OLD_LINE,
    )
    desc = pg_daemon.wait_status(name, "Created", "CreateFailed", timeout=600)
    assert (desc["TrackingServerStatus"], desc["MlflowVersion"]) == ("Created", release)
    assert use(desc["TrackingServerUrl"], tmp_path, "pg")["status"] == "FINISHED"
    control = pg_daemon.extra[pg_daemon.extra.index("--database-url") + 1]
    with psycopg.connect(control, autocommit=True) as conn:
        found = conn.execute("SELECT id FROM tracking_servers WHERE name = %s", (name,)).fetchone()
    assert found is not None
    tenant = control.rsplit("/", 1)[0] + f"/mlfleet_ts_{found[0]}"

    def in_postgresql(statement: str) -> None:
        with psycopg.connect(tenant, autocommit=True) as conn:
            conn.execute(statement)

    environment = pg_daemon.data_dir / "mlflow-versions" / str(release)
    upgraded_in_place(pg_daemon, desc, environment, tmp_path, in_postgresql)
