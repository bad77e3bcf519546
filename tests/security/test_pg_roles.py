"""On PostgreSQL, each tracking server's workers log in as a role of their own that reaches only
that server's database: not another tenant's, not the control plane's, not the templates.

The role and its password are read where the workers get them: a worker's environment. The test
server trusts local connections, so what these connections prove is the CONNECT privilege; that
the password is the role's is checked against the SCRAM verifier PostgreSQL stores for it.
``postgres`` and ``template1`` are left as the cluster's operator set them (runtime.metadata_db).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mlflow import MlflowClient
from sqlalchemy import make_url

from mlfleet.runtime.mlflow_worker import BACKEND_STORE_ENV
from support.daemon import PG_URL, Daemon
from support.waiting import wait_for

ROLE_ARN = "arn:aws:iam::123456789012:role/mlfleet"
WORKER_MODULE = ["-m", "mlfleet.runtime.mlflow_worker"]
REFUSED = "permission denied for database"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def as_admin(database: str) -> psycopg.Connection[Any]:
    """A connection as the daemon's own role (the test server's superuser)."""
    return psycopg.connect(PG_URL.rsplit("/", 1)[0] + f"/{database}", autocommit=True)


def control_database(daemon: Daemon) -> str:
    return daemon.extra[daemon.extra.index("--database-url") + 1].rsplit("/", 1)[1]


def create_server(daemon: Daemon, artifacts: Path) -> dict[str, Any]:
    name = unique("pgrole")
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{artifacts / name}",
        RoleArn=ROLE_ARN,
        TrackingServerSize="Small",
    )
    desc = daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    with as_admin(control_database(daemon)) as conn:
        found = conn.execute(
            "SELECT id, metadata_db_uri FROM tracking_servers WHERE name = %s", (name,)
        ).fetchone()
    assert found is not None
    return {**desc, "id": found[0], "stored_uri": found[1]}


def worker_uri(server_id: str) -> str:
    """The database URI handed to a worker of the server, from its environment."""

    def find() -> str | None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode().split("\0")
                if argv[1:3] != WORKER_MODULE:
                    continue
                if Path(argv[argv.index("--server-dir") + 1]).name != server_id:
                    continue
                environ = (proc / "environ").read_bytes().decode().split("\0")
            except PermissionError:
                pytest.skip("reading a worker's environment needs root or the daemon's user")
            except (OSError, ValueError):
                continue  # gone meanwhile
            for item in environ:
                key, _, value = item.partition("=")
                if key == BACKEND_STORE_ENV:
                    return value
        return None

    uri: str = wait_for(find, 30, what=f"a worker of {server_id}")
    return uri


def connect_as_worker(uri: str, database: str | None = None) -> psycopg.Connection[Any]:
    url = make_url(uri)
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=database or url.database,
        connect_timeout=5,
    )


def refused(uri: str, database: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        connect_as_worker(uri, database).close()
    return str(info.value)


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's stored SCRAM-SHA-256 verifier is that of ``password``."""
    method, _, rest = verifier.partition("$")
    assert method == "SCRAM-SHA-256", verifier
    head, _, keys = rest.partition("$")
    iterations, salt = head.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key and (
        base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()
        == server_key
    )


def log_a_metric(daemon: Daemon, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(tracking_uri=server["TrackingServerUrl"])
    experiment = client.create_experiment(unique("exp"))
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "loss", 0.25, step=1)
    assert client.get_run(run_id).data.metrics == {"loss": 0.25}


def role_exists(role: str) -> bool:
    with as_admin("postgres") as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            is not None
        )


def delete(daemon: Daemon, server: dict[str, Any]) -> None:
    """Delete the server and wait until its role is gone (dropped after its database): the
    tests leave nothing behind on a PostgreSQL server others share."""
    daemon.client().delete_mlflow_tracking_server(TrackingServerName=server["TrackingServerName"])
    role = f"mlfleet_ts_{server['id']}"
    wait_for(lambda: not role_exists(role), 60, what=f"role {role} to be dropped")


