"""The closed-loop load generator the benchmark scripts share; not a benchmark itself.

- ``run_case``: ``concurrency`` aiohttp clients with keep-alive, each sending one request of a
  kind (log-metric, get-run, create-run) and waiting for the whole answer before the next, for
  a warm-up and then a measured window; throughput, p50/p99 and CPU per request (``CpuProbe``);
- ``warm``: a few requests each way before anything is measured;
- two sides taking turns (bench/auth.py: policies on/off, bench/events.py: audit and events
  on/off): ``on_off_matrix`` measures every case on both, swapping who goes first each round,
  ``on_off_rows`` takes the medians and ratios and ``on_off_table`` reports them.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from common import (
    REQUEST_TIMEOUT,
    BenchDaemon,
    CpuProbe,
    Plan,
    Target,
    median,
    percentile,
    run_body,
)

# Hard cap so that no load loop can run away even if the clock misbehaves.
MAX_REQUESTS_PER_CASE = 300_000


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


# ---------------------------------------------------------------------------------------------
# two sides, "on" and "off", taking turns

ON_OFF = ("on", "off")


@dataclass
class Side:
    """One of the two sides compared: a warmed server reached as ``target`` (whose mode is the
    side's name), the run it logs to, its CPU probe and what its set-up found."""

    mode: str
    daemon: BenchDaemon
    target: Target
    run_id: str
    probe: CpuProbe
    setup: dict[str, Any]


def on_off_matrix(
    sides: dict[str, Side], plan: Plan, kinds: tuple[str, ...] = ("log-metric", "get-run")
) -> list[dict[str, Any]]:
    """Every (endpoint, concurrency): ``plan.target_repeats`` rounds of on and off, swapping
    which goes first each round, so that drift on a shared machine hits both alike."""
    cases: list[dict[str, Any]] = []
    index = 0
    for kind in kinds:
        for concurrency in plan.concurrencies:
            for repeat in range(1, plan.target_repeats + 1):
                order = ON_OFF if index % 2 == 0 else ON_OFF[::-1]
                index += 1
                for mode in order:
                    side = sides[mode]
                    case = run_case(kind, side.run_id, side.target, concurrency, plan, side.probe)
                    case.repeat = repeat
                    cases.append(asdict(case))
    return cases


def on_off_rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (endpoint, concurrency): medians of the rounds each way and the on/off ratios."""
    rows = []
    keys = dict.fromkeys((c["endpoint"], c["concurrency"]) for c in cases)
    for endpoint, concurrency in keys:
        mine = [c for c in cases if (c["endpoint"], c["concurrency"]) == (endpoint, concurrency)]
        by_mode = {m: [c for c in mine if c["mode"] == m] for m in ON_OFF}
        row: dict[str, Any] = {"endpoint": endpoint, "concurrency": concurrency}
        for mode, runs in by_mode.items():
            row[mode] = {
                "rps": median([c["rps"] for c in runs]),
                "p50_ms": median([c["p50_ms"] for c in runs]),
                "p99_ms": median([c["p99_ms"] for c in runs]),
                "gateway_cpu_ms": median([c["cpu_ms_per_request"]["gateway"] for c in runs]),
                "worker_cpu_ms": median([c["cpu_ms_per_request"]["worker"] for c in runs]),
                "errors": sum(c["errors"] for c in runs),
                "rounds_rps": [c["rps"] for c in runs],
                "foreign_cores": median([c["foreign_cores"] for c in runs]),
            }
        on, off = row["on"], row["off"]
        row["ratio"] = on["rps"] / off["rps"] if off["rps"] else math.nan
        row["round_ratios"] = [
            a / b if b else math.nan
            for a, b in zip(on["rounds_rps"], off["rounds_rps"], strict=True)
        ]
        # Each round's on and off ran back to back: the median of their ratios is the least
        # disturbed by drift over the run.
        row["paired_ratio"] = median(row["round_ratios"])
        rows.append(row)
    return rows


def on_off_table(rows: list[dict[str, Any]]) -> list[str]:
    """``on_off_rows`` as a table: medians of the rounds, the ratios, each round's ratio."""
    lines = [
        "| endpoint | c | on req/s | off req/s | on/off | of medians | each round "
        "| on p50 / p99 ms | off p50 / p99 ms | gateway CPU/req on / off ms "
        "| worker CPU/req on / off ms | errors on / off | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        on, off = r["on"], r["off"]
        lines.append(
            f"| {r['endpoint']} | {r['concurrency']} | {on['rps']:.1f} | {off['rps']:.1f} "
            f"| **{r['paired_ratio']:.0%}** | {r['ratio']:.0%} "
            f"| {', '.join(f'{x:.0%}' for x in r['round_ratios'])} "
            f"| {on['p50_ms']:.1f} / {on['p99_ms']:.1f} "
            f"| {off['p50_ms']:.1f} / {off['p99_ms']:.1f} "
            f"| {on['gateway_cpu_ms']:.2f} / {off['gateway_cpu_ms']:.2f} "
            f"| {on['worker_cpu_ms']:.1f} / {off['worker_cpu_ms']:.1f} "
            f"| {on['errors']} / {off['errors']} "
            f"| {on['foreign_cores']:.2f} / {off['foreign_cores']:.2f} |"
        )
    return lines
