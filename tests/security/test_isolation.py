"""Attacks from the same machine: workers and model code cannot be reached or reach out.

Items 1 and 3 of the isolation issue: every MLflow worker answered on a loopback TCP port
with no authentication, and a deployed model read the daemon's keys and databases. Each test
tries the attack against a real daemon and asserts the refusal.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from mlfleet.runtime.egress_forwarder import DIRECT_ENV, KEY_ENV, SOCKET_ENV, USER_ENV
from support.daemon import Daemon
from support.procs import argv_of
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"
EGRESS_VARIABLES = (SOCKET_ENV, USER_ENV, KEY_ENV, DIRECT_ENV)
SANDBOX_USER_TOOL = "/usr/bin/setpriv"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's children lists."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                pending.append(child)
    return found


def python_module_of(pid: int) -> str | None:
    """``mlfleet.runtime.…`` for a process run as ``python -m mlfleet.runtime.…``."""
    argv = argv_of(pid)
    if argv[1:2] == ["-m"] and argv[2].startswith("mlfleet.runtime."):
        return argv[2]
    return None


def listening_tcp(pid: int) -> dict[str, tuple[str, int]]:
    """The TCP sockets listening in ``pid``'s network namespace: inode -> (address, port)."""
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                address, port = fields[1].split(":")
                # /proc shows the address in the kernel's byte order, 32 bits at a time.
                raw = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                )
                found[fields[9]] = (str(ipaddress.ip_address(raw)), int(port, 16))
    return found


def listeners_of(pid: int) -> list[tuple[str, int]]:
    """The TCP ports ``pid`` itself listens on."""
    listening = listening_tcp(pid)
    return [listening[inode] for inode in socket_inodes(pid) & set(listening)]


