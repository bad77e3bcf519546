"""Backups of a serving tracking server, new servers restored from them, and maintenance, through
boto3 (the ``mlfleet`` service model), the mlfleet CLI and the MLflow client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from botocore.exceptions import ClientError
from mlflow import MlflowClient
from mlflow.entities import Metric

from mlfleet.cli.common import service_client
from support.aws import ACCOUNT, moto_s3, unique
from support.console import launch, needs_chromium, screenshot, sign_in_page
from support.daemon import Daemon
from support.events import Receiver, detail_types, route_to
from support.iam import new_user
from support.waiting import wait_for

READ_ONLY = "arn:aws:iam::aws:policy/MlfleetReadOnlyAccess"


def new_server(daemon: Daemon, folder: Path) -> dict[str, Any]:
    name = unique("bk")
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{folder / name}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
    )
    desc = daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    return desc


@pytest.fixture
def signed_in(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)


def completed(daemon: Daemon, backup_id: str) -> dict[str, Any]:
    client = daemon.client("mlfleet")

    def done() -> dict[str, Any] | None:
        found = client.describe_tracking_server_backup(BackupId=backup_id)
        return found if found["BackupStatus"] != "InProgress" else None

    found = wait_for(done, 120, what=f"backup {backup_id}")
    assert found["BackupStatus"] == "Completed", found
    return found


def test_a_restored_server_has_every_run_artifact_and_model_of_the_backup(
    daemon: Daemon, tmp_path: Path, signed_in: None
) -> None:
    backed_up_and_restored(daemon, tmp_path)


def test_a_server_on_postgresql_is_backed_up_with_pg_dump_and_restored(
    pg_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = pg_daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    backed_up_and_restored(pg_daemon, tmp_path)


def backed_up_and_restored(daemon: Daemon, tmp_path: Path) -> None:
    """A backup of a serving server restored into a new one: everything of the moment of the
    backup, nothing written after it, the original untouched."""
    server = new_server(daemon, tmp_path)
    client = MlflowClient(server["TrackingServerUrl"])
    experiment = client.create_experiment("kept")
    run = client.create_run(experiment).info.run_id
    client.log_param(run, "alpha", "0.5")
    for step in range(3):
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
    notes = tmp_path / "notes.txt"
    notes.write_text("weights and measures")
    client.log_artifact(run, str(notes), artifact_path="docs")
    client.set_terminated(run)
    client.create_registered_model("kept-model")
    client.create_model_version("kept-model", f"runs:/{run}/docs", run_id=run)

    started = daemon.client("mlfleet").create_tracking_server_backup(
        TrackingServerName=server["TrackingServerName"]
    )
    assert started["BackupStatus"] == "InProgress"
    assert started["BackupArn"].endswith(f"mlflow-tracking-server-backup/{started['BackupId']}")
    backup = completed(daemon, started["BackupId"])
    assert backup["ArtifactCount"] >= 1 and backup["MetadataBytes"] > 0
    assert backup["TrackingServerArn"] == server["TrackingServerArn"]
    # Written after the backup: not in what it restores.
    client.create_run(experiment, run_name="later")

    listed = daemon.client("mlfleet").list_tracking_server_backups(
        TrackingServerName=server["TrackingServerName"]
    )["TrackingServerBackups"]
    assert [b["BackupId"] for b in listed] == [started["BackupId"]]

    copy = unique("restored")
    answer = daemon.mlfleet("restore", started["BackupId"], "--to", copy)
    assert answer.returncode == 0, answer.stderr
    assert f"artifacts restored: {backup['ArtifactCount']}" in answer.stdout

    restored = MlflowClient(daemon.wait_status(copy, "Created")["TrackingServerUrl"])
    runs = restored.search_runs([restored.get_experiment_by_name("kept").experiment_id])
    assert [r.info.run_id for r in runs] == [run]
    assert runs[0].data.params == {"alpha": "0.5"}
    history = restored.get_metric_history(run, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    fetched = restored.download_artifacts(run, "docs/notes.txt", str(tmp_path / "fetched"))
    assert Path(fetched).read_text() == "weights and measures"
    versions = restored.search_model_versions("name='kept-model'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run)]
    # The original serves on, untouched.
    assert len(client.search_runs([experiment])) == 2


def test_a_restore_reports_the_artifacts_the_backup_lacks(
    daemon: Daemon, tmp_path: Path, signed_in: None
) -> None:
    server = new_server(daemon, tmp_path)
    client = MlflowClient(server["TrackingServerUrl"])
    run = client.create_run(client.create_experiment("damaged")).info.run_id
    for name, text in (("kept.txt", "intact"), ("lost.txt", "gone")):
        (tmp_path / name).write_text(text)
        client.log_artifact(run, str(tmp_path / name))

    taken = daemon.mlfleet("backup", server["TrackingServerName"])
    assert taken.returncode == 0, taken.stderr
    backup_id = taken.stdout.split()[0]
    assert "Completed" in taken.stdout
    # The backup's copy of one file is damaged on disk.
    objects = [p for p in (daemon.data_dir / "backups").glob("*/objects/*/*") if p.is_file()]
    damaged = next(p for p in objects if p.read_bytes() == b"gone")
    damaged.write_bytes(b"tampered")

    copy = unique("partial")
    answer = daemon.mlfleet("restore", backup_id, "--to", copy)
    assert answer.returncode == 2, answer.stdout + answer.stderr
    assert "missing from the backup (1)" in answer.stderr
    assert "lost.txt" in answer.stderr and "kept.txt" not in answer.stderr
    restored = MlflowClient(daemon.wait_status(copy, "Created")["TrackingServerUrl"])
    assert Path(restored.download_artifacts(run, "kept.txt", str(tmp_path / "k"))).read_text() == (
        "intact"
    )


def test_backups_need_mlfleet_actions(daemon: Daemon, tmp_path: Path) -> None:
    server = new_server(daemon, tmp_path)
    reader = new_user(daemon, READ_ONLY)
    as_reader = daemon.client(
        "mlfleet", key=reader["AccessKeyId"], secret=reader["SecretAccessKey"]
    )
    with pytest.raises(ClientError) as refused:
        as_reader.create_tracking_server_backup(TrackingServerName=server["TrackingServerName"])
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "mlfleet:CreateTrackingServerBackup" in refused.value.response["Error"]["Message"]
    assert "TrackingServerBackups" in as_reader.list_tracking_server_backups()


def test_bad_requests_are_refused_with_the_reason(daemon: Daemon) -> None:
    backups = daemon.client("mlfleet")
    with pytest.raises(ClientError) as absent:
        backups.create_tracking_server_backup(TrackingServerName=unique("absent"))
    assert absent.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as unknown:
        backups.describe_tracking_server_backup(BackupId="no-such-backup")
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as invalid:
        backups.restore_tracking_server_backup(BackupId="b-1", TrackingServerName="bad name!")
    error = invalid.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "trackingServerName" in error["Message"] or "TrackingServerName" in error["Message"]


def test_maintenance_backs_up_compacts_and_serves_again_with_its_events(
    daemon: Daemon, receiver: Receiver, tmp_path: Path, signed_in: None
) -> None:
    server = new_server(daemon, tmp_path)
    name = server["TrackingServerName"]
    route_to(
        daemon, receiver, {"source": ["aws.sagemaker"], "detail": {"TrackingServerName": [name]}}
    )
    client = MlflowClient(server["TrackingServerUrl"])
    experiment = client.create_experiment("maintained")
    run = client.create_run(experiment).info.run_id
    client.log_batch(run, metrics=[Metric("m", float(i), 0, i) for i in range(500)])
    client.delete_run(client.create_run(experiment).info.run_id)

    answer = daemon.mlfleet("maintenance", name)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "MaintenanceComplete" in answer.stdout

    desc = daemon.client().describe_mlflow_tracking_server(TrackingServerName=name)
    assert desc["TrackingServerStatus"] == "MaintenanceComplete"
    assert desc["TrackingServerMaintenanceStatus"] == "MaintenanceComplete"
    assert desc["IsActive"] == "Active"

    assert detail_types(receiver, "Tracking Server Maintenance", 2) == [
        "SageMaker Tracking Server Maintenance In Progress",
        "SageMaker Tracking Server Maintenance Complete",
    ]
    # Its first step, a backup, is listed; the data is intact and served.
    taken = daemon.client("mlfleet").list_tracking_server_backups(TrackingServerName=name)
    assert [b["BackupStatus"] for b in taken["TrackingServerBackups"]] == ["Completed"]
    assert len(client.get_metric_history(run, "m")) == 500
    # A maintenance is begun only from a serving status, as SageMaker words refusals.
    daemon.client().stop_mlflow_tracking_server(TrackingServerName=name)
    daemon.wait_status(name, "Stopped")
    with pytest.raises(ClientError) as refused:
        daemon.client("mlfleet").start_tracking_server_maintenance(TrackingServerName=name)
    assert "can't be maintained" in refused.value.response["Error"]["Message"]


def test_a_backup_is_deleted_with_the_copies_only_it_held(
    daemon: Daemon, tmp_path: Path, signed_in: None
) -> None:
    server = new_server(daemon, tmp_path)
    name = server["TrackingServerName"]
    client = MlflowClient(server["TrackingServerUrl"])
    run = client.create_run(client.create_experiment("twice")).info.run_id
    (tmp_path / "shared.txt").write_text("in both backups")
    client.log_artifact(run, str(tmp_path / "shared.txt"))
    first = daemon.mlfleet("backup", name).stdout.split()[0]
    (tmp_path / "later.txt").write_text("in the second only")
    client.log_artifact(run, str(tmp_path / "later.txt"))
    second = daemon.mlfleet("backup", name).stdout.split()[0]
    objects = daemon.data_dir / "backups" / daemon.server_id(name) / "objects"

    def contents() -> set[bytes]:
        return {p.read_bytes() for p in objects.glob("*/*")}

    assert contents() == {b"in both backups", b"in the second only"}
    deleted = daemon.mlfleet("delete-backup", second)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    mlfleet_api = daemon.client("mlfleet")
    listed = mlfleet_api.list_tracking_server_backups(TrackingServerName=name)
    assert [b["BackupId"] for b in listed["TrackingServerBackups"]] == [first]
    with pytest.raises(ClientError) as gone:
        mlfleet_api.describe_tracking_server_backup(BackupId=second)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFound"
    wait_for(lambda: contents() == {b"in both backups"}, 30, what="the second's own copy removed")


def test_a_failed_maintenance_says_why_and_the_server_serves_on(
    daemon: Daemon, receiver: Receiver, tmp_path: Path, signed_in: None
) -> None:
    """A real fault: where the server's backups go is a file, so the maintenance's backup
    cannot be written. The maintenance fails with the reason; the server serves meanwhile and
    after; once the fault is gone, the next one completes."""
    server = new_server(daemon, tmp_path)
    name = server["TrackingServerName"]
    route_to(
        daemon, receiver, {"source": ["aws.sagemaker"], "detail": {"TrackingServerName": [name]}}
    )
    client = MlflowClient(server["TrackingServerUrl"])
    experiment = client.create_experiment("still-here")
    blocked = daemon.data_dir / "backups" / daemon.server_id(name)
    blocked.parent.mkdir(exist_ok=True)
    blocked.write_text("not a folder")
    try:
        answer = daemon.mlfleet("maintenance", name)
        assert answer.returncode == 1, answer.stdout + answer.stderr
        described = service_client(daemon.data_dir, daemon.url).describe_mlflow_tracking_server(
            TrackingServerName=name
        )
        assert described["TrackingServerStatus"] == "MaintenanceFailed"
        assert described["TrackingServerMaintenanceStatus"] == "MaintenanceFailed"
        assert described["IsActive"] == "Active"
        assert "maintenance failed: backup" in described["FailureReason"]
        assert client.get_experiment(experiment).name == "still-here"
        client.create_run(experiment)

        assert detail_types(receiver, "Tracking Server Maintenance", 2) == [
            "SageMaker Tracking Server Maintenance In Progress",
            "SageMaker Tracking Server Maintenance Failed",
        ]
    finally:
        blocked.unlink()
    again = daemon.mlfleet("maintenance", name)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "MaintenanceComplete" in again.stdout


def test_daily_backups_are_taken_and_the_oldest_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule, a day made two seconds: a server is backed up each "day", backups the
    daemon took are removed once older than its retention (a tag, in days; here 3.5 s), the
    one a user asked for stays, and a server tagged off gets none."""
    monkeypatch.setenv("MLFLEET_DAILY_BACKUP_SECONDS", "2")
    own = Daemon(tmp_path / "daily").start()
    try:
        sm, backups = own.client(), own.client("mlfleet")
        for name, tag in (
            ("daily", {"Key": "mlfleet:backup-retention-days", "Value": "0.00004"}),
            ("no-daily", {"Key": "mlfleet:daily-backups", "Value": "off"}),
        ):
            sm.create_mlflow_tracking_server(
                TrackingServerName=name,
                ArtifactStoreUri=f"file://{tmp_path / 'artifacts' / name}",
                RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
                Tags=[tag],
            )
            assert own.wait_status(name, "Created", "CreateFailed")["TrackingServerStatus"] == (
                "Created"
            )
        manual = backups.create_tracking_server_backup(TrackingServerName="daily")["BackupId"]
        completed(own, manual)

        def listed(name: str) -> dict[str, str]:
            found = backups.list_tracking_server_backups(TrackingServerName=name)
            return {b["BackupId"]: b["BackupOrigin"] for b in found["TrackingServerBackups"]}

        first = wait_for(
            lambda: next((i for i, o in listed("daily").items() if o == "Daily"), None),
            60,
            what="a daily backup",
        )
        wait_for(lambda: first not in listed("daily"), 60, what=f"removal of {first}")
        now = listed("daily")
        assert now[manual] == "Manual"
        assert "Daily" in now.values()
        assert listed("no-daily") == {}
        # What the removed backups alone held is gone from the objects too.
        objects = own.data_dir / "backups" / own.server_id("daily") / "objects"
        named = set()
        for backup_id in now:
            manifest = objects.parent / backup_id / "manifest.json"
            if manifest.exists():
                named |= {a["sha256"] for a in json.loads(manifest.read_text())["artifacts"]}
        assert {p.name for p in objects.glob("*/*")} <= named
    finally:
        own.stop()


