"""Fixtures that run the real system: an ``mlfleet`` daemon, moto's S3 server, PostgreSQL."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

PG_URL = os.environ.get("MLFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=kwargs.pop("key", key),
            aws_secret_access_key=kwargs.pop("secret", secret),
            verify=kwargs.pop("verify", self.verify),
            **kwargs,
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


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    wait_for(up, 60, what="moto server")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def s3_env(moto_s3: str) -> Iterator[dict[str, str]]:
    """What a daemon and a test need to talk to moto's S3 (any credentials work there)."""
    yield {
        "AWS_ACCESS_KEY_ID": "moto",
        "AWS_SECRET_ACCESS_KEY": "moto",
        "MLFLEET_S3_ENDPOINT_URL": moto_s3,
    }


@pytest.fixture(scope="session")
def shared_data_dirs(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where the shared daemons keep their data: outside pytest's base temp, which is their
    artifact root (tests keep stores in their own tmp_path) and so must not hold a data dir.
    Kept after a failed run, for the daemons' logs."""
    folder = Path(tempfile.mkdtemp(prefix="mlfleet-tests-"))
    yield folder
    if not request.session.testsfailed:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, s3_env: dict[str, str], shared_data_dirs: Path
) -> Iterator[Daemon]:
    """One SQLite-backed daemon shared by the tests that need no daemon of their own."""
    d = Daemon(shared_data_dirs / "sqlite", artifact_root=tmp_path_factory.getbasetemp())
    # Temporary credentials that expire within a test (AWS's floor is 900 s).
    env = {**s3_env, "MLFLEET_STS_MIN_DURATION_SECONDS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        d.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield d
    d.stop()


@pytest.fixture(scope="session")
def pg_daemon(tmp_path_factory: pytest.TempPathFactory, shared_data_dirs: Path) -> Iterator[Daemon]:
    if not postgres_reachable():
        pytest.skip(
            "PostgreSQL is not reachable on 127.0.0.1:5432 (needed for the PostgreSQL variant)"
        )
    db = f"mlfleet_test_{uuid.uuid4().hex[:8]}"
    url = PG_URL.rsplit("/", 1)[0] + f"/{db}"
    d = Daemon(
        shared_data_dirs / "pg",
        "--database-url",
        url,
        artifact_root=tmp_path_factory.getbasetemp(),
    )
    d.start()
    yield d
    d.stop()
    subprocess.run(
        ["psql", PG_URL, "-qc", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'],
        check=False,
        capture_output=True,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def any_daemon(request: pytest.FixtureRequest) -> Daemon:
    return request.getfixturevalue("daemon" if request.param == "sqlite" else "pg_daemon")


@pytest.fixture(scope="session")
def shared_server(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Created tracking server with a local artifact folder, shared by client-level tests."""
    artifacts = tmp_path_factory.mktemp("shared-artifacts")
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName="shared",
        ArtifactStoreUri=f"file://{artifacts}",
        RoleArn="arn:aws:iam::123456789012:role/mlfleet",
    )
    desc = daemon.wait_status("shared", "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    return {**desc, "artifacts": artifacts}