def assert_only_an_egress_forwarder(pid: int, daemon_pid: int) -> None:
    """What a worker may listen on: its egress forwarder (runtime.egress_forwarder), on
    loopback, in a network namespace of its own; or, where it shares the host's network, one
    that relays only to the egress proxy, which refuses a caller without the server's key."""
    for address, port in listeners_of(pid):
        assert ipaddress.ip_address(address).is_loopback, f"{pid} listens on {address}:{port}"
        if os.readlink(f"/proc/{pid}/ns/net") != os.readlink(f"/proc/{daemon_pid}/ns/net"):
            continue
        with socket.create_connection((address, port), timeout=10) as conn:
            conn.sendall(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 407"), f"{pid} listens on {port}"


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


@pytest.fixture(scope="module")
def two_servers(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    sm = daemon.client()
    names = [unique("tenant"), unique("tenant")]
    for name in names:
        sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri=f"file://{tmp_path_factory.mktemp(name)}",
            RoleArn=ROLE,
        )
    for name in names:
        assert daemon.wait_status(name, "Created", "CreateFailed")["TrackingServerStatus"] == (
            "Created"
        )
    yield names
    for name in names:
        sm.delete_mlflow_tracking_server(TrackingServerName=name)


def workers_of(daemon: Daemon) -> list[int]:
    assert daemon.proc is not None
    return [
        pid
        for pid in descendants(daemon.proc.pid)
        if python_module_of(pid) == "mlfleet.runtime.mlflow_worker"
    ]


def tenants_and_spares(daemon: Daemon, server_ids: list[str]) -> list[int]:
    """The workers of the given servers (other tests' servers of the shared daemon have other
    stores and releases), and the spares (runtime.warm)."""
    return [
        pid
        for pid in workers_of(daemon)
        if any(sid in " ".join(argv_of(pid)) for sid in [*server_ids, "--spare-fd"])
    ]


def test_no_worker_listens_on_tcp(daemon: Daemon, two_servers: list[str]) -> None:
    assert daemon.proc is not None
    workers = workers_of(daemon)
    assert len(workers) >= 2
    for pid in workers:
        assert_only_an_egress_forwarder(pid, daemon.proc.pid)
    # The whole tree: only the daemon itself listens (its one public port).
    for pid in descendants(daemon.proc.pid):
        if pid not in workers:
            assert not listeners_of(pid), f"{pid} listens on TCP"


def test_worker_sockets_are_in_a_folder_only_the_daemon_can_open(
    daemon: Daemon, two_servers: list[str]
) -> None:
    run_dir = daemon.data_dir / "run"
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    # The egress proxy's socket is for every sandbox (it asks each caller for its key).
    sockets = [p for p in run_dir.glob("*/*.sock") if p.parent.name != "egress"]
    assert len(sockets) >= 2
    for path in sockets:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    if os.geteuid() != 0:
        pytest.skip("needs root to try the socket as another local user")
    # Another local user (nobody) tries to connect straight to a worker.
    attempt = subprocess.run(
        [
            SANDBOX_USER_TOOL,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            str(sockets[0]),
        ],
        capture_output=True,
        text=True,
    )
    assert attempt.returncode != 0
    assert "PermissionError" in attempt.stderr


def test_a_worker_sees_only_its_own_database_and_artifacts(
    daemon: Daemon, two_servers: list[str]
) -> None:
    """What a worker's mount namespace holds, read through /proc/<pid>/root (as its owner)."""
    if os.geteuid() != 0:
        pytest.skip("reading another process's root needs root here")
    health = requests.get(f"{daemon.url}/health", timeout=5).json()
    if not health["sandbox"]["confined"]:
        pytest.skip(f"processes are not confined here: {health['sandbox']['reason']}")
    server_ids = [daemon.server_id(name) for name in two_servers]
    for pid in tenants_and_spares(daemon, server_ids):
        root = Path(f"/proc/{pid}/root")
        inside = root / str(daemon.data_dir).lstrip("/")
        for secret in ("master.key", "credentials", "mlfleet.db", "config", "mlfleet.log"):
            assert not (inside / secret).exists(), f"worker {pid} sees {secret}"
        # Every file it sees in the data dir: its own database's and sockets' (at their own
        # paths, or in its slot when it started warm: runtime.warm), the egress proxy's
        # socket; a spare, not yet a server's worker, sees only that socket.
        seen = [p for p in inside.rglob("*") if not p.is_dir()]
        own = {p.relative_to(inside).parts[0] for p in seen} - {"run"}
        assert own <= {"servers", "mlflow-versions"}, f"worker {pid} sees {sorted(own)}"
        databases = [p for p in seen if p.name.endswith(".db")]
        sockets = [p for p in seen if p.suffix == ".sock" and p.parent.name != "egress"]
        assert len(databases) <= 1 and len(sockets) <= 1, f"worker {pid} sees {seen}"
        argv = " ".join(argv_of(pid))
        if "--spare-fd" in argv:
            assert databases == sockets == [], f"spare {pid} sees {seen}"
        else:
            assert databases and sockets, f"worker {pid} sees {seen}"
            (other,) = [sid for sid in server_ids if sid not in argv]
            assert not any(other in str(p) for p in seen), f"worker {pid} sees {other}'s"
        assert not (root / "etc/shadow").exists()
        assert (root / "etc/passwd").read_text().count("\n") == 1
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid != "0", "a confined worker runs as an unprivileged user"
        # Its own network namespace (SQLite and a folder need none): not the daemon's.
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


PROBE_MODEL = textwrap.dedent(
    """
    import json, os, socket
    import mlflow.pyfunc
    from mlflow.models import set_model


    def attempt(target):
        kind, _, where = target.partition(":")
        try:
            if kind == "file":
                with open(where, "rb") as handle:
                    return "read %d bytes" % len(handle.read())
            if kind == "list":
                return "listed %s" % sorted(os.listdir(where))
            if kind == "tcp":
                host, port = where.rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=2).close()
                return "connected"
            if kind == "unix":
                unix = socket.socket(socket.AF_UNIX)
                unix.connect(where)
                return "connected"
        except Exception as exc:
            return "refused: %s" % type(exc).__name__
        return "unknown"


    class Probe(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [attempt(t) for t in model_input["target"]]


    set_model(Probe())
    """
)


def test_model_code_reaches_nothing_but_its_model(
    daemon: Daemon, two_servers: list[str], tmp_path: Path
) -> None:
    """A model whose predict tries to read the daemon's keys and databases, another tenant's
    artifacts and sockets, and to reach the network: each attempt is refused."""
    health = requests.get(f"{daemon.url}/health", timeout=5).json()
    if not health["sandbox"]["confined"]:
        pytest.skip(f"processes are not confined here: {health['sandbox']['reason']}")
    tenant, other = two_servers
    sm = daemon.client()
    other_store = sm.describe_mlflow_tracking_server(TrackingServerName=other)[
        "ArtifactStoreUri"
    ].removeprefix("file://")
    Path(other_store, "secret.txt").write_text("other tenant's data")
    other_socket = next(
        p for p in (daemon.data_dir / "run").glob("*/*.sock") if p.parent.name != "egress"
    )

    script = tmp_path / "probe.py"
    script.write_text(PROBE_MODEL)
    key, secret = daemon.credentials
    name = unique("probe")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", key)
        env.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        mlflow.set_tracking_uri(f"{daemon.url}/mlflow/{tenant}")
        try:
            # The default experiment: another test's fluent experiment is not this server's.
            with mlflow.start_run(experiment_id="0"):
                mlflow.pyfunc.log_model(
                    name="model", python_model=str(script), registered_model_name=name
                )
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]

    model, config, endpoint = unique("probe"), unique("probe"), unique("probe")
    sm.create_model(
        ModelName=model,
        PrimaryContainer={
            "ModelDataUrl": f"models:/{name}/1",
            "Environment": {"MLFLEET_TRACKING_SERVER": tenant},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[{"VariantName": "only", "ModelName": model, "InitialInstanceCount": 1}],
    )
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config)

    def settled() -> dict[str, str] | None:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        return desc if desc["EndpointStatus"] in ("InService", "Failed") else None

    desc = wait_for(settled, 240, 0.5, f"endpoint {endpoint}")
    assert desc["EndpointStatus"] == "InService", desc.get("FailureReason")

    data = daemon.data_dir
    targets = [
        f"file:{data / 'master.key'}",
        f"file:{data / 'credentials'}",
        f"file:{data / 'mlfleet.db'}",
        f"file:{Path(other_store) / 'secret.txt'}",
        "file:/etc/shadow",
        f"list:{data}",
        f"unix:{other_socket}",
        # Model code never gets the tracking servers' way out.
        f"unix:{data / 'run' / 'egress' / 'proxy.sock'}",
        f"tcp:127.0.0.1:{daemon.port}",
        "tcp:127.0.0.1:5432",
    ]
    runtime = daemon.client("sagemaker-runtime")
    answer = runtime.invoke_endpoint(
        EndpointName=endpoint,
        ContentType="application/json",
        Body=json.dumps(
            {"dataframe_split": {"columns": ["target"], "data": [[t] for t in targets]}}
        ),
    )
    outcomes = dict(zip(targets, json.loads(answer["Body"].read())["predictions"], strict=True))
    listing = outcomes.pop(f"list:{data}")
    # Only the empty folders leading to its own mounts, none of the daemon's files.
    for name in ("master.key", "credentials", "mlfleet.db", "servers", "config"):
        assert name not in listing, f"model code lists {name} in the data dir: {listing}"
    for target, outcome in outcomes.items():
        assert outcome.startswith("refused"), f"model code: {target} -> {outcome}"
    sm.delete_endpoint(EndpointName=endpoint)