@needs_chromium
def test_a_backup_is_taken_and_restored_from_the_console(daemon: Daemon, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    name = new_server(daemon, tmp_path)["TrackingServerName"]
    copy = unique("from-console")
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            sign_in_page(page, daemon)
            page.goto(f"{daemon.url}/console/servers/{name}")
            expect(page.get_by_role("heading", name=name)).to_be_visible()
            expect(page.get_by_text("No backups yet")).to_be_visible()
            page.get_by_role("button", name="Back up now").click()
            expect(page.get_by_text(f"Backing up {name}.")).to_be_visible()

            def completed() -> bool:
                page.reload()
                return page.get_by_role("button", name="Restore").count() == 1

            wait_for(completed, 60, what="the completed backup on the server's page")
            screenshot(page, "server-backups")
            page.get_by_label("New server's name").fill(copy)
            page.get_by_role("button", name="Restore").click()
            expect(
                page.get_by_text(f"Restoring into a new tracking server, {copy}.")
            ).to_be_visible()
            # The release form runs mlfleet's upgrade, refusals shown as the API words them.
            page.get_by_text("Change MLflow release").click()
            page.get_by_label("MLflow release").fill(mlflow.__version__)
            page.get_by_role("button", name="Change release").click()
            expect(
                page.get_by_text(f"the server already runs MLflow {mlflow.__version__}")
            ).to_be_visible()
        finally:
            browser.close()
    assert daemon.wait_status(copy, "Created", "CreateFailed")["TrackingServerStatus"] == "Created"


def test_a_server_with_an_s3_store_is_backed_up_and_restored_into_a_new_prefix(
    daemon: Daemon, tmp_path: Path, signed_in: None, s3_env: dict[str, str]
) -> None:
    s3 = moto_s3(s3_env)
    bucket, name = unique("backed"), unique("on-s3")
    s3.create_bucket(Bucket=bucket)
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"s3://{bucket}/team/{name}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
    )
    server = daemon.wait_status(name, "Created", "CreateFailed")
    assert server["TrackingServerStatus"] == "Created", server
    client = MlflowClient(server["TrackingServerUrl"])
    run = client.create_run(client.create_experiment("in-s3")).info.run_id
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" * 4096)
    client.log_artifact(run, str(tmp_path / "weights.bin"), artifact_path="model")

    taken = daemon.client("mlfleet").create_tracking_server_backup(TrackingServerName=name)
    backup = completed(daemon, taken["BackupId"])
    assert backup["ArtifactCount"] == 1

    copy = unique("s3-copy")
    daemon.client("mlfleet").restore_tracking_server_backup(
        BackupId=backup["BackupId"], TrackingServerName=copy
    )
    restored = daemon.wait_status(copy, "Created", "CreateFailed")
    assert restored["TrackingServerStatus"] == "Created", restored
    # Beside the original's prefix, named after the new server.
    assert restored["ArtifactStoreUri"] == f"s3://{bucket}/team/{copy}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"team/{copy}/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith("/model/weights.bin")
    fetched = MlflowClient(restored["TrackingServerUrl"]).download_artifacts(
        run, "model/weights.bin", str(tmp_path / "fetched")
    )
    assert Path(fetched).read_bytes() == b"\x00\x01" * 4096


