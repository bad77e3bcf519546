"""Crashes lose nothing: kill -9 of an MLflow worker and of the daemon itself."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support.daemon import Daemon
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


def _worker_pids(data_dir: Path) -> list[int]:
    """PIDs of MLflow workers started by the daemon owning ``data_dir`` (the Python processes,
    not the sandboxes that started them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[1:3] == [b"-m", b"mlfleet.runtime.mlflow_worker"] and any(
            str(data_dir).encode() in part for part in cmdline
        ):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_kill_worker_then_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = Daemon(tmp_path / "data").start()
    try:
        sm = daemon.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="sturdy",
            ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
            RoleArn=ROLE,
        )
        url = daemon.wait_status("sturdy", "Created")["TrackingServerUrl"]
        key, secret = daemon.credentials
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        client = MlflowClient(tracking_uri=url)
        run_id = client.create_run("0").info.run_id
        acknowledged = []
        for step in range(20):
            client.log_metric(run_id, "x", float(step), step=step)
            acknowledged.append(step)

        # kill -9 the MLflow worker: it comes back on its own, with every acknowledged write.
        (victim,) = _worker_pids(daemon.data_dir)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not _alive(victim), 10, what="the worker to die")
        fresh = wait_for(
            lambda: [p for p in _worker_pids(daemon.data_dir) if p != victim and _alive(p)],
            60,
            what="a replacement worker",
        )
        assert fresh
        wait_for(
            lambda: (
                sm.describe_mlflow_tracking_server(TrackingServerName="sturdy")["IsActive"]
                == "Active"
            ),
            60,
            what="the server to serve again",
        )
        steps = [m.step for m in client.get_metric_history(run_id, "x")]
        assert sorted(steps) == acknowledged
        client.log_metric(run_id, "x", 20.0, step=20)
        acknowledged.append(20)

        # kill -9 the daemon: its workers go with it, and a new daemon brings the server back.
        workers = _worker_pids(daemon.data_dir)
        daemon.kill()
        wait_for(lambda: not any(_alive(p) for p in workers), 20, what="workers to exit")
        daemon.start()
        desc = daemon.wait_status("sturdy", "Created")
        wait_for(
            lambda: (
                daemon.client().describe_mlflow_tracking_server(TrackingServerName="sturdy")[
                    "IsActive"
                ]
                == "Active"
            ),
            90,
            what="the server to run again after the daemon restart",
        )
        assert desc["TrackingServerUrl"] == url
        steps = [m.step for m in client.get_metric_history(run_id, "x")]
        assert sorted(steps) == acknowledged
    finally:
        daemon.stop()


def test_stop_interrupted_by_daemon_crash_is_finished(tmp_path: Path) -> None:
    """An operation cut short by a crash is completed by the next daemon: desired state is kept."""
    daemon = Daemon(tmp_path / "data").start()
    try:
        sm = daemon.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="halfway",
            ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
            RoleArn=ROLE,
        )
        daemon.wait_status("halfway", "Created")
        sm.stop_mlflow_tracking_server(TrackingServerName="halfway")
        daemon.kill()  # right after the API acknowledged the stop
        daemon.start()
        desc = daemon.wait_status("halfway", "Stopped")
        assert desc["IsActive"] == "Inactive"
        assert not [p for p in _worker_pids(daemon.data_dir) if _alive(p)]
    finally:
        daemon.stop()


def test_large_servers_on_sqlite_start_without_racing_their_workers(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Four workers of one server once raced to create the table of stored data events
    (CreateFailed: "table … already exists"); the daemon now creates it before they start."""
    sm = daemon.client()
    names = [f"large-{i}-{os.getpid()}" for i in range(3)]
    for name in names:
        sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri=f"file://{tmp_path / name}",
            RoleArn=ROLE,
            TrackingServerSize="Large",
        )
    for name in names:
        desc = daemon.wait_status(name, "Created", "CreateFailed")
        assert desc["TrackingServerStatus"] == "Created", desc.get("FailureReason")
        sm.delete_mlflow_tracking_server(TrackingServerName=name)