def test_a_worker_does_not_inherit_the_daemons_environment(
    daemon: Daemon, two_servers: list[str]
) -> None:
    """The daemon's variables (database URLs, keys) stay with the daemon."""
    server_ids = [daemon.server_id(name) for name in two_servers]
    for pid in tenants_and_spares(daemon, server_ids):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        # What the daemon gives the worker: its store, and its way out (runtime.egress_forwarder).
        given = {"MLFLEET_BACKEND_STORE_URI", *EGRESS_VARIABLES}
        assert not {n for n in names if n.startswith("MLFLEET_") and n not in given}
        assert "AWS_SECRET_ACCESS_KEY" not in names  # a folder store needs no AWS keys


def test_health_says_whether_processes_are_confined(daemon: Daemon) -> None:
    sandbox = requests.get(f"{daemon.url}/health", timeout=5).json()["sandbox"]
    if sandbox["confined"]:
        assert sandbox["tool"] == "bubblewrap"
    else:
        assert sandbox["reason"]
        assert sandbox["modelCodeAllowed"] is False


def test_unconfined_daemon_refuses_model_code(tmp_path: Path) -> None:
    """Where bubblewrap is missing, the daemon says so and refuses to deploy model code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A PATH without bwrap: the daemon looks it up there.
    for tool in ("setpriv", "useradd"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            os.symlink(found, bin_dir / tool)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", str(bin_dir))
        daemon = Daemon(tmp_path / "data").start()
    try:
        sandbox = requests.get(f"{daemon.url}/health", timeout=5).json()["sandbox"]
        assert sandbox == {
            "confined": False,
            "reason": "bubblewrap (bwrap) is not installed: apt-get install bubblewrap",
            "modelCodeAllowed": False,
        }
        log = (daemon.data_dir / "mlfleet.log").read_text()
        assert "run UNCONFINED" in log
        sm = daemon.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="holder",
            ArtifactStoreUri=f"file://{tmp_path / 'artifacts' / 'holder'}",
            RoleArn=ROLE,
        )
        sm.create_model(
            ModelName="m",
            PrimaryContainer={
                "ModelDataUrl": "models:/anything/1",
                "Environment": {"MLFLEET_TRACKING_SERVER": "holder"},
            },
        )
        sm.create_endpoint_config(
            EndpointConfigName="c",
            ProductionVariants=[{"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1}],
        )
        sm.create_endpoint(EndpointName="e", EndpointConfigName="c")

        def settled() -> dict[str, str] | None:
            desc = sm.describe_endpoint(EndpointName="e")
            return desc if desc["EndpointStatus"] in ("InService", "Failed") else None

        desc = wait_for(settled, 60, 0.2, "endpoint e")
        assert desc["EndpointStatus"] == "Failed"
        assert "--allow-unconfined-model-code" in desc["FailureReason"]
    finally:
        daemon.stop()


def test_the_ui_gateway_proxy_calls_nothing_on_the_machine(
    daemon: Daemon, two_servers: list[str]
) -> None:
    """MLflow's gateway-proxy (served for the UI) sends a request to its deployments target
    with the tenant's ``gateway_path`` appended. The target comes only from the worker's
    environment, which the sandbox builds from an allowlist without it: whatever path a tenant
    sends, MLflow answers that there are no endpoints and nothing listening is called."""
    url = daemon.client().describe_mlflow_tracking_server(TrackingServerName=two_servers[0])[
        "TrackingServerUrl"
    ]
    proxy = f"{url}/ajax-api/2.0/mlflow/gateway-proxy"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        aims = [
            f"http://127.0.0.1:{port}/api/2.0/endpoints/",
            f"@127.0.0.1:{port}/api/2.0/endpoints/",
            f"/../../127.0.0.1:{port}/",
            "api/2.0/endpoints/",
        ]
        for aim in aims:
            answers = [
                requests.get(
                    proxy, params={"gateway_path": aim}, auth=daemon.credentials, timeout=30
                ),
                requests.post(
                    proxy,
                    json={"gateway_path": aim, "json_data": {}},
                    auth=daemon.credentials,
                    timeout=30,
                ),
            ]
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"endpoints": []}, answer.text
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    for pid in workers_of(daemon):
        assert b"MLFLOW_DEPLOYMENTS_TARGET" not in Path(f"/proc/{pid}/environ").read_bytes()


def test_warm_start_mounts_stay_in_the_daemons_own_namespace(
    daemon: Daemon, two_servers: list[str]
) -> None:
    """A warm-started worker's folders are mounted into its slot (runtime.warm) in the
    daemon's own mount namespace: none of it shows on the machine, and a slot holds one
    server's folders only."""
    starts = requests.get(f"{daemon.url}/health", timeout=5).json()["workerStarts"]
    if not starts["warm"]:
        pytest.skip(f"workers start cold here: {starts['reason']}")
    assert daemon.proc is not None
    slots = daemon.data_dir / "run" / "slots"
    assert str(slots) not in Path("/proc/self/mountinfo").read_text()
    assert os.readlink(f"/proc/{daemon.proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    server_ids = {daemon.server_id(name): name for name in two_servers}
    warm = [
        p
        for p in tenants_and_spares(daemon, list(server_ids))
        if "slots/" in (Path(f"/proc/{p}/mountinfo").read_text())
    ]
    assert warm, "a warm worker or a spare among the tenants' workers"
    for pid in warm:
        mounts = [
            line.split()[3:5]  # the mounted folder's root, and where it is mounted
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if f"{slots}/" in line.split()[4]
        ]
        slot_roots = {where.split("/slots/", 1)[1].split("/", 1)[0] for _, where in mounts}
        assert len(slot_roots) == 1, f"{pid} sees two slots: {mounts}"
        mounted = {root for root, where in mounts if where.count("/") > str(slots).count("/") + 1}
        owners = {sid for sid in server_ids for root in mounted if sid in root}
        assert len(owners) <= 1, f"{pid} sees the folders of {owners}"