def test_backups_kept_in_the_operators_s3_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]
) -> None:
    """With ``backup_location`` an s3:// URI, a server's backups live there (nothing under the
    data dir but staging), restore from there, and are deleted there."""
    s3 = moto_s3(s3_env)
    bucket = unique("vault")
    s3.create_bucket(Bucket=bucket)
    for variable, value in {**s3_env, "MLFLEET_BACKUP_LOCATION": f"s3://{bucket}/mlfleet"}.items():
        monkeypatch.setenv(variable, value)
    own = Daemon(tmp_path / "vaulted").start()
    try:
        key, secret = own.credentials
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        server = new_server(own, tmp_path / "artifacts")
        client = MlflowClient(server["TrackingServerUrl"])
        run = client.create_run(client.create_experiment("vaulted")).info.run_id
        (tmp_path / "notes.txt").write_text("kept in the vault")
        client.log_artifact(run, str(tmp_path / "notes.txt"))
        backup_id = own.mlfleet("backup", server["TrackingServerName"]).stdout.split()[0]
        server_id = own.server_id(server["TrackingServerName"])

        def stored() -> list[str]:
            found = s3.list_objects_v2(Bucket=bucket, Prefix=f"mlfleet/{server_id}/")
            return sorted(o["Key"].split("/", 2)[2] for o in found.get("Contents", []))

        kept = stored()
        assert f"{backup_id}/manifest.json" in kept and f"{backup_id}/metadata.db" in kept
        assert len([k for k in kept if k.startswith("objects/")]) == 1
        assert not (own.data_dir / "backups" / server_id).exists()

        copy = unique("from-vault")
        restored = own.mlfleet("restore", backup_id, "--to", copy)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        url = own.client().describe_mlflow_tracking_server(TrackingServerName=copy)[
            "TrackingServerUrl"
        ]
        fetched = MlflowClient(url).download_artifacts(run, "notes.txt", str(tmp_path / "f"))
        assert Path(fetched).read_text() == "kept in the vault"

        assert own.mlfleet("delete-backup", backup_id).returncode == 0
        wait_for(lambda: stored() == [], 30, what="the backup's keys removed from S3")
    finally:
        own.stop()
