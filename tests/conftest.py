"""Fixtures that run the real system: an ``mlfleet`` daemon, moto's S3 server, PostgreSQL.

Only fixtures and hooks live here; the helpers they are built from, and that tests import,
are in ``support/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support.aws import ACCOUNT, unique
from support.daemon import PG_URL, Daemon, free_port, postgres_reachable
from support.events import Receiver
from support.fake_llm import FakeLlm
from support.slices import slices_of
from support.waiting import wait_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the slices it belongs to (unit, daemon, browser, postgres, chaos,
    conformance), so ``-m`` can select them; support/slices.py says how each is found."""
    for item in items:
        for name in sorted(slices_of(item)):
            item.add_marker(name)


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
def fake_llm() -> Iterator[FakeLlm]:
    """A fake OpenAI-compatible provider on loopback, which the shared daemon may reach."""
    provider = FakeLlm()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
    s3_env: dict[str, str],
    shared_data_dirs: Path,
    fake_llm: FakeLlm,
) -> Iterator[Daemon]:
    """One SQLite-backed daemon shared by the tests that need no daemon of their own."""
    d = Daemon(shared_data_dirs / "sqlite", artifact_root=tmp_path_factory.getbasetemp())
    # Temporary credentials that expire within a test (AWS's floor is 900 s).
    env = {
        **s3_env,
        "MLFLEET_STS_MIN_DURATION_SECONDS": "1",
        "MLFLEET_EGRESS_ALLOW": f"127.0.0.1:{fake_llm.port}",
    }
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


@pytest.fixture(scope="module")
def serving_server(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Created tracking server that registers logged models as model packages: its name.
    One per module, deleted after it."""
    name = unique("serving")
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp('serving')}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
        AutomaticModelRegistration=True,
    )
    assert daemon.wait_status(name, "Created", "CreateFailed")["TrackingServerStatus"] == "Created"
    yield name
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP receiver of events on loopback, stopped after the test."""
    started = Receiver().start()
    yield started
    started.stop()
