"""The AWS CLI and the mlfleet CLI, run as a person would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.aws import aws
from support.daemon import Daemon


def test_aws_cli_every_operation(daemon: Daemon, tmp_path: Path) -> None:
    created = json.loads(
        aws(
            daemon,
            "create-mlflow-tracking-server",
            "--tracking-server-name",
            "via-cli",
            "--artifact-store-uri",
            f"file:{tmp_path}/art",  # the AWS CLI would read file://... as a file
            "--role-arn",
            "arn:aws:iam::123456789012:role/x",
        ).stdout
    )
    assert created["TrackingServerArn"].endswith("mlflow-tracking-server/via-cli")
    daemon.wait_status("via-cli", "Created")

    desc = json.loads(
        aws(daemon, "describe-mlflow-tracking-server", "--tracking-server-name", "via-cli").stdout
    )
    assert desc["TrackingServerStatus"] == "Created"
    listed = json.loads(aws(daemon, "list-mlflow-tracking-servers").stdout)
    assert "via-cli" in [s["TrackingServerName"] for s in listed["TrackingServerSummaries"]]
    url = json.loads(
        aws(
            daemon,
            "create-presigned-mlflow-tracking-server-url",
            "--tracking-server-name",
            "via-cli",
        ).stdout
    )["AuthorizedUrl"]
    assert "/mlflow/via-cli/auth?authToken=" in url

    aws(daemon, "stop-mlflow-tracking-server", "--tracking-server-name", "via-cli")
    daemon.wait_status("via-cli", "Stopped")
    aws(daemon, "start-mlflow-tracking-server", "--tracking-server-name", "via-cli")
    daemon.wait_status("via-cli", "Started")
    aws(
        daemon,
        "update-mlflow-tracking-server",
        "--tracking-server-name",
        "via-cli",
        "--weekly-maintenance-window-start",
        "Sun:01:00",
    )
    desc = daemon.wait_status("via-cli", "Updated")
    assert desc["WeeklyMaintenanceWindowStart"] == "Sun:01:00"
    aws(daemon, "delete-mlflow-tracking-server", "--tracking-server-name", "via-cli")


def test_aws_cli_errors(daemon: Daemon) -> None:
    bad = aws(
        daemon,
        "create-mlflow-tracking-server",
        "--tracking-server-name",
        "bad_name!",
        "--artifact-store-uri",
        "s3://b/p",
        "--role-arn",
        "arn:aws:iam::123456789012:role/x",
        check=False,
    )
    assert bad.returncode != 0
    assert "ValidationException" in bad.stderr and "trackingServerName" in bad.stderr
    missing = aws(
        daemon, "describe-mlflow-tracking-server", "--tracking-server-name", "ghost", check=False
    )
    assert missing.returncode != 0 and "ResourceNotFound" in missing.stderr


def test_mlfleet_cli(daemon: Daemon, tmp_path: Path) -> None:
    made = daemon.mlfleet("create", "by-hand", "--artifact-store-uri", f"file://{tmp_path}/a")
    assert made.returncode == 0, made.stderr
    assert "Created" in made.stdout and "/mlflow/by-hand" in made.stdout

    listed = daemon.mlfleet("list")
    assert listed.returncode == 0 and "by-hand" in listed.stdout
    described = daemon.mlfleet("describe", "by-hand")
    assert "TrackingServerStatus" in described.stdout and "Created" in described.stdout
    link = daemon.mlfleet("ui", "by-hand")
    assert "/mlflow/by-hand/auth?authToken=" in link.stdout

    stopped = daemon.mlfleet("stop", "by-hand")
    assert stopped.returncode == 0 and "Stopped" in stopped.stdout
    again = daemon.mlfleet("stop", "by-hand")
    assert again.returncode == 1
    assert "ValidationException" in again.stderr and "STOPPED" in again.stderr
    started = daemon.mlfleet("start", "by-hand")
    assert started.returncode == 0 and "Started" in started.stdout
    deleted = daemon.mlfleet("delete", "by-hand", "--yes")
    assert deleted.returncode == 0 and "deleted" in deleted.stdout

    ghost = daemon.mlfleet("describe", "ghost")
    assert ghost.returncode == 1 and "ResourceNotFound" in ghost.stderr
    assert "Traceback" not in ghost.stderr


def test_mlfleet_cli_shows_failure_reason(daemon: Daemon) -> None:
    failed = daemon.mlfleet("create", "no-bucket", "--artifact-store-uri", "s3://missing-bucket/x")
    assert failed.returncode == 1
    assert "CreateFailed" in failed.stderr
    assert "missing-bucket" in failed.stderr
    daemon.mlfleet("delete", "no-bucket", "--yes")


def test_unreachable_daemon_is_explained(tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlfleet",
            "list",
            "--data-dir",
            str(tmp_path),
            "--endpoint-url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert out.returncode == 1
    assert "is `mlfleet up` running?" in out.stderr
