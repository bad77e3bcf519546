"""The stock ``mlflow server`` baseline of bench/run.py; not a benchmark of its own.

Vanilla ``mlflow server`` started as a user would (SQLite, its default 4 uvicorn workers and job
execution), on the same machine in the same run while the mlfleet daemon sits idle: its start
and stop, its idle footprint (the whole process tree), log-metric at c=1 and c=8 and the MLflow
client one call at a time, measured with the same load generator and client loop as mlfleet. It
is the baseline the issue's targets were written against ("direct" in bench/run.py is mlfleet's
own lean worker, not this). ``stock_targets`` and ``stock_markdown`` judge and report it next to
bench/run.py's figures for mlfleet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients import client_summary, mlflow_client_run
from common import (
    NO_TELEMETRY,
    POLL_SECONDS,
    CpuProbe,
    Plan,
    Target,
    cmdline,
    create_run,
    descendants,
    each,
    errors_seen,
    free_port,
    median,
    memory_mib,
    verdict,
    wait_healthy,
)
from loadgen import run_case, warm

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
        self.startup_seconds = wait_healthy(
            "mlflow server",
            self.proc,
            self.url,
            started,
            STOCK_STARTUP_TIMEOUT,
            self.log_tail,
            poll=0.25,  # its start is 12-40 s of CPU-bound imports; don't add to it
            probe_timeout=2.0,
            each_poll=self.tree,
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


# ---------------------------------------------------------------------------------------------
# report


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
        f"| {client['p99_ms']:.1f} | {each(client['rounds'], 'calls_per_s')} |",
        f"| mlfleet gateway (from above) | {mlfleet['calls_per_s']:.1f} | {mlfleet['p50_ms']:.1f} "
        f"| {mlfleet['p99_ms']:.1f} | {each(mlfleet['rounds'], 'calls_per_s')} |",
    ]
    lines += errors_seen(stock["cases"], lambda c: f"stock log-metric c={c['concurrency']}")
    return lines


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
