"""Benchmark mlfleet end to end on this machine and write bench/results/latest.{json,md}.

Run: ``.venv/bin/python bench/run.py [--quick] [--out bench/results] [--keep]``

It starts its own daemon (SQLite, temporary data dir, loopback only) and measures:

1. lifecycle: CreateMlflowTrackingServer -> Created, Stop -> Stopped, Start -> Started,
   Delete -> gone, for Small servers (the first, right after the daemon started, may wait for the
   MLflow schema template the daemon builds at start);
2. memory: RSS/PSS of a warmed, idle Small server's MLflow worker(s) and of the daemon;
3. throughput and latency of log-metric and get-run at several concurrencies, direct to the
   MLflow worker (on its Unix socket) and through the gateway, alternating, with CPU per request
   of each party;
4. the real MLflow client logging one metric per call, direct and through the gateway taking
   turns call by call in one training-loop process (it speaks only http://, so "direct" goes
   through a TCP-to-Unix-socket forwarder in that process: see ``Forwarder``);
5. a stock ``mlflow server`` (defaults: 4 uvicorn workers, job execution) started as a user would:
   its idle footprint, log-metric c=1/c=8 and the MLflow client loop, the baseline the issue's
   targets were written against ("direct" above is mlfleet's own lean worker, not this);
6. log-metric at c=8 on a Medium server (2 workers) through the gateway.

Every wait and loop is bounded in count and time; the daemon and its workers are stopped and the
data dir removed on any exit (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import configparser
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from mlfleet.runtime.sockets import WORKER_HOST

REPO = Path(__file__).resolve().parent.parent
WORKER_MODULE = "mlfleet.runtime.mlflow_worker"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.05
TRANSITION_TIMEOUT = 180.0
# MLflow's client and server send usage telemetry to the internet by default; this benchmark
# stays on loopback.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Hard caps so that no load loop can run away even if the clock misbehaves.
MAX_REQUESTS_PER_CASE = 300_000
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run vs ``--quick`` (a smoke test of the whole script)."""

    cycles: int
    warmup: float
    duration: float
    concurrencies: tuple[int, ...]
    client_calls: int
    # The targets are judged on a margin (90 %, 100 %) no wider than run-to-run noise on a
    # shared 2-core box, so their cases run several times and the median pair decides.
    target_repeats: int

    @staticmethod
    def make(quick: bool) -> Plan:
        if quick:
            return Plan(
                cycles=1,
                warmup=1.0,
                duration=3.0,
                concurrencies=(1, 8, 32),
                client_calls=100,
                target_repeats=1,
            )
        return Plan(
            cycles=3,
            warmup=1.0,
            duration=10.0,
            concurrencies=(1, 8, 32),
            client_calls=500,
            target_repeats=5,
        )


# ---------------------------------------------------------------------------------------------
# /proc helpers: processes, memory, CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def worker_sockets(data_dir: Path) -> dict[int, Path]:
    """pid -> Unix socket of the MLflow workers of *this* daemon (other daemons may run on the
    box). Only the Python process itself: bubblewrap's processes, which confine it, carry the
    same words further along their command lines."""
    found: dict[int, Path] = {}
    for pid in all_pids():
        args = cmdline(pid)
        if (
            args[1:3] == ["-m", WORKER_MODULE]
            and any(str(data_dir) in a for a in args)
            and "--socket" in args
        ):
            found[pid] = Path(args[args.index("--socket") + 1])
    return found


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(root: int) -> list[int]:
    """All living processes below ``root`` (workers and anything they spawned)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _kib_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB. PSS splits shared pages between sharers: the fair per-process cost."""
    rss = _kib_field(f"/proc/{pid}/status", "VmRSS")
    pss = _kib_field(f"/proc/{pid}/smaps_rollup", "Pss")
    return rss / 1024, pss / 1024


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuProbe:
    """CPU used by the worker(s), the daemon (gateway) and this process during one case.

    ``foreign`` is what everything else on the machine used: a noise gauge for a shared box.
    ``daemon`` is None for a stock ``mlflow server``, which has no gateway in front.
    """

    workers: list[int]
    daemon: int | None
    start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {
            "worker": sum(cpu_seconds(p) for p in self.workers),
            "gateway": cpu_seconds(self.daemon) if self.daemon is not None else 0.0,
            "client": time.process_time(),
            "machine": machine_busy_seconds(),
            "wall": time.monotonic(),
        }

    def begin(self) -> None:
        self.start = self._read()

    def end(self) -> dict[str, float]:
        now = self._read()
        delta = {k: now[k] - self.start[k] for k in now}
        ours = delta["worker"] + delta["gateway"] + delta["client"]
        delta["foreign_cores"] = max(0.0, delta["machine"] - ours) / max(delta["wall"], 1e-9)
        return delta


# ---------------------------------------------------------------------------------------------
# the daemon under test