@pytest.fixture(scope="module")
def two_servers(
    pg_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    artifacts = tmp_path_factory.mktemp("pg-roles")
    servers = [create_server(pg_daemon, artifacts) for _ in range(2)]
    yield servers
    for server in servers:
        delete(pg_daemon, server)


def test_a_worker_reaches_its_own_database_only(
    pg_daemon: Daemon, two_servers: list[dict[str, Any]]
) -> None:
    mine, theirs = two_servers
    uri, their_uri = worker_uri(mine["id"]), worker_uri(theirs["id"])
    url = make_url(uri)
    own_database = f"mlfleet_ts_{mine['id']}"
    assert url.username == url.database == own_database
    assert url.password and url.password != make_url(their_uri).password

    # The password is the role's, and is kept nowhere in clear: not in the control plane.
    with as_admin("postgres") as conn:
        row = conn.execute(
            "SELECT rolpassword, rolsuper, rolcreatedb, rolcreaterole FROM pg_authid"
            " WHERE rolname = %s",
            (own_database,),
        ).fetchone()
    assert row is not None
    assert scram_matches(row[0], url.password)
    assert row[1:] == (False, False, False)
    assert make_url(mine["stored_uri"]).password is None

    with connect_as_worker(uri) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (own_database,)
        # Rows of MLflow's tables and of the data events stored with them: read and written.
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] >= 1  # type: ignore[index]
        conn.execute("UPDATE experiments SET last_update_time = last_update_time")
        conn.execute(
            "INSERT INTO mlfleet_pending_data_events (event_id, record) VALUES ('e', '{}')"
        )
        conn.execute("DELETE FROM mlfleet_pending_data_events WHERE event_id = 'e'")
        conn.rollback()
        # The schema is the daemon's, and the role cannot become the daemon's role.
        for statement in (
            "CREATE TABLE planted (x int)",
            "DROP TABLE experiments",
            "SET ROLE postgres",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()

    assert REFUSED in refused(uri, f"mlfleet_ts_{theirs['id']}")
    assert REFUSED in refused(their_uri, own_database)
    assert REFUSED in refused(uri, control_database(pg_daemon))
    with as_admin("postgres") as conn:
        templates = [
            name
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'mlfleet\\_tpl\\_%'"
            )
        ]
    assert templates
    for template in templates:
        assert REFUSED in refused(uri, template)


def test_mlflow_works_through_the_gateway(
    pg_daemon: Daemon, two_servers: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in two_servers:
        log_a_metric(pg_daemon, server, monkeypatch)


def test_a_deleted_servers_role_is_gone(pg_daemon: Daemon, tmp_path: Path) -> None:
    server = create_server(pg_daemon, tmp_path)
    role = f"mlfleet_ts_{server['id']}"
    assert role_exists(role)
    delete(pg_daemon, server)
    with as_admin("postgres") as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (role,)).fetchone()
    assert left is None


def test_a_server_made_before_roles_gets_one_at_its_next_start(
    pg_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = create_server(pg_daemon, tmp_path)
    name, database = server["TrackingServerName"], f"mlfleet_ts_{server['id']}"
    sm = pg_daemon.client()
    sm.stop_mlflow_tracking_server(TrackingServerName=name)
    pg_daemon.wait_status(name, "Stopped")
    # As an older mlfleet left it: no role, and the database open to every role.
    with as_admin(database) as conn:
        conn.execute(f'DROP OWNED BY "{database}"')
        conn.execute(f'DROP ROLE "{database}"')
        conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO PUBLIC')

    sm.start_mlflow_tracking_server(TrackingServerName=name)
    assert pg_daemon.wait_status(name, "Started", "StartFailed")["TrackingServerStatus"] == (
        "Started"
    )
    assert role_exists(database)
    with as_admin("postgres") as conn:
        public = conn.execute(
            "SELECT has_database_privilege('public', %s, 'CONNECT')", (database,)
        ).fetchone()
    assert public == (False,)
    with connect_as_worker(worker_uri(server["id"])) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (database,)
    log_a_metric(pg_daemon, server, monkeypatch)
    delete(pg_daemon, server)
