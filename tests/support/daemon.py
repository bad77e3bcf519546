"""An ``mlfleet up`` process for a test, and what starting one needs: a free port and, for the
PostgreSQL variant, a reachable PostgreSQL."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import requests

from mlfleet.protocol.awsjson import with_mlfleet_models
from support.waiting import wait_for

# One session for every client, as in a user's program: botocore builds a client's exception
# classes per session, so `pytest.raises(sm.exceptions.X)` only catches what a client of the
# same session raised. Sessions are not thread-safe, hence the lock around client creation.
_SESSION_LOCK = threading.Lock()
_SESSION: boto3.Session | None = None


def _session() -> boto3.Session:
    global _SESSION
    if _SESSION is None:
        # mlfleet's own service model, as a user's boto3 finds it through AWS_DATA_PATH.
        _SESSION = boto3.Session(botocore_session=with_mlfleet_models(botocore.session.Session()))
    return _SESSION


PG_URL = os.environ.get("MLFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


class Daemon:
    """An ``mlfleet up`` process with its own data dir.

    Its artifact stores may live under `artifact_root`, by default the folder ``artifacts``
    beside the data dir (the test's ``tmp_path / "artifacts"`` for ``Daemon(tmp_path / …)``).
    A daemon that serves HTTPS is given `ca`, the CA file its certificate is checked with.
    """

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        artifact_root: Path | None = None,
        ca: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.ca = ca
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        root = artifact_root or data_dir.parent / "artifacts"
        self.extra = ("--artifact-root", str(root), *extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "daemon.out").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlfleet",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._healthy, 90, what=f"mlfleet /health on {self.url}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            out = (self.data_dir / "daemon.out").read_text()[-3000:]
            raise AssertionError(f"mlfleet exited with {self.proc.returncode}:\n{out}")
        try:
            answer = requests.get(f"{self.url}/health", timeout=1, verify=self.verify)
            return answer.status_code == 200
        except (requests.RequestException, OSError):  # OSError: a CA file not written yet
            return False

    @property
    def verify(self) -> str | bool:
        return str(self.ca) if self.ca else True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    @property
    def credentials(self) -> tuple[str, str]:
        parser = configparser.ConfigParser()
        parser.read(self.data_dir / "credentials")
        return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"]

    def client(self, service: str = "sagemaker", **kwargs: Any):  # type: ignore[no-untyped-def]
        key, secret = self.credentials
        with _SESSION_LOCK:
            return _session().client(
                service,
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id=kwargs.pop("key", key),
                aws_secret_access_key=kwargs.pop("secret", secret),
                verify=kwargs.pop("verify", self.verify),
                **kwargs,
            )

    def server_id(self, name: str) -> str:
        """A tracking server's id (its folder under ``servers``), from the control plane's
        database."""
        with closing(sqlite3.connect(self.data_dir / "mlfleet.db")) as db:
            row = db.execute("SELECT id FROM tracking_servers WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def mlfleet(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The mlfleet CLI, run against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "mlfleet", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_CONFIG_FILE"] = str(self.data_dir / "config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.data_dir / "credentials")
        return env

    def wait_status(self, name: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        sm = self.client()

        def settled() -> dict[str, Any] | None:
            desc = sm.describe_mlflow_tracking_server(TrackingServerName=name)
            return desc if desc["TrackingServerStatus"] in statuses else None

        return wait_for(settled, timeout, 0.2, f"{name} to reach {statuses}")

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        """Wait until the server called ``name`` is deleted (Describe: ResourceNotFound)."""
        sm = self.client()

        def gone() -> bool:
            try:
                sm.describe_mlflow_tracking_server(TrackingServerName=name)
            except sm.exceptions.ResourceNotFound:
                return True
            return False

        wait_for(gone, timeout, what=f"{name} to be deleted")
