"""Keep-alive connections handed from the gateway to the MLflow worker, and back.

A connection whose call the gateway answered with HTTP Basic moves to the server's worker
(gateway.handover, runtime.fast_lane). These tests watch which process holds the server side of
one client connection (from /proc) while driving it with http.client, and check that what the
gateway guarantees still holds there: IAM changes apply to the next call, other callers and
other requests are served as the gateway serves them, writes are audited.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from support.audit import logged_metric
from support.aws import unique
from support.console import ConsoleBrowser, charted
from support.daemon import Daemon
from support.iam import DATA_SCIENTIST, READ_ONLY, new_user, policy
from support.waiting import wait_for


def socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket local_port -> remote_port, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == local_port and int(remote[1], 16) == remote_port:
            return fields[9]
    return None


def holders(inode: str) -> set[int]:
    """The processes with a descriptor of that socket."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in fds):
                found.add(int(pid))
        except OSError:
            continue
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class Connection:
    """One keep-alive client connection to the daemon, with HTTP Basic credentials."""

    def __init__(self, daemon: Daemon, key: str, secret: str) -> None:
        self.daemon = daemon
        self.http = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        self.auth = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | bytes | None = None,
        auth: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"User-Agent": "handover-test/1.0"}
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        if isinstance(body, dict):
            headers["Content-Type"] = "application/json"
        headers["Authorization"] = auth or self.authorization(method, path, data, headers)
        self.http.request(method, path, body=data, headers=headers)
        response = self.http.getresponse()
        raw = response.read()
        assert response.getheader("Connection", "").lower() != "close", raw
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, {"raw": raw.decode(errors="replace")}

    def authorization(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> str:
        return self.auth

    def _server_side(self) -> set[int]:
        """The processes holding the server side of this connection."""
        assert self.http.sock is not None
        inode = socket_inode(self.daemon.port, self.http.sock.getsockname()[1])
        assert inode is not None
        return holders(inode)

    def holder(self) -> str:
        """Who holds the server side of this connection now: "worker", "daemon", or both
        ("daemon+worker") for the moment of the handover."""
        assert self.daemon.proc is not None
        names = set()
        for pid in self._server_side():
            if "mlflow_worker" in cmdline(pid):
                names.add("worker")
            else:
                assert pid == self.daemon.proc.pid, cmdline(pid)
                names.add("daemon")
        return "+".join(sorted(names))

    def worker_pid(self) -> int:
        (pid,) = [p for p in self._server_side() if "mlflow_worker" in cmdline(p)]
        return pid

    def hand_to_worker(self, api: str) -> None:
        """A first call, which the gateway answers before handing the connection over."""
        status, _ = self.call("GET", f"{api}/experiments/search?max_results=1")
        assert status == 200
        wait_for(lambda: self.holder() == "worker", 10, what="the worker to hold the connection")

    def run_on_worker(self, api: str) -> str:
        """A run created on a connection the worker holds at the end; its id."""
        self.hand_to_worker(api)
        status, run = self.call("POST", f"{api}/runs/create", {"experiment_id": "0"})
        assert status == 200, run
        # CreateRun is followed up by the daemon (an MLflow event), so it went back there,
        # and comes to the worker again once the daemon has answered.
        wait_for(lambda: self.holder() == "worker", 10, what="the worker to hold it again")
        return str(run["run"]["info"]["run_id"])

    def log_metric(self, api: str, run_id: str, key: str, step: int) -> None:
        status, answer = self.call(
            "POST",
            f"{api}/runs/log-metric",
            {"run_id": run_id, "key": key, "value": 1.0, "timestamp": 1, "step": step},
        )
        assert status == 200, answer

    def close(self) -> None:
        self.http.close()


class SignedConnection(Connection):
    """A keep-alive connection whose requests are signed with SigV4 for sagemaker-mlflow, as
    the sagemaker-mlflow plugin signs them (botocore's signer)."""

    def __init__(self, daemon: Daemon, key: str, secret: str) -> None:
        super().__init__(daemon, key, secret)
        self.credentials = BotoCredentials(key, secret)

    def authorization(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> str:
        request = AWSRequest(
            method, f"http://127.0.0.1:{self.daemon.port}{path}", data=data, headers=headers
        )
        SigV4Auth(self.credentials, "sagemaker-mlflow", "us-east-1").add_auth(request)
        headers["X-Amz-Date"] = request.headers["X-Amz-Date"]
        return str(request.headers["Authorization"])


def create_server(daemon: Daemon, name: str, tmp_path: Path) -> dict[str, Any]:
    """A Small server of the test's own daemon, once Created."""
    daemon.client().create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
        RoleArn="arn:aws:iam::123456789012:role/mlfleet",
    )
    server = daemon.wait_status(name, "Created", "CreateFailed")
    assert server["TrackingServerStatus"] == "Created"
    return server


def api_path(shared_server: dict[str, Any]) -> str:
    return "/mlflow/" + shared_server["TrackingServerName"] + "/api/2.0/mlflow"


def test_a_basic_auth_connection_moves_to_the_worker_and_keeps_working(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    api = api_path(shared_server)
    conn = Connection(daemon, *daemon.credentials)
    try:
        conn.hand_to_worker(api)
        status, created = conn.call("POST", f"{api}/experiments/create", {"name": unique("lane")})
        assert status == 200, created
        status, run = conn.call(
            "POST", f"{api}/runs/create", {"experiment_id": created["experiment_id"]}
        )
        assert status == 200, run
        run_id = run["run"]["info"]["run_id"]
        metric = unique("metric")
        for step in range(5):
            status, answer = conn.call(
                "POST",
                f"{api}/runs/log-metric",
                {"run_id": run_id, "key": metric, "value": step, "timestamp": 1, "step": step},
            )
            assert status == 200, answer
        status, history = conn.call(
            "GET", f"{api}/metrics/get-history?run_id={run_id}&metric_key={metric}"
        )
        assert status == 200
        assert [m["step"] for m in history["metrics"]] == [0, 1, 2, 3, 4]
        assert conn.holder() == "worker"
        # MLflow's own error answers come through unchanged.
        status, missing = conn.call("GET", f"{api}/runs/get?run_id={uuid.uuid4().hex}")
        assert status == 404 and missing["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert conn.holder() == "worker"
    finally:
        conn.close()

    # Each write served by the worker is a data event in the daemon's trail (appended once
    # the answer has left: the record was durable before, in MLflow's database).
    arn = shared_server["TrackingServerArn"]
    wait_for(lambda: len(logged_metric(daemon, arn, metric)) == 5, 10, what="five data events")
    logged = logged_metric(daemon, arn, metric)
    assert sorted(r["requestParameters"]["body"]["step"] for r in logged) == [0, 1, 2, 3, 4]
    record = logged[0]
    assert record["userIdentity"]["userName"] == "admin"
    assert record["userAgent"] == "handover-test/1.0"
    assert record["sourceIPAddress"] == "127.0.0.1"
    assert record["requestParameters"]["path"] == "/api/2.0/mlflow/runs/log-metric"


def test_handed_over_connections_used_at_once_are_all_served_and_audited(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    """One connection on its own has MLflow called on the worker's event loop; several at
    once go to its threads. Both ways every write is answered and is a data event."""
    api = api_path(shared_server)
    metric = unique("together")
    connections = [Connection(daemon, *daemon.credentials) for _ in range(4)]
    try:
        run_id = connections[0].run_on_worker(api)
        for conn in connections[1:]:
            conn.hand_to_worker(api)

        def log_steps(index: int) -> None:
            for step in range(index * 10, index * 10 + 10):
                connections[index].log_metric(api, run_id, metric, step)

        with ThreadPoolExecutor(len(connections)) as pool:
            list(pool.map(log_steps, range(len(connections))))
        assert {conn.holder() for conn in connections} == {"worker"}
        status, history = connections[0].call(
            "GET", f"{api}/metrics/get-history?run_id={run_id}&metric_key={metric}"
        )
        assert status == 200
        assert sorted(m["step"] for m in history["metrics"]) == list(range(40))
    finally:
        for conn in connections:
            conn.close()
    arn = shared_server["TrackingServerArn"]
    wait_for(lambda: len(logged_metric(daemon, arn, metric)) == 40, 10, what="40 data events")
    logged = logged_metric(daemon, arn, metric)
    assert sorted(r["requestParameters"]["body"]["step"] for r in logged) == list(range(40))


def test_a_sigv4_signed_connection_moves_to_the_worker_which_checks_every_signature(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    """What the sagemaker-mlflow plugin sends: a new signature on every request. The worker
    verifies each with the signing key of the first one's scope; anything it cannot verify
    goes back to the gateway, which answers with AWS's reason."""
    api = api_path(shared_server)
    key, secret = daemon.credentials
    conn = SignedConnection(daemon, key, secret)
    try:
        run_id = conn.run_on_worker(api)
        metric = unique("signed")
        for step in range(3):
            conn.log_metric(api, run_id, metric, step)
        assert conn.holder() == "worker"

        conn.credentials = BotoCredentials(key, "not-the-secret-" + "x" * 25)
        status, answer = conn.call("GET", f"{api}/runs/get?run_id={run_id}")
        assert status == 403 and "InvalidSignatureException" in answer["message"], answer
        assert conn.holder() == "daemon"
        # A valid signature again: served, and the connection goes back to the worker.
        conn.credentials = BotoCredentials(key, secret)
        status, _ = conn.call("GET", f"{api}/runs/get?run_id={run_id}")
        assert status == 200
        wait_for(lambda: conn.holder() == "worker", 10, what="the worker to hold it again")
        conn.log_metric(api, run_id, metric, 3)
    finally:
        conn.close()
    arn = shared_server["TrackingServerArn"]
    wait_for(lambda: len(logged_metric(daemon, arn, metric)) == 4, 10, what="4 data events")
    logged = logged_metric(daemon, arn, metric)
    assert {r["userIdentity"]["userName"] for r in logged} == {"admin"}
    assert sorted(r["requestParameters"]["body"]["step"] for r in logged) == [0, 1, 2, 3]


def test_calls_served_by_the_worker_count_in_the_servers_request_figures(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    browser = ConsoleBrowser(daemon)
    before = charted(browser, "Requests")
    api = api_path(shared_server)
    conn = Connection(daemon, *daemon.credentials)
    try:
        conn.hand_to_worker(api)
        for _ in range(20):
            status, _ = conn.call("GET", f"{api}/experiments/search?max_results=1")
            assert status == 200
        assert conn.holder() == "worker"
        # The worker sends its figures a batch at a time, so they may take a moment.
        wait_for(
            lambda: charted(browser, "Requests") - before >= 21,
            10,
            what="the worker's calls in the request chart",
        )
    finally:
        conn.close()


def test_an_iam_change_applies_to_the_next_call_on_a_handed_over_connection(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    api = api_path(shared_server)
    user = new_user(daemon, DATA_SCIENTIST)
    conn = Connection(daemon, user["AccessKeyId"], user["SecretAccessKey"])
    try:
        status, created = conn.call("POST", f"{api}/experiments/create", {"name": unique("iam")})
        assert status == 200, created
        wait_for(lambda: conn.holder() == "worker", 10, what="the worker to hold the connection")
        daemon.client("iam").put_user_policy(
            UserName=user["Arn"].rsplit("/", 1)[1],
            PolicyName="no-experiments",
            PolicyDocument=policy(
                {
                    "Effect": "Deny",
                    "Action": "sagemaker-mlflow:CreateExperiment",
                    "Resource": "*",
                }
            ),
        )
        status, refused = conn.call("POST", f"{api}/experiments/create", {"name": unique("iam")})
        assert status == 403, refused
        assert "sagemaker-mlflow:CreateExperiment" in refused["message"]
        assert "explicit deny" in refused["message"]
        # Still allowed reads go on working on the same connection.
        status, _ = conn.call("GET", f"{api}/experiments/search?max_results=1")
        assert status == 200
    finally:
        conn.close()


def test_what_the_ticket_does_not_settle_goes_back_to_the_gateway(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    api = api_path(shared_server)
    conn = Connection(daemon, *daemon.credentials)
    reader = new_user(daemon, READ_ONLY)
    reader_auth = (
        "Basic "
        + base64.b64encode(f"{reader['AccessKeyId']}:{reader['SecretAccessKey']}".encode()).decode()
    )
    try:
        status, created = conn.call("POST", f"{api}/experiments/create", {"name": unique("back")})
        assert status == 200, created
        wait_for(lambda: conn.holder() == "worker", 10, what="the worker to hold the connection")

        # Another caller on the same connection is authorized as themselves.
        status, refused = conn.call(
            "POST", f"{api}/experiments/create", {"name": unique("x")}, auth=reader_auth
        )
        assert status == 403 and "sagemaker-mlflow:CreateExperiment" in refused["message"]
        status, _ = conn.call("GET", f"{api}/experiments/search?max_results=1", auth=reader_auth)
        assert status == 200

        # Wrong credentials are refused, not served.
        status, _ = conn.call("GET", f"{api}/experiments/search", auth="Basic bm9ib2R5Om5vcGU=")
        assert status == 401

        # The gateway's input checks hold: no experiment's artifacts outside the server's store.
        status, refused = conn.call(
            "POST",
            f"{api}/experiments/create",
            {"name": unique("x"), "artifact_location": "file:///etc"},
        )
        assert status == 400 and refused["error_code"] == "INVALID_PARAMETER_VALUE"

        # A route the gateway refuses stays refused.
        status, refused = conn.call("GET", f"{api}/runs/../experiments/search")
        assert status == 403, refused

        # An artifact upload and download through MLflow's artifact proxy.
        prefix = "/mlflow/" + shared_server["TrackingServerName"]
        artifact = f"{prefix}/api/2.0/mlflow-artifacts/artifacts/handover/{unique('a')}.txt"
        status, _ = conn.call("PUT", artifact, b"moved and back")
        assert status == 200
        conn.http.request("GET", artifact, headers={"Authorization": conn.auth})
        response = conn.http.getresponse()
        assert response.status == 200 and response.read() == b"moved and back"

        # And the connection still serves, wherever it is now.
        status, _ = conn.call(
            "GET", f"{api}/experiments/get?experiment_id={created['experiment_id']}"
        )
        assert status == 200
    finally:
        conn.close()


def test_with_handoff_off_every_call_stays_on_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLEET_CONNECTION_HANDOFF", "false")
    own = Daemon(tmp_path / "data").start()
    try:
        create_server(own, "kept", tmp_path)
        conn = Connection(own, *own.credentials)
        try:
            for _ in range(3):
                status, _answer = conn.call(
                    "GET", "/mlflow/kept/api/2.0/mlflow/experiments/search?max_results=1"
                )
                assert status == 200
                assert conn.holder() == "daemon"
        finally:
            conn.close()
    finally:
        own.stop()


def test_a_write_answered_while_the_daemon_froze_is_audited_after_it_was_killed(
    tmp_path: Path,
) -> None:
    """The worker stores a write's data event with MLflow's own commit and answers without
    waiting for the daemon; a daemon killed before appending it finds it after its restart."""
    own = Daemon(tmp_path / "data").start()
    try:
        server = create_server(own, "frozen", tmp_path)
        api = "/mlflow/frozen/api/2.0/mlflow"
        conn = Connection(own, *own.credentials)
        try:
            run_id = conn.run_on_worker(api)
            assert own.proc is not None
            own.proc.send_signal(signal.SIGSTOP)
            try:
                conn.log_metric(api, run_id, "while-frozen", 0)
            finally:
                own.kill()  # SIGKILL works on a stopped process
        finally:
            conn.close()
        own.start()
        own.wait_status("frozen", "Created")
        logged = wait_for(
            lambda: logged_metric(own, server["TrackingServerArn"], "while-frozen"),
            30,
            what="the data event of the write answered while the daemon was frozen",
        )
        assert len(logged) == 1
        assert logged[0]["userIdentity"]["userName"] == "admin"
        assert logged[0]["userAgent"] == "handover-test/1.0"
        verified = subprocess.run(
            [sys.executable, "-m", "mlfleet", "audit", "verify", "--data-dir", str(own.data_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        own.stop()


@pytest.mark.parametrize("then", ["stop", "delete"])
def test_records_a_killed_worker_never_sent_reach_the_trail_when_its_server_stops(
    tmp_path: Path, then: str
) -> None:
    """The worker sends the records it stored with MLflow's writes in batches; killed before
    a batch went out, it leaves them in the server's database, which the daemon reads once
    the server's workers stopped: before a delete drops that database."""
    own = Daemon(tmp_path / "data").start()
    try:
        server = create_server(own, "killed", tmp_path)
        api = "/mlflow/killed/api/2.0/mlflow"
        conn = Connection(own, *own.credentials)
        try:
            run_id = conn.run_on_worker(api)
            for step in range(3):
                conn.log_metric(api, run_id, "before-the-kill", step)
            os.kill(conn.worker_pid(), signal.SIGKILL)
        finally:
            conn.close()
        sagemaker = own.client()
        if then == "stop":
            sagemaker.stop_mlflow_tracking_server(TrackingServerName="killed")
            own.wait_status("killed", "Stopped")
        else:
            sagemaker.delete_mlflow_tracking_server(TrackingServerName="killed")
            wait_for(
                lambda: not sagemaker.list_mlflow_tracking_servers()["TrackingServerSummaries"],
                60,
                what="the server to be deleted",
            )
        arn = server["TrackingServerArn"]
        wait_for(
            lambda: len(logged_metric(own, arn, "before-the-kill")) == 3,
            10,
            what="the three data events",
        )
        logged = logged_metric(own, arn, "before-the-kill")
        assert sorted(r["requestParameters"]["body"]["step"] for r in logged) == [0, 1, 2]
    finally:
        own.stop()
