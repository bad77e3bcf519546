"""What the benchmark scripts in bench/ share; not a benchmark itself.

- ``Plan``: how much a script measures (each script makes its own, full or ``--quick``);
- /proc helpers (processes, memory, CPU) and ``CpuProbe``, which splits the CPU one case used
  between the MLflow worker(s), the daemon (gateway), this process and everything else;
- ``BenchDaemon``: ``python -m mlfleet up`` in a throw-away data dir, and boto3 clients for it;
- tracking servers: Create/Delete timed until Describe shows the outcome, a ``Target`` for one's
  REST API (through the gateway, or straight to a worker's Unix socket), a run to log to;
- statistics and report helpers: percentiles, medians, the machine's description, the report's
  heading;
- a script's plumbing: its options (``--quick``, ``--out``, ``--keep``), a temporary data dir,
  SIGTERM, and writing bench/results/<name>-latest.{json,md}.

The scripts import it as ``common``: a script's own directory is first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import importlib.metadata
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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import botocore.session
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from mlfleet.protocol.awsjson import with_mlfleet_models
from mlfleet.runtime.sockets import WORKER_HOST

REPO = Path(__file__).resolve().parent.parent
WORKER_MODULE = "mlfleet.runtime.mlflow_worker"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.05
TRANSITION_TIMEOUT = 180.0
# MLflow's client and server send usage telemetry to the internet by default; the benchmarks
# stay on loopback.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Plan:
    """How much to measure. Each script makes its own for a full run and for ``--quick`` (a
    smoke test of the whole script); a field the script has no use for is 0."""

    cycles: int
    warmup: float
    duration: float
    concurrencies: tuple[int, ...]
    client_calls: int
    # The targets are judged on a margin (90 %, 100 %) no wider than run-to-run noise on a
    # shared 2-core box, so their cases run several times and the median pair decides.
    target_repeats: int


# ---------------------------------------------------------------------------------------------
# /proc helpers: processes, memory, CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    """A process's command line; a warm-started worker (runtime.warm) rewrote its own to what a
    cold one runs, as one string of words separated by spaces."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    parts = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return parts[0].split(" ") if len(parts) == 1 else parts


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


def kib_field(path: str, name: str) -> int:
    """A ``Name:  1234 kB`` field of a /proc file, in KiB (0 when missing)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB. PSS splits shared pages between sharers: the fair per-process cost."""
    rss = kib_field(f"/proc/{pid}/status", "VmRSS")
    pss = kib_field(f"/proc/{pid}/smaps_rollup", "Pss")
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


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return Path("/proc/loadavg").read_text().split()[:3]


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


def wait_healthy(
    what: str,
    proc: subprocess.Popen[bytes],
    url: str,
    started: float,
    timeout: float,
    log_tail: Callable[[], str],
    *,
    poll: float = POLL_SECONDS,
    probe_timeout: float = 1.0,
    each_poll: Callable[[], object] = lambda: None,
) -> float:
    """Seconds from ``started`` (perf_counter) until ``url``/health answers 200. Raises, with
    the server's ``log_tail()``, if ``proc`` exits first or ``timeout`` runs out."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        each_poll()
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=probe_timeout).status_code == 200:
                return time.perf_counter() - started
        time.sleep(poll)
    raise RuntimeError(f"{what} not healthy after {timeout:.0f} s:\n{log_tail()}")


class BenchDaemon:
    """``python -m mlfleet up`` in a throw-away data dir; ``close()`` stops it whatever happened.

    As a context manager (``with daemon:``) it prints its log's tail when the block fails and
    closes on any exit; starting it is up to the block."""

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
        self.startup_seconds = wait_healthy(
            "mlfleet", self.proc, self.url, started, timeout, self.log_tail
        )

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
        """A boto3 client of ``service`` (sagemaker, iam, sts, mlfleet) signed with the
        admin's key."""
        key, secret = self.credentials()
        session = boto3.Session(botocore_session=with_mlfleet_models(botocore.session.Session()))
        return session.client(
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

    def __enter__(self) -> BenchDaemon:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None:
            print(f"benchmark failed; daemon log tail:\n{self.log_tail()}", file=sys.stderr)
        self.close()


# ---------------------------------------------------------------------------------------------
# tracking servers


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
    mlflow_version: str | None = None,
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
            **({"MlflowVersion": mlflow_version} if mlflow_version else {}),
        ),
        "Created",
    )


def delete_server(sm: Any, name: str) -> float:
    return timed_transition(
        sm, name, lambda: sm.delete_mlflow_tracking_server(TrackingServerName=name), None
    )