class BenchDaemon:
    """``python -m mlfleet up`` in a throw-away data dir; ``close()`` stops it whatever happened."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})  # extra environment, e.g. MLFLEET_* settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **NO_TELEMETRY, **self.env}
        started = time.perf_counter()
        with (self.data_dir / "daemon.out").open("ab") as log:
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
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlfleet exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.startup_seconds = time.perf_counter() - started
                    return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"mlfleet not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def artifacts(self) -> Path:
        """The daemon's default artifact root: file: stores must lie inside it."""
        return self.data_dir / "artifacts"

    def log_tail(self, limit: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "daemon.out").read_text(errors="replace")[-limit:]
        return ""

    def credentials(self) -> tuple[str, str]:
        parser = configparser.ConfigParser()
        parser.read(self.data_dir / "credentials")
        section = parser["default"]
        return section["aws_access_key_id"], section["aws_secret_access_key"]

    def sagemaker(self) -> Any:
        return self.client("sagemaker")

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` (sagemaker, iam, sts) signed with the admin's key."""
        key, secret = self.credentials()
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(retries={"max_attempts": 1}, read_timeout=30),
        )

    def close(self) -> None:
        """SIGTERM (the daemon stops its workers), then make sure none of ours is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Workers die with the daemon (PR_SET_PDEATHSIG); this catches any that did not.
        for pid in worker_sockets(self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# 1. lifecycle


def status_of(sm: Any, name: str) -> str | None:
    """The server's status, or None once it no longer exists."""
    try:
        return str(
            sm.describe_mlflow_tracking_server(TrackingServerName=name)["TrackingServerStatus"]
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFound":
            return None
        raise


def timed_transition(sm: Any, name: str, call: Callable[[], object], target: str | None) -> float:
    """Seconds from the API call until Describe first shows ``target`` (None: deleted)."""
    started = time.perf_counter()
    call()
    deadline = started + TRANSITION_TIMEOUT
    while time.perf_counter() < deadline:
        status = status_of(sm, name)
        if status == target:
            return time.perf_counter() - started
        if status is not None and status.endswith("Failed"):
            desc = sm.describe_mlflow_tracking_server(TrackingServerName=name)
            raise RuntimeError(f"{name}: {status}: {desc.get('FailureReason')}")
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{name} did not reach {target} within {TRANSITION_TIMEOUT:.0f} s")


def create_server(
    sm: Any,
    name: str,
    artifacts: Path,
    size: str = "Small",
    tags: list[dict[str, str]] | None = None,
) -> float:
    return timed_transition(
        sm,
        name,
        lambda: sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri=f"file://{artifacts / name}",
            RoleArn="arn:aws:iam::123456789012:role/mlfleet-bench",
            TrackingServerSize=size,
            **({"Tags": tags} if tags else {}),
        ),
        "Created",
    )


def delete_server(sm: Any, name: str) -> float:
    return timed_transition(
        sm, name, lambda: sm.delete_mlflow_tracking_server(TrackingServerName=name), None
    )


def lifecycle_cycles(sm: Any, artifacts: Path, cycles: int) -> list[dict[str, float]]:
    """create/stop/start/delete, ``cycles`` times; the first create may wait for the template."""
    out: list[dict[str, float]] = []
    for i in range(cycles):
        name = f"bench-cycle-{i}"
        row = {"create": create_server(sm, name, artifacts)}
        row["stop"] = timed_transition(
            sm, name, lambda n=name: sm.stop_mlflow_tracking_server(TrackingServerName=n), "Stopped"
        )
        row["start"] = timed_transition(
            sm,
            name,
            lambda n=name: sm.start_mlflow_tracking_server(TrackingServerName=n),
            "Started",
        )
        row["delete"] = delete_server(sm, name)
        print(
            f"  cycle {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True
        )
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# talking to a tracking server


@dataclass(frozen=True)
class Target:
    """One way to reach a tracking server's REST API: its base URL and headers, and the Unix
    socket to connect to when it is a worker reached directly."""

    mode: str  # "direct" or "gateway"
    base: str
    headers: dict[str, str]
    socket: Path | None = None


def direct_target(mode: str, socket_path: Path) -> Target:
    """A worker's own Unix socket; ``localhost`` is a host MLflow's host check accepts."""
    return Target(mode, f"http://{WORKER_HOST}", {}, socket_path)


def basic_header(key: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def tracking_url(sm: Any, name: str) -> str:
    return str(sm.describe_mlflow_tracking_server(TrackingServerName=name)["TrackingServerUrl"])


def wait_workers(data_dir: Path, count: int, timeout: float = 30.0) -> dict[int, Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = worker_sockets(data_dir)
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"expected {count} MLflow worker(s), found {worker_sockets(data_dir)}")


def run_body(name: str = "bench") -> dict[str, Any]:
    """A CreateRun request in the default experiment, started now."""
    return {"experiment_id": "0", "start_time": int(time.time() * 1000), "run_name": name}


def create_run(target: Target, name: str = "bench") -> str:
    resp = requests.post(
        f"{target.base}/api/2.0/mlflow/runs/create",
        json=run_body(name),
        headers=target.headers,
        timeout=REQUEST_TIMEOUT,
    )
    resp.raise_for_status()
    return str(resp.json()["run"]["info"]["run_id"])


def warm(targets: list[Target], run_id: str, rounds: int = 10) -> None:
    """A few writes and reads each way, so that lazy imports and caches are paid for."""
    run_async(_warm(targets, run_id, rounds))


async def _warm(targets: list[Target], run_id: str, rounds: int) -> None:
    for target in targets:
        async with http_session(target, 1) as http:
            for i in range(rounds):
                body = {"run_id": run_id, "key": "warm", "value": i, "timestamp": 0, "step": i}
                async with http.post(
                    f"{target.base}/api/2.0/mlflow/runs/log-metric",
                    json=body,
                    headers=target.headers,
                ) as resp:
                    resp.raise_for_status()
                async with http.get(
                    f"{target.base}/api/2.0/mlflow/runs/get",
                    params={"run_id": run_id},
                    headers=target.headers,
                ) as resp:
                    resp.raise_for_status()


def http_session(target: Target, concurrency: int) -> aiohttp.ClientSession:
    """Keep-alive connections to ``target``: over TCP, or to a worker's Unix socket (the
    benchmark runs as the daemon's user, so it may open the 0700 run dir)."""
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=str(target.socket), limit=concurrency)
        if target.socket is not None
        else aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    )
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# 2. memory


def memory_report(daemon: BenchDaemon, workers: dict[int, int]) -> dict[str, Any]:
    worker_mem = [memory_mib(pid) for pid in workers]
    daemon_rss, daemon_pss = memory_mib(daemon.pid)
    below = descendants(daemon.pid)
    return {
        "workers": len(workers),
        "worker_rss_mib": sum(m[0] for m in worker_mem),
        "worker_pss_mib": sum(m[1] for m in worker_mem),
        "daemon_rss_mib": daemon_rss,
        "daemon_pss_mib": daemon_pss,
        # daemon + everything below it (workers and whatever they spawned)
        "processes": 1 + len(below),
        "process_commands": [" ".join(cmdline(p))[:120] for p in [daemon.pid, *below]],
    }


# ---------------------------------------------------------------------------------------------
# 3. closed-loop load


@dataclass
class Case:
    endpoint: str
    mode: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    error_sample: str | None
    cpu_ms_per_request: dict[str, float]
    foreign_cores: float
    server: str = "Small"
    repeat: int = 1


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Endpoint:
    """Builds one request of a kind (log-metric, get-run, create-run); log-metric bodies carry
    an increasing step."""

    def __init__(self, kind: str, run_id: str) -> None:
        self.kind = kind
        self.run_id = run_id
        self.step = 0

    def request(self, target: Target) -> tuple[str, str, bytes | None]:
        if self.kind == "log-metric":
            self.step += 1
            body = {
                "run_id": self.run_id,
                "key": "m",
                "value": float(self.step),
                "timestamp": int(time.time() * 1000),
                "step": self.step,
            }
            url = f"{target.base}/api/2.0/mlflow/runs/log-metric"
            return "POST", url, json.dumps(body).encode()
        if self.kind == "create-run":
            url = f"{target.base}/api/2.0/mlflow/runs/create"
            return "POST", url, json.dumps(run_body()).encode()
        return "GET", f"{target.base}/api/2.0/mlflow/runs/get?run_id={self.run_id}", None


async def _client_task(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    target: Target,
    stop_at: float,
    samples: list[tuple[float, float, int, str]],
    budget: list[int],
) -> None:
    """One closed-loop client: send, wait for the whole answer, repeat until ``stop_at``."""
    headers = {**target.headers, "Content-Type": "application/json"}
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        method, url, body = endpoint.request(target)
        sent = time.perf_counter()
        try:
            async with http.request(method, url, data=body, headers=headers) as resp:
                payload = await resp.read()
                status, detail = resp.status, payload[:200].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, detail = -1, repr(exc)
        done = time.perf_counter()
        samples.append((done, done - sent, status, detail))


async def closed_loop(
    endpoint: Endpoint, target: Target, concurrency: int, warmup: float, duration: float
) -> tuple[list[tuple[float, float, int, str]], float, float]:
    """Run ``concurrency`` keep-alive clients; return samples and the measured window."""
    samples: list[tuple[float, float, int, str]] = []
    budget = [MAX_REQUESTS_PER_CASE]
    async with http_session(target, concurrency) as http:
        start = time.perf_counter()
        window = (start + warmup, start + warmup + duration)
        tasks = [
            _client_task(http, endpoint, target, window[1], samples, budget)
            for _ in range(concurrency)
        ]
        # In-flight requests finish after stop_at; each is capped by REQUEST_TIMEOUT.
        await asyncio.wait_for(asyncio.gather(*tasks), warmup + duration + REQUEST_TIMEOUT + 10)
    return samples, window[0], window[1]


def summarise(
    kind: str,
    target: Target,
    concurrency: int,
    measured: tuple[list[tuple[float, float, int, str]], float, float],
    cpu: dict[str, float],
    server: str,
) -> Case:
    """Completions inside the window count; the warm-up (new connections, caches) does not."""
    samples, begin, end = measured
    inside = [s for s in samples if begin <= s[0] <= end]
    good = sorted(s[1] for s in inside if s[2] == 200)
    bad = [s for s in inside if s[2] != 200]
    # The CPU probe spans the whole case, warm-up included, so divide by every request.
    all_sent = max(len(samples), 1)
    return Case(
        endpoint=kind,
        mode=target.mode,
        concurrency=concurrency,
        seconds=end - begin,
        requests=len(inside),
        errors=len(bad),
        rps=len(good) / (end - begin),
        p50_ms=percentile(good, 0.50) * 1000,
        p99_ms=percentile(good, 0.99) * 1000,
        error_sample=f"{bad[0][2]}: {bad[0][3]}" if bad else None,
        cpu_ms_per_request={
            who: cpu[who] * 1000 / all_sent for who in ("worker", "gateway", "client")
        },
        foreign_cores=cpu["foreign_cores"],
        server=server,
    )


def run_case(
    kind: str,
    run_id: str,
    target: Target,
    concurrency: int,
    plan: Plan,
    probe: CpuProbe,
    server: str = "Small",
) -> Case:
    endpoint = Endpoint(kind, run_id)
    probe.begin()
    measured = run_async(closed_loop(endpoint, target, concurrency, plan.warmup, plan.duration))
    case = summarise(kind, target, concurrency, measured, probe.end(), server)
    print(
        f"  {server:6} {kind:10} c={concurrency:<2} {target.mode:7} {case.rps:7.1f} req/s  "
        f"p50 {case.p50_ms:6.1f} ms  p99 {case.p99_ms:7.1f} ms  errors {case.errors}  "
        f"cpu/req w {case.cpu_ms_per_request['worker']:.1f} "
        f"gw {case.cpu_ms_per_request['gateway']:.1f} ms  other load {case.foreign_cores:.2f}",
        flush=True,
    )
    return case


def run_async(coro: Any) -> Any:
    """Run the load generator on uvloop when available: the client should cost as little CPU
    as possible on a 2-core box where it competes with the server under test."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def throughput_matrix(
    run_id: str, direct: Target, gateway: Target, plan: Plan, probe: CpuProbe
) -> list[Case]:
    """Every (endpoint, concurrency) both ways, swapping which goes first each time so that
    drift on a shared machine (other load, a growing metrics table) hits both sides alike."""
    cases: list[Case] = []
    index = 0
    for kind in ("log-metric", "get-run"):
        for concurrency in plan.concurrencies:
            repeats = plan.target_repeats if (kind, concurrency) == ("log-metric", 8) else 1
            for repeat in range(1, repeats + 1):
                order = (direct, gateway) if index % 2 == 0 else (gateway, direct)
                for target in order:
                    case = run_case(kind, run_id, target, concurrency, plan, probe)
                    case.repeat = repeat
                    cases.append(case)
                index += 1
    return cases


# ---------------------------------------------------------------------------------------------
# 4. the real MLflow client, one call at a time

# A tracking URI of the client loop that names a worker's Unix socket: ``unix:<path>``.
UNIX_URI = "unix:"


class Forwarder:
    """127.0.0.1 TCP to a worker's Unix socket, inside the client-loop process: the MLflow
    client speaks only http://. Each connection is pumped by two threads (one per direction),
    so a direct call pays one more copy each way and two thread wake-ups that the gateway
    path, whose connection the worker itself serves after the first call, does not.
    ``cpu_seconds`` is what the pumps used, about the size of that handicap."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.pumps: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            worker = socket.socket(socket.AF_UNIX)
            worker.connect(self.path)
            for source, sink in ((client, worker), (worker, client)):
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                pump.start()
                self.pumps.append(pump)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def cpu_seconds(self) -> float:
        """CPU time of the pumps still running (each connection's, until it closes)."""
        total = 0.0
        for pump in self.pumps:
            if pump.ident is not None and pump.is_alive():
                with contextlib.suppress(OSError):
                    total += time.clock_gettime(time.pthread_getcpuclockid(pump.ident))
        return total


def client_loop_child(uris: list[str], run_ids: list[str], calls: int) -> None:
    """Runs in a subprocess: log ``calls`` metrics like a training loop to each tracking URI
    (to its run: ``run_ids`` in the same order), taking turns call by call, and print each
    URI's call latencies as JSON.

    Taking turns puts every mode under the same machine at the same moment: on a shared 2-core
    box, throughput drifts by a third between minutes, far more than the margins judged here.
    """
    from mlflow import MlflowClient

    forwarders = {u: Forwarder(u.removeprefix(UNIX_URI)) for u in uris if u.startswith(UNIX_URI)}
    clients = [
        MlflowClient(tracking_uri=forwarders[uri].url if uri in forwarders else uri) for uri in uris
    ]
    # connection set-up and lazy imports are not what a loop pays per step
    for client, run_id in zip(clients, run_ids, strict=True):
        for i in range(5):
            client.log_metric(run_id, "client_warm", float(i), step=i)
    forwarded_from = {uri: forwarder.cpu_seconds() for uri, forwarder in forwarders.items()}
    latencies: list[list[float]] = [[] for _ in clients]
    deadline = time.perf_counter() + 120
    for i in range(calls):
        turn = range(len(clients)) if i % 2 == 0 else reversed(range(len(clients)))
        for index in turn:
            sent = time.perf_counter()
            clients[index].log_metric(run_ids[index], f"client_{index}", float(i), step=i)
            latencies[index].append(time.perf_counter() - sent)
        if time.perf_counter() > deadline:
            break
    forwarder_cpu = [
        forwarders[uri].cpu_seconds() - forwarded_from[uri] if uri in forwarders else None
        for uri in uris
    ]
    print(json.dumps({"latencies": latencies, "forwarder_cpu_s": forwarder_cpu}))


def mlflow_client_run(
    modes: Mapping[str, str],
    run_id: str | list[str],
    calls: int,
    auth: tuple[str, str] | None,
    plugin_endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """One run of the client loop over ``modes`` (name -> tracking URI, or ``unix:<socket>``
    for a worker reached through a ``Forwarder``) in its own interpreter, so env vars and
    MLflow's cached sessions don't leak; its figures per mode. ``run_id``: the run every mode
    logs to, or one per mode in the order of ``modes``.

    With ``auth`` the client sends HTTP Basic to every URI: a worker reached directly ignores
    the header, so only the gateway checks it. With ``plugin_endpoint`` the URIs are ARNs and
    the sagemaker-mlflow plugin signs each call with SigV4 (``auth`` as AWS keys).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_", "AWS_")) and k != "MLFLOW_TRACKING_URI"
    }
    env.update(NO_TELEMETRY)
    if plugin_endpoint is not None and auth is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = auth
        env["AWS_DEFAULT_REGION"] = "us-east-1"
        env["SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT"] = plugin_endpoint
        # The plugin's request-header provider reads the tracking URI from the environment.
        env["MLFLOW_TRACKING_URI"] = next(iter(modes.values()))
    elif auth is not None:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = auth
    run_ids = [run_id] * len(modes) if isinstance(run_id, str) else run_id
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client-loop",
            ",".join(modes.values()),
            ",".join(run_ids),
            str(calls),
        ],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"MLflow client ({', '.join(modes)}) failed: {done.stderr[-2000:]!r}")
    raw = json.loads(done.stdout.decode().strip().splitlines()[-1])
    results = []
    for mode, spent, forwarded in zip(modes, raw["latencies"], raw["forwarder_cpu_s"], strict=True):
        latencies = sorted(spent)
        result = {
            "mode": mode,
            "calls": len(latencies),
            # Calls per second of time spent waiting for this mode's answers.
            "calls_per_s": len(latencies) / sum(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
        }
        if forwarded is not None:
            result["forwarder_cpu_ms_per_call"] = forwarded * 1000 / len(latencies)
        print(
            f"  MLflow client {mode:7} {result['calls_per_s']:6.1f} calls/s  "
            f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms",
            flush=True,
        )
        results.append(result)
    return results


def mlflow_client_rounds(
    direct: Path, gateway: str, run_id: str, plan: Plan, auth: tuple[str, str]
) -> list[dict[str, Any]]:
    """``target_repeats`` runs taking turns between gateway and direct (the worker's socket
    ``direct``, through a ``Forwarder``); medians per mode."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    for _ in range(plan.target_repeats):
        for result in mlflow_client_run(
            {"gateway": gateway, "direct": f"{UNIX_URI}{direct}"}, run_id, plan.client_calls, auth
        ):
            runs[result["mode"]].append(result)
    return [client_summary(mode, rounds) for mode, rounds in runs.items()]


def client_summary(mode: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of one mode, with the runs kept for the report."""
    return {
        "mode": mode,
        "calls_per_s": median([r["calls_per_s"] for r in rounds]),
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        "rounds": rounds,
    }


# ---------------------------------------------------------------------------------------------
# 5. stock `mlflow server`: the baseline the targets were written against

# Cold start to /health is 12 s on a quiet 2-core box and up to 40 s on a busy one, more with a
# fresh database (shared/spec/baseline-perf.md); a timeout near that would fail on a noisy day.
STOCK_STARTUP_TIMEOUT = 120.0
STOCK_STOP_TIMEOUT = 30.0
# `mlflow server` puts its job queue in a fresh /dev/shm temp dir and never removes it.
HUEY_STORAGE_VAR = "_MLFLOW_HUEY_STORAGE_PATH"


class StockMlflow:
    """Vanilla ``mlflow server`` started as a user would: SQLite, default workers (4 uvicorn)
    and default job execution (a job runner and huey consumers).

    It runs in its own session so that ``close()`` can signal the whole tree at once, like a
    terminal's Ctrl-C does; every process ever seen in the tree is remembered so that none can
    outlive the benchmark even if it left the group.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self.stop_seconds: float | None = None  # None: it had to be SIGKILLed
        self.seen: dict[int, list[str]] = {}

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'stock.db'}",
            "--artifacts-destination",
            str(self.data_dir / "stock-art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        started = time.perf_counter()
        with (self.data_dir / "server.out").open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **NO_TELEMETRY},
                cwd=self.data_dir,
                start_new_session=True,
            )
        deadline = started + STOCK_STARTUP_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            self.tree()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.startup_seconds = time.perf_counter() - started
                    return
            time.sleep(0.25)  # its start is 12-40 s of CPU-bound imports; don't add to it
        raise RuntimeError(
            f"mlflow server not healthy after {STOCK_STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}"
        )

    def tree(self) -> list[int]:
        """The CLI process and everything below it, now; remembered for ``close()``."""
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            self.seen.setdefault(pid, cmdline(pid))
        return pids

    def settle(self, quiet: float = 5.0, timeout: float = 60.0) -> list[int]:
        """Wait until the tree stops growing: the job runner and its huey consumers are
        launched after uvicorn, so /health can answer before the idle tree is complete."""
        deadline = time.monotonic() + timeout
        pids = self.tree()
        stable_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - stable_since < quiet:
            time.sleep(0.5)
            now = self.tree()
            if set(now) != set(pids):
                pids, stable_since = now, time.monotonic()
        return pids

    def _alive(self) -> list[int]:
        # Same pid and same command line: not a recycled pid that now belongs to someone else.
        return [pid for pid, args in self.seen.items() if args and cmdline(pid) == args]

    def _huey_dir(self) -> Path | None:
        for pid in self._alive():
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                for entry in environ:
                    if entry.startswith(HUEY_STORAGE_VAR.encode() + b"="):
                        return Path(entry.split(b"=", 1)[1].decode())
        return None

    def log_tail(self, limit: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "server.out").read_text(errors="replace")[-limit:]
        return ""

    def close(self) -> None:
        """SIGTERM to the process group, SIGKILL to whatever is left after 30 s."""
        if self.proc is None:
            return
        self.tree()
        huey_dir = self._huey_dir()
        started = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = started + STOCK_STOP_TIMEOUT
        while time.perf_counter() < deadline and (self.proc.poll() is None or self._alive()):
            time.sleep(POLL_SECONDS)
        if self.proc.poll() is None or self._alive():
            print(f"  mlflow server still up after {STOCK_STOP_TIMEOUT:.0f} s: SIGKILL", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in self._alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        else:
            self.stop_seconds = time.perf_counter() - started
        # Only a temp dir where MLflow makes it: the variable could name anything.
        temp_roots = (Path("/dev/shm"), Path(tempfile.gettempdir()))
        if huey_dir is not None and huey_dir.parent in temp_roots:
            shutil.rmtree(huey_dir, ignore_errors=True)


def tree_footprint(pids: list[int]) -> dict[str, Any]:
    """Summed RSS counts pages shared between the processes once per process; summed PSS is
    the fair total. Both are given because baseline-perf.md quotes both."""
    mem = [memory_mib(pid) for pid in pids]
    return {
        "processes": len(pids),
        "rss_mib": sum(m[0] for m in mem),
        "pss_mib": sum(m[1] for m in mem),
        "process_commands": [" ".join(cmdline(p))[:120] for p in pids],
    }


def measure_stock(stock: StockMlflow, plan: Plan) -> dict[str, Any]:
    """Footprint, log-metric c=1 and c=8, and the MLflow client loop against ``stock``."""
    stock.start()
    print(f"  /health 200 after {stock.startup_seconds:.1f} s", flush=True)
    stock.settle()
    target = Target("stock", stock.url, {})
    run_id = create_run(target)
    # Each warm() opens a new connection, which may land on another of the 4 uvicorn workers;
    # all of them pay their lazy imports before anything is measured.
    for _ in range(4):
        warm([target], run_id)
    time.sleep(2)  # let allocator and GC settle, as for mlfleet's idle figure
    footprint = tree_footprint(stock.tree())
    print(
        f"  idle: {footprint['processes']} processes, RSS {footprint['rss_mib']:.0f} MiB, "
        f"PSS {footprint['pss_mib']:.0f} MiB",
        flush=True,
    )
    probe = CpuProbe(stock.tree(), None)
    cases = [run_case("log-metric", run_id, target, 1, plan, probe, "Stock")]
    # c=8 decides a target, so it is repeated like mlfleet's c=8 (stock results swing a lot:
    # keep-alive connections pile onto one of its workers, differently each time).
    for repeat in range(1, plan.target_repeats + 1):
        case = run_case("log-metric", run_id, target, 8, plan, probe, "Stock")
        case.repeat = repeat
        cases.append(case)
    rounds = [
        mlflow_client_run({"stock": stock.url}, run_id, plan.client_calls, None)[0]
        for _ in range(plan.target_repeats)
    ]
    return {
        "command": "mlflow server --backend-store-uri sqlite:///<tmp>/stock.db "
        "--artifacts-destination <tmp>/stock-art --host 127.0.0.1 --port <free>",
        # uvicorn's default --loop auto takes uvloop when it is importable, and uvloop sets
        # TCP_NODELAY on every connection: that decides whether the stock ~40 ms keep-alive
        # stall (asyncio loop, baseline-perf.md) shows up at all.
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "startup_s": stock.startup_seconds,
        "footprint_idle": footprint,
        "cases": [asdict(c) for c in cases],
        "mlflow_client": client_summary("stock", rounds),
    }


# ---------------------------------------------------------------------------------------------
# report


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # The figures describe the working tree as it was, uncommitted edits included.
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": _kib_field("/proc/meminfo", "MemTotal") / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mlflow": importlib.metadata.version("mlflow"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "git_commit": commit or "unknown",
        "git_modified": [line[3:] for line in dirty if line.strip()],
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ratio_rows(cases: list[Case]) -> list[dict[str, Any]]:
    """Pair each direct case with its gateway twin (same endpoint, concurrency and repeat)."""
    rows = []
    small = [c for c in cases if c.server == "Small"]
    for d in (c for c in small if c.mode == "direct"):
        g = next(
            c
            for c in small
            if c.mode == "gateway"
            and (c.endpoint, c.concurrency, c.repeat) == (d.endpoint, d.concurrency, d.repeat)
        )
        rows.append(
            {
                "endpoint": d.endpoint,
                "concurrency": d.concurrency,
                "repeat": d.repeat,
                "direct": d,
                "gateway": g,
            }
        )
    return rows


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    life = results["lifecycle"]
    out.append(
        {
            "target": "Created < 10 s (first create, right after the daemon started)",
            "value": f"{life['first_create_s']:.2f} s",
            "verdict": verdict(life["first_create_s"] < 10),
        }
    )
    out.append(
        {
            "target": "Created < 10 s (template ready, slowest)",
            "value": f"{max(life['creates_template_ready_s']):.2f} s",
            "verdict": verdict(max(life["creates_template_ready_s"]) < 10),
        }
    )
    out += stock_targets(results)
    # The cost of the gateway hop: mlfleet's gateway vs the same server's own worker.
    for endpoint in ("log-metric", "get-run"):
        ratios = [
            r["ratio"]
            for r in results["ratios"]
            if r["endpoint"] == endpoint and r["concurrency"] == 8
        ]
        shown = f"{median(ratios):.0%}"
        if len(ratios) > 1:
            shown += f" (median of {', '.join(f'{r:.0%}' for r in ratios)})"
        out.append(
            {
                "target": f"{endpoint} c=8: mlfleet gateway >= 90 % of mlfleet's direct worker",
                "value": shown,
                "verdict": verdict(median(ratios) >= 0.9),
            }
        )
    client = {c["mode"]: c for c in results["mlflow_client"]}
    # Both modes took turns within each run, so each run's ratio compares like with like; the
    # machine's speed drifts between runs.
    paired = [
        gateway["calls_per_s"] / direct["calls_per_s"]
        for gateway, direct in zip(
            client["gateway"]["rounds"], client["direct"]["rounds"], strict=True
        )
    ]
    ratio = median(paired)
    out.append(
        {
            "target": "MLflow client one call at a time: mlfleet gateway >= mlfleet's direct "
            "worker",
            "value": f"{client['gateway']['calls_per_s']:.1f} vs "
            f"{client['direct']['calls_per_s']:.1f} calls/s (medians); gateway/direct "
            f"{ratio:.0%}"
            + (f" (median of {', '.join(f'{r:.0%}' for r in paired)})" if len(paired) > 1 else ""),
            "verdict": verdict(ratio >= 1.0),
        }
    )
    return out


def stock_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """mlfleet through its gateway vs stock ``mlflow server``: what the issue's targets mean."""
    stock = results.get("stock")
    if not stock:
        return []
    gateway_c8 = [
        c["rps"]
        for c in results["cases"]
        if (c["endpoint"], c["concurrency"], c["mode"]) == ("log-metric", 8, "gateway")
    ]
    stock_c8 = [c["rps"] for c in stock["cases"] if c["concurrency"] == 8]
    ratio = median(gateway_c8) / median(stock_c8)
    mlfleet_client = next(c for c in results["mlflow_client"] if c["mode"] == "gateway")
    stock_client = stock["mlflow_client"]
    client_ratio = mlfleet_client["calls_per_s"] / stock_client["calls_per_s"]
    return [
        {
            "target": "MLflow client one call at a time: mlfleet gateway >= stock mlflow server",
            "value": f"{mlfleet_client['calls_per_s']:.1f} vs {stock_client['calls_per_s']:.1f} "
            f"calls/s ({client_ratio:.0%}{_medians_of(len(stock_client['rounds']))})",
            "verdict": verdict(client_ratio >= 1.0),
        },
        {
            "target": "log-metric c=8: mlfleet gateway >= 90 % of stock mlflow server",
            "value": f"{median(gateway_c8):.1f} vs {median(stock_c8):.1f} req/s "
            f"({ratio:.0%}{_medians_of(len(stock_c8))})",
            "verdict": verdict(ratio >= 0.9),
        },
    ]


def _medians_of(runs: int) -> str:
    return f", medians of {runs} runs each" if runs > 1 else ""


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    life = results["lifecycle"]
    mem = results["memory_idle"]
    lines = [
        "# mlfleet benchmark",
        "",
        f"`{results['command']}` — {m['date']}, git {m['git_commit']}, "
        f"{'quick' if results['quick'] else 'full'} run, {results['total_seconds']:.0f} s."
        + (f" Uncommitted edits in: {', '.join(m['git_modified'])}." if m["git_modified"] else ""),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['nproc']} cores (nproc) |",
        f"| memory | {m['memory_gib']:.1f} GiB |",
        f"| kernel | {m['kernel']} |",
        f"| versions | Python {m['python']}, MLflow {m['mlflow']}, aiohttp {m['aiohttp']}, "
        f"uvicorn {m['uvicorn']} |",
        f"| load average at start / end | {' '.join(m['loadavg_at_start'])} / "
        f"{' '.join(results['loadavg_at_end'])} |",
        "",
        "## Targets",
        "",
        "| target | value | |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['value']} | {t['verdict']} |" for t in results["targets"]),
        "",
        '"stock mlflow server": vanilla `mlflow server` with its defaults, measured in this run '
        "(section below); the issue's targets were written against it. \"mlfleet's direct "
        "worker\": the same Small server's single MLflow worker reached without the gateway, on "
        "its Unix socket (the MLflow client through a forwarder, see its section), so those rows "
        "measure the cost of the gateway hop, not a comparison with stock MLflow.",
        "",
        "## Lifecycle (Small, SQLite; Describe polled every 50 ms)",
        "",
        f"Daemon start to `/health` 200: {results['daemon_startup_s']:.2f} s.",
        "",
        "| cycle | create → Created | stop → Stopped | start → Started | delete → gone |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(life["cycles"], 1):
        label = f"{i} (first create)" if i == 1 else str(i)
        lines.append(
            f"| {label} | {c['create']:.2f} s | {c['stop']:.2f} s | {c['start']:.2f} s "
            f"| {c['delete']:.2f} s |"
        )
    ready = life["creates_template_ready_s"]
    lines += [
        "",
        f"First create, right after the daemon started (it may wait for the MLflow schema template "
        f"the daemon builds at start): **{life['first_create_s']:.2f} s**; "
        f"create with the template ready: **{_spread(ready)}** (n={len(ready)}, includes the "
        f"benchmark server's own create).",
        "",
        "## Memory (Small server, warmed, idle)",
        "",
        "| what | RSS | PSS |",
        "|---|---|---|",
        f"| MLflow worker process(es): {mem['workers']} | {mem['worker_rss_mib']:.0f} MiB "
        f"| {mem['worker_pss_mib']:.0f} MiB |",
        f"| mlfleet daemon | {mem['daemon_rss_mib']:.0f} MiB | {mem['daemon_pss_mib']:.0f} MiB |",
        f"| after the load cases: worker(s) / daemon | "
        f"{results['memory_after_load']['worker_rss_mib']:.0f} / "
        f"{results['memory_after_load']['daemon_rss_mib']:.0f} MiB "
        f"| {results['memory_after_load']['worker_pss_mib']:.0f} / "
        f"{results['memory_after_load']['daemon_pss_mib']:.0f} MiB |",
        "",
        f"Processes (daemon and everything below it): {mem['processes']}.",
        "",
        "## Throughput and latency (Small, 1 worker; aiohttp closed loop, keep-alive, "
        f"{results['plan']['warmup']:.0f} s warm-up + "
        f"{results['plan']['duration']:.0f} s per case)",
        "",
        "direct: straight to the Small server's MLflow worker (mlfleet's own, not stock MLflow) "
        "on its Unix socket (aiohttp's UnixConnector), bypassing the gateway. "
        "CPU/req: CPU ms per request used by the MLflow worker / the daemon (gateway) / this load "
        "generator. Other load: cores used by everything else on the machine during the case.",
        "",
        "| endpoint | c | direct req/s | gateway req/s | gw/direct | direct p50 / p99 ms "
        "| gateway p50 / p99 ms | errors d / g | CPU/req direct w / client ms "
        "| CPU/req gateway w / gw / client ms | other load d / g |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["ratios"]:
        d, g = row["direct"], row["gateway"]
        dc, gc = d["cpu_ms_per_request"], g["cpu_ms_per_request"]
        label = row["endpoint"] + (f" (#{row['repeat']})" if row["repeat"] > 1 else "")
        lines.append(
            f"| {label} | {row['concurrency']} | {d['rps']:.1f} | {g['rps']:.1f} "
            f"| {row['ratio']:.0%} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} "
            f"| {g['p50_ms']:.1f} / {g['p99_ms']:.1f} | {d['errors']} / {g['errors']} "
            f"| {dc['worker']:.1f} / {dc['client']:.1f} "
            f"| {gc['worker']:.1f} / {gc['gateway']:.1f} / {gc['client']:.1f} "
            f"| {d['foreign_cores']:.2f} / {g['foreign_cores']:.2f} |"
        )
    lines += ["", _saturation_note(results["cases"])]
    lines += errors_seen(
        results["cases"],
        lambda c: f"{c['server']} {c['endpoint']} c={c['concurrency']} {c['mode']}",
    )
    lines += [
        "",
        f"## MLflow client, one `log_metric` call at a time ({results['plan']['client_calls']} "
        "calls each after 5 warm-up calls, a fresh subprocess per run, gateway and direct "
        "taking turns call by call)",
        "",
        "| mode | calls/s (median) | p50 ms | p99 ms | calls/s of each run |",
        "|---|---|---|---|---|",
        *(
            f"| {c['mode']} | {c['calls_per_s']:.1f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} "
            f"| {_each(c['rounds'], 'calls_per_s')} |"
            for c in [*results["mlflow_client"], *filter(None, [results.get("plugin_client")])]
        ),
        "",
        _forwarder_note(results["mlflow_client"]),
        "",
        "The sagemaker-mlflow plugin signs every call with SigV4 and can only reach the "
        "gateway (its tracking URI is the server's ARN); its runs come after the pairs above.",
    ]
    if results.get("stock"):
        lines += stock_markdown(results)
    medium = results.get("medium")
    if medium:
        lines += [
            "",
            "## Medium server (2 workers), log-metric",
            "",
            f"Create → Created: {medium['create_s']:.2f} s.",
            "",
            "| path | c | req/s | p50 / p99 ms | errors | CPU/req workers / gw ms | other load |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in medium["cases"]:
            cpu = c["cpu_ms_per_request"]
            lines.append(
                f"| {c['mode']} | {c['concurrency']} | {c['rps']:.1f} "
                f"| {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {c['errors']} "
                f"| {cpu['worker']:.1f} / {cpu['gateway']:.1f} | {c['foreign_cores']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def stock_markdown(results: dict[str, Any]) -> list[str]:
    stock = results["stock"]
    foot = stock["footprint_idle"]
    mem = results["memory_idle"]
    stop = f"{stock['stop_s']:.1f} s" if stock["stop_s"] is not None else "> 30 s (SIGKILLed)"
    lines = [
        "",
        "## Stock `mlflow server` (same machine, same run)",
        "",
        f"`{stock['command']}`: MLflow {results['machine']['mlflow']} defaults (4 uvicorn "
        "workers, job execution on), a fresh SQLite database, started after the Small server "
        "was deleted and measured with the same load generator while the mlfleet daemon sat idle.",
        "",
        f"Start to `/health` 200: {stock['startup_s']:.1f} s. SIGTERM to the process group until "
        f"every process is gone: {stop}.",
        "",
        _stock_loop_note(stock["uvicorn_loop"]),
        "",
        "| idle footprint (warmed) | processes | RSS | PSS |",
        "|---|---|---|---|",
        f"| stock `mlflow server`, whole process tree | {foot['processes']} "
        f"| {foot['rss_mib']:.0f} MiB | {foot['pss_mib']:.0f} MiB |",
        f"| mlfleet: daemon + the Small server's worker | {mem['processes']} "
        f"| {mem['daemon_rss_mib'] + mem['worker_rss_mib']:.0f} MiB "
        f"| {mem['daemon_pss_mib'] + mem['worker_pss_mib']:.0f} MiB |",
        "",
        "RSS is summed per process, so pages shared between processes count once for each; "
        "PSS is the fair total.",
        "",
        "| log-metric | c | req/s | p50 / p99 ms | errors | CPU/req server ms | other load |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in stock["cases"]:
        label = "stock" + (f" (#{c['repeat']})" if c["repeat"] > 1 else "")
        lines.append(
            f"| {label} | {c['concurrency']} | {c['rps']:.1f} "
            f"| {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {c['errors']} "
            f"| {c['cpu_ms_per_request']['worker']:.1f} | {c['foreign_cores']:.2f} |"
        )
    client = stock["mlflow_client"]
    mlfleet = next(c for c in results["mlflow_client"] if c["mode"] == "gateway")
    lines += [
        "",
        "CPU/req server: CPU ms per request of the whole stock process tree.",
        "",
        "| MLflow client, one `log_metric` call at a time | calls/s (median) | p50 ms | p99 ms "
        "| calls/s of each run |",
        "|---|---|---|---|---|",
        f"| stock `mlflow server` | {client['calls_per_s']:.1f} | {client['p50_ms']:.1f} "
        f"| {client['p99_ms']:.1f} | {_each(client['rounds'], 'calls_per_s')} |",
        f"| mlfleet gateway (from above) | {mlfleet['calls_per_s']:.1f} | {mlfleet['p50_ms']:.1f} "
        f"| {mlfleet['p99_ms']:.1f} | {_each(mlfleet['rounds'], 'calls_per_s')} |",
    ]
    lines += errors_seen(stock["cases"], lambda c: f"stock log-metric c={c['concurrency']}")
    return lines


def errors_seen(
    cases: list[dict[str, Any]], describe: Callable[[dict[str, Any]], str]
) -> list[str]:
    """Report lines naming the cases that saw errors, with the first error of each."""
    errors = [c for c in cases if c["error_sample"]]
    if not errors:
        return []
    return [
        "",
        "Errors seen (first of each case):",
        "",
        *(f"- {describe(c)}: {c['errors']} x `{c['error_sample'][:160]}`" for c in errors),
    ]


def _forwarder_note(client: list[dict[str, Any]]) -> str:
    """What "direct" means for the MLflow client, and what its forwarder cost."""
    direct = next(c for c in client if c["mode"] == "direct")
    cpu = median([r["forwarder_cpu_ms_per_call"] for r in direct["rounds"]])
    return (
        "direct: the worker serves only on a Unix socket and the MLflow client speaks only "
        "http://, so the training-loop process runs a small TCP-to-Unix forwarder (two pump "
        "threads) and the direct client talks to it on 127.0.0.1. That hop handicaps direct: one "
        "more copy each way and two thread wake-ups per call, which the gateway path (whose "
        "connection the worker serves itself after the first call) does not pay. The pumps used "
        f"{cpu:.2f} ms of CPU per direct call (median of the runs; {cpu / direct['p50_ms']:.0%} "
        "of direct's p50), most of it on the call's path, so gateway/direct here flatters the "
        "gateway by about that much."
    )


def _stock_loop_note(loop: str) -> str:
    if loop == "uvloop":
        return (
            "Event loop: **uvloop**. It is installed in this venv (an mlfleet dependency; "
            "`mlflow[genai]` pulls it in too, plain `pip install mlflow` does not), uvicorn's "
            "default `--loop auto` picks it, and uvloop sets TCP_NODELAY on every connection. So "
            "the ~40 ms keep-alive stall that baseline-perf.md measured (asyncio loop) does not "
            "happen here: this stock baseline is much faster at c=1 and for the one-call-at-a-time "
            "client than a plain `pip install mlflow` server (≈ 19 calls/s there)."
        )
    return (
        "Event loop: asyncio (uvloop not installed), as with a plain `pip install mlflow`: "
        "keep-alive requests pay the ~40 ms stall described in baseline-perf.md."
    )


def _saturation_note(cases: list[dict[str, Any]]) -> str:
    """req/s x worker CPU per request = cores the single worker used. Near 1.0 means it was
    GIL-bound, so throughput is 1 core / its CPU per request in that case, whichever path."""
    cores = [
        c["rps"] * c["cpu_ms_per_request"]["worker"] / 1000
        for c in cases
        if c["server"] == "Small" and c["concurrency"] >= 8
    ]
    if not cores:
        return ""
    return (
        f"At c >= 8 the single MLflow worker used {min(cores):.2f}-{max(cores):.2f} cores "
        "(req/s x its CPU per request) on both paths: it is GIL-bound, so each case's throughput "
        "is about 1 core divided by the worker's CPU per request in that case, and the gw/direct "
        "ratio mostly follows how that cost drifted between the two cases."
    )


def _each(rows: list[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{row[key]:.1f}" for row in rows)


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    if len(ordered) == 1:
        return f"{median:.2f} s"
    return f"{median:.2f} s [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "latest.md").write_text(markdown(results))


# ---------------------------------------------------------------------------------------------
# the run


def bench_small(
    daemon: BenchDaemon, sm: Any, artifacts: Path, plan: Plan, results: dict[str, Any]
) -> None:
    """Create the benchmark server and measure memory, the load matrix and the MLflow client."""
    print("benchmark server (Small) ...", flush=True)
    results["lifecycle"]["creates_template_ready_s"].append(
        create_server(sm, "bench-small", artifacts)
    )
    workers = wait_workers(daemon.data_dir, 1)
    key, secret = daemon.credentials()
    socket_path = next(iter(workers.values()))
    direct = direct_target("direct", socket_path)
    gateway = Target("gateway", tracking_url(sm, "bench-small"), basic_header(key, secret))
    run_id = create_run(gateway)
    warm([direct, gateway], run_id)
    time.sleep(2)  # let allocator and GC settle after the warm-up requests
    results["memory_idle"] = memory_report(daemon, workers)
    print(
        f"  idle: worker RSS {results['memory_idle']['worker_rss_mib']:.0f} MiB, "
        f"daemon RSS {results['memory_idle']['daemon_rss_mib']:.0f} MiB",
        flush=True,
    )

    print("throughput (Small) ...", flush=True)
    probe = CpuProbe(list(workers), daemon.pid)
    cases = throughput_matrix(run_id, direct, gateway, plan, probe)
    results["cases"] = [asdict(c) for c in cases]
    results["ratios"] = [
        {
            "endpoint": r["endpoint"],
            "concurrency": r["concurrency"],
            "repeat": r["repeat"],
            "ratio": r["gateway"].rps / r["direct"].rps if r["direct"].rps else math.nan,
            "direct": asdict(r["direct"]),
            "gateway": asdict(r["gateway"]),
        }
        for r in ratio_rows(cases)
    ]
    results["memory_after_load"] = memory_report(daemon, workers)

    print("MLflow client, one call at a time ...", flush=True)
    results["mlflow_client"] = mlflow_client_rounds(
        socket_path, gateway.base, run_id, plan, (key, secret)
    )
    print("sagemaker-mlflow plugin (ARN tracking URI), one call at a time ...", flush=True)
    arn = sm.describe_mlflow_tracking_server(TrackingServerName="bench-small")["TrackingServerArn"]
    plugin_runs = [
        mlflow_client_run({"plugin": arn}, run_id, plan.client_calls, (key, secret), daemon.url)[0]
        for _ in range(plan.target_repeats)
    ]
    results["plugin_client"] = client_summary("gateway, sagemaker-mlflow plugin", plugin_runs)
    delete_server(sm, "bench-small")


def bench_medium(
    daemon: BenchDaemon, sm: Any, artifacts: Path, plan: Plan, results: dict[str, Any]
) -> None:
    """log-metric c=8 through the gateway on 2 workers, and direct to one of them for scale."""
    print("Medium server ...", flush=True)
    created = create_server(sm, "bench-medium", artifacts, size="Medium")
    workers = wait_workers(daemon.data_dir, 2)
    key, secret = daemon.credentials()
    gateway = Target("gateway", tracking_url(sm, "bench-medium"), basic_header(key, secret))
    one_worker = direct_target("direct (1 of 2 workers)", min(workers.values()))
    run_id = create_run(gateway)
    warm([gateway], run_id)
    probe = CpuProbe(list(workers), daemon.pid)
    cases = [
        run_case("log-metric", run_id, gateway, 8, plan, probe, "Medium"),
        run_case("log-metric", run_id, one_worker, 8, plan, probe, "Medium"),
        run_case("log-metric", run_id, gateway, 32, plan, probe, "Medium"),
    ]
    results["medium"] = {"create_s": created, "cases": [asdict(c) for c in cases]}
    delete_server(sm, "bench-medium")


def bench_stock(data_dir: Path, plan: Plan, results: dict[str, Any]) -> None:
    """Stock ``mlflow server`` on the same machine in the same run, with mlfleet idle: the
    baseline the issue's targets were written against, unlike "direct" (mlfleet's lean worker)."""
    print("stock mlflow server ...", flush=True)
    stock = StockMlflow(data_dir / "stock")
    try:
        measured = measure_stock(stock, plan)
    except BaseException:
        print(f"stock mlflow server failed; its log tail:\n{stock.log_tail()}", file=sys.stderr)
        raise
    finally:
        stock.close()
    measured["stop_s"] = stock.stop_seconds
    print(
        "  SIGTERM to all gone: "
        + (f"{stock.stop_seconds:.1f} s" if stock.stop_seconds is not None else "needed SIGKILL"),
        flush=True,
    )
    results["stock"] = measured


def run_benchmark(plan: Plan, data_dir: Path, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "quick": quick,
        "plan": asdict(plan),
        "machine": machine_info(),
    }
    started = time.perf_counter()
    daemon = BenchDaemon(data_dir / "daemon")
    artifacts = daemon.artifacts
    try:
        print(f"starting mlfleet in {daemon.data_dir} ...", flush=True)
        daemon.start()
        results["daemon_startup_s"] = daemon.startup_seconds
        sm = daemon.sagemaker()

        print(f"lifecycle, {plan.cycles} cycle(s) ...", flush=True)
        cycles = lifecycle_cycles(sm, artifacts, plan.cycles)
        results["lifecycle"] = {
            "cycles": cycles,
            "first_create_s": cycles[0]["create"],
            "creates_template_ready_s": [c["create"] for c in cycles[1:]],
        }
        bench_small(daemon, sm, artifacts, plan, results)
        bench_stock(data_dir, plan, results)
        bench_medium(daemon, sm, artifacts, plan, results)
    except BaseException:
        print(f"benchmark failed; daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
        raise
    finally:
        daemon.close()
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["total_seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    return results


def _terminate_on_sigterm() -> None:
    # A SIGTERM to the benchmark unwinds through the ``finally`` blocks like Ctrl-C does.
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def arguments(doc: str, quick_help: str) -> argparse.Namespace:
    """The options every benchmark script takes: --quick, --out and --keep."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    return parser.parse_args()


def in_temp_dir(
    prefix: str, keep: bool, measure: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """``measure(data_dir)`` in a fresh temporary dir, removed afterwards unless ``keep``."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return measure(data_dir)
    finally:
        if keep:
            print(f"data dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--client-loop":
        client_loop_child(sys.argv[2].split(","), sys.argv[3].split(","), int(sys.argv[4]))
        return
    args = arguments(__doc__, "~3 s per case, 1 lifecycle cycle")

    _terminate_on_sigterm()
    plan = Plan.make(args.quick)
    results = in_temp_dir(
        "mlfleet-bench-", args.keep, lambda data_dir: run_benchmark(plan, data_dir, args.quick)
    )
    write_results(args.out, results)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
