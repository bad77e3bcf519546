"""Attack item 5: the data dir and its files open to other local users. The daemon keeps its
data dir 0700 and every file in it 0600, tightens one left open, and its MLflow workers write
private files too (they inherit the daemon's umask)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support.daemon import Daemon

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def open_to_others(top: Path) -> list[str]:
    """Files and folders under `top` (itself included) that group or others may use."""
    found = []
    for folder, dirs, files in os.walk(top):
        for path in [Path(folder), *(Path(folder) / name for name in files)]:
            if path.is_symlink() or path.is_socket():
                continue
            if mode(path) & 0o077:
                found.append(f"{oct(mode(path))} {path}")
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    return found


def test_an_open_data_dir_is_tightened_and_stays_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "old").mkdir(parents=True)
    data_dir.chmod(0o755)
    (data_dir / "old").chmod(0o755)
    (data_dir / "notes.txt").write_text("left by an older mlfleet")
    (data_dir / "notes.txt").chmod(0o644)
    (data_dir / "old" / "tool").write_text("#!/bin/sh\n")
    (data_dir / "old" / "tool").chmod(0o755)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not mlfleet's")
    elsewhere.chmod(0o644)
    (data_dir / "link").symlink_to(elsewhere)

    daemon = Daemon(data_dir).start()
    try:
        for name in ["mlfleet.db", "mlfleet.log", "credentials", "config", "master.key"]:
            assert mode(data_dir / name) == 0o600, name
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "notes.txt") == 0o600
        assert mode(data_dir / "old") == 0o700
        assert mode(data_dir / "old" / "tool") == 0o700  # the owner keeps its execute bit
        assert mode(elsewhere) == 0o644  # a symbolic link is not followed

        sm = daemon.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="private",
            ArtifactStoreUri=f"file://{tmp_path}/artifacts/private",
            RoleArn=ROLE,
        )
        server = daemon.wait_status("private", "Created", "CreateFailed")
        assert server["TrackingServerStatus"] == "Created", server
        key, secret = daemon.credentials
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        client = MlflowClient(tracking_uri=server["TrackingServerUrl"])
        run = client.create_run(client.create_experiment("private-files"))
        client.log_text(run.info.run_id, "written by the worker", "notes/private.txt")

        (folder,) = (data_dir / "servers").iterdir()
        assert mode(folder) == 0o700
        databases = list(folder.glob("*.db"))
        assert databases and all(mode(db) == 0o600 for db in databases), databases
        (logged,) = (tmp_path / "artifacts" / "private").rglob("private.txt")
        assert logged.read_text() == "written by the worker"
        assert mode(logged) == 0o600 and mode(logged.parent) == 0o700
        assert open_to_others(data_dir) == []
        assert open_to_others(tmp_path / "artifacts") == []
    finally:
        daemon.stop()