def wait_workers(data_dir: Path, count: int, timeout: float = 30.0) -> dict[int, Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = worker_sockets(data_dir)
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"expected {count} MLflow worker(s), found {worker_sockets(data_dir)}")


def tracking_url(sm: Any, name: str) -> str:
    return str(sm.describe_mlflow_tracking_server(TrackingServerName=name)["TrackingServerUrl"])


@dataclass(frozen=True)
class Target:
    """One way to reach a tracking server's REST API: its base URL and headers, and the Unix
    socket to connect to when it is a worker reached directly."""

    mode: str  # "direct" or "gateway", or what the script compares ("on", "confined", ...)
    base: str
    headers: dict[str, str]
    socket: Path | None = None


def direct_target(mode: str, socket_path: Path) -> Target:
    """A worker's own Unix socket; ``localhost`` is a host MLflow's host check accepts."""
    return Target(mode, f"http://{WORKER_HOST}", {}, socket_path)


def basic_header(key: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


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


# ---------------------------------------------------------------------------------------------
# statistics and reports


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def span(values: list[float], fmt: str) -> str:
    """``low-high`` of ``values`` in ``fmt``, or one figure when both read the same."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def each(rows: list[dict[str, Any]], key: str) -> str:
    """``key`` of every row, comma-separated, one decimal."""
    return ", ".join(f"{row[key]:.1f}" for row in rows)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


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
        "memory_gib": kib_field("/proc/meminfo", "MemTotal") / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mlflow": importlib.metadata.version("mlflow"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "git_commit": commit or "unknown",
        "git_modified": [line[3:] for line in dirty if line.strip()],
        "loadavg_at_start": loadavg(),
    }


def new_results(script: str, quick: bool, plan: Plan | None = None) -> dict[str, Any]:
    """A run's results as they start: its command line, full or quick, the plan, the machine."""
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", script, *sys.argv[1:]]),
        "quick": quick,
    }
    if plan is not None:
        results["plan"] = asdict(plan)
    results["machine"] = machine_info()
    return results


def finish_results(results: dict[str, Any], started: float) -> None:
    """The load average at the end and the run's length since ``started`` (perf_counter)."""
    results["loadavg_at_end"] = loadavg()
    results["total_seconds"] = time.perf_counter() - started


def ran(results: dict[str, Any]) -> str:
    """The report's line saying what ran when, on which commit, and how long it took."""
    m = results["machine"]
    return (
        f"`{results['command']}` — {m['date']}, git {m['git_commit']}, "
        f"{'quick' if results['quick'] else 'full'} run, {results['total_seconds']:.0f} s."
        + (f" Uncommitted edits in: {', '.join(m['git_modified'])}." if m["git_modified"] else "")
    )


def header(title: str, results: dict[str, Any]) -> list[str]:
    """The report's title, what ran when (and on which commit), and the machine."""
    m = results["machine"]
    return [
        title,
        "",
        ran(results),
        "",
        f"Machine: {m['cpu_model']}, {m['nproc']} cores (nproc), {m['memory_gib']:.1f} GiB, "
        f"kernel {m['kernel']}; Python {m['python']}, MLflow {m['mlflow']}, aiohttp "
        f"{m['aiohttp']}. Load average at start / end: {' '.join(m['loadavg_at_start'])} / "
        f"{' '.join(results['loadavg_at_end'])}.",
    ]


def targets_table(results: dict[str, Any]) -> list[str]:
    """The report's section of targets: what each is, the value measured and the verdict."""
    return [
        "## Targets",
        "",
        "| target | value | |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['value']} | {t['verdict']} |" for t in results["targets"]),
    ]


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


# ---------------------------------------------------------------------------------------------
# a script's plumbing


def terminate_on_sigterm() -> None:
    """A SIGTERM to the benchmark unwinds through the ``finally`` blocks like Ctrl-C does."""

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


def write_results(
    out_dir: Path, stem: str, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str]
) -> None:
    """``<stem>.json`` (the results) and ``<stem>.md`` (their report) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(results))


def main_of(
    doc: str,
    quick_help: str,
    name: str,
    measure: Callable[[Path, bool], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """A benchmark script's ``main``: its options, then ``measure(data_dir, quick)`` in a
    temporary data dir, then bench/results/<name>-latest.{json,md} (``--out``: elsewhere; no
    ``name``: latest.{json,md}) and the report on stdout."""
    args = arguments(doc, quick_help)
    terminate_on_sigterm()
    prefix = f"mlfleet-bench-{name}-" if name else "mlfleet-bench-"
    results = in_temp_dir(prefix, args.keep, lambda data_dir: measure(data_dir, args.quick))
    write_results(args.out, f"{name}-latest" if name else "latest", results, markdown)
    print()
    print(markdown(results))
