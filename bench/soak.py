"""Soak a Medium tracking server at 80 % of its capacity; write bench/results/soak-latest.*.

Run: ``.venv/bin/python bench/soak.py [--quick] [--minutes 30] [--out bench/results] [--keep]``
(not part of the test suite: a full run takes its minutes plus about one).

1. Capacity: log-metric through the gateway, 8 closed-loop clients, 20 s after a 5 s warm-up:
   the server's requests per second.
2. Soak: an open-loop client sends requests at 80 % of that rate (four log-metric to one
   get-run), never more than 32 in flight, for the given minutes.

Reported per minute: requests answered, errors, p50 and p99 latency; and the memory (RSS and
PSS) of the daemon and of each worker at the start and the end of the soak. The issue's
targets: zero errors, and memory flat (no leak).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    REQUEST_TIMEOUT,
    BenchDaemon,
    CpuProbe,
    Plan,
    Target,
    basic_header,
    create_run,
    create_server,
    finish_results,
    header,
    in_temp_dir,
    memory_mib,
    new_results,
    percentile,
    terminate_on_sigterm,
    tracking_url,
    verdict,
    wait_workers,
    write_results,
)
from loadgen import Endpoint, http_session, run_async, run_case

LOAD_SHARE = 0.8
MAX_IN_FLIGHT = 32
# Memory may grow this much from the start to the end of a soak and still count as flat
# (caches filling, the trail's batches): a leak grows with time, well past it.
FLAT_MIB = 25.0


class MemoryEachMinute(threading.Thread):
    """PSS of the daemon and of its workers, once a minute: a leak grows steadily, a cache
    filling levels off, which the start and the end alone do not tell apart."""

    def __init__(self, daemon: BenchDaemon) -> None:
        super().__init__(daemon=True)
        self.target = daemon
        self.samples: list[dict[str, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(60):
            now = memory(self.target)
            self.samples.append(
                {"daemon": now["daemon"][1], "workers": sum(w[1] for w in now["workers"])}
            )


def memory(daemon: BenchDaemon) -> dict[str, Any]:
    workers = sorted(wait_workers(daemon.data_dir, 2))
    return {
        "daemon": memory_mib(daemon.pid),
        "workers": [memory_mib(pid) for pid in workers],
    }


async def open_loop(
    target: Target, run_id: str, rate: float, seconds: float
) -> list[tuple[float, float, int]]:
    """Send at ``rate`` per second for ``seconds`` (log-metric, every fifth a get-run); each
    sample is (seconds since the first was due, latency, status), status -1 for a request that
    got no answer."""
    writes, reads = Endpoint("log-metric", run_id), Endpoint("get-run", run_id)
    samples: list[tuple[float, float, int]] = []
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    headers = {**target.headers, "Content-Type": "application/json"}

    async def one(http: aiohttp.ClientSession, index: int) -> None:
        method, url, body = (reads if index % 5 == 4 else writes).request(target)
        sent = time.perf_counter()
        try:
            async with http.request(method, url, data=body, headers=headers) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError):
            status = -1
        finally:
            in_flight.release()
        samples.append((sent - start, time.perf_counter() - sent, status))

    async with http_session(target, MAX_IN_FLIGHT) as http:
        start = time.perf_counter()
        tasks = []
        index = 0
        # Sends stop at the end of the window even when the server fell behind the rate (its
        # throughput per minute then shows it), rather than run on past it.
        while (due := start + index / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await in_flight.acquire()
            if time.perf_counter() >= start + seconds:
                in_flight.release()
                break
            tasks.append(asyncio.create_task(one(http, index)))
            index += 1
        await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT + 10)
    return samples


def per_minute(samples: list[tuple[float, float, int]], seconds: float) -> list[dict[str, Any]]:
    last = max(0, int(seconds // 60) - 1)
    minutes: dict[int, list[tuple[float, float, int]]] = {}
    for sample in samples:
        minutes.setdefault(min(int(sample[0] // 60), last), []).append(sample)
    rows = []
    for minute, inside in sorted(minutes.items()):
        good = sorted(s[1] for s in inside if s[2] == 200)
        rows.append(
            {
                "minute": minute + 1,
                "answered": len(good),
                "errors": len(inside) - len(good),
                "p50_ms": percentile(good, 0.5) * 1000,
                "p99_ms": percentile(good, 0.99) * 1000,
            }
        )
    return rows


def measure(data_dir: Path, quick: bool, minutes: float) -> dict[str, Any]:
    started = time.perf_counter()
    results = new_results("bench/soak.py", quick)
    seconds = 60.0 if quick else minutes * 60
    with BenchDaemon(data_dir / "daemon") as daemon:
        daemon.start()
        sm = daemon.sagemaker()
        create_server(sm, "soak", daemon.artifacts, "Medium")
        workers = wait_workers(daemon.data_dir, 2)
        target = Target("gateway", tracking_url(sm, "soak"), basic_header(*daemon.credentials()))
        run_id = create_run(target, "soak")
        plan = Plan(1, 5.0, 10.0 if quick else 20.0, (8,), 0, 1)
        capacity = run_case(
            "log-metric",
            run_id,
            target,
            8,
            plan,
            CpuProbe(list(workers), daemon.pid),
            server="Medium",
        )
        rate = capacity.rps * LOAD_SHARE
        print(f"capacity {capacity.rps:.1f} req/s; soaking at {rate:.1f} req/s for {seconds:.0f} s")
        results["capacity_rps"], results["rate_rps"] = capacity.rps, rate
        results["memory_start"] = memory(daemon)
        each_minute = MemoryEachMinute(daemon)
        each_minute.start()
        samples = run_async(open_loop(target, run_id, rate, seconds))
        each_minute.done.set()
        results["memory_end"] = memory(daemon)
        results["pss_each_minute"] = each_minute.samples
        results["minutes"] = per_minute(samples, seconds)
        results["requests"] = len(samples)
        results["errors"] = sum(1 for s in samples if s[2] != 200)
    finish_results(results, started)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = header("Soak: a Medium tracking server at 80 % of its capacity", results)
    lines += [
        "",
        f"Capacity (log-metric, 8 clients): {results['capacity_rps']:.1f} req/s; soaked at "
        f"{results['rate_rps']:.1f} req/s: {results['requests']} requests, "
        f"**{results['errors']} errors**.",
        "",
        "| minute | answered | errors | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['minute']} | {r['answered']} | {r['errors']} | {r['p50_ms']:.1f} ms "
        f"| {r['p99_ms']:.1f} ms |"
        for r in results["minutes"]
    ]
    start, end = results["memory_start"], results["memory_end"]
    lines += ["", "| process | RSS start → end | PSS start → end |", "|---|---|---|"]
    pairs = [("daemon", start["daemon"], end["daemon"])]
    pairs += [
        (f"worker {i}", before, after)
        for i, (before, after) in enumerate(zip(start["workers"], end["workers"], strict=False))
    ]
    lines += [
        f"| {who} | {a[0]:.0f} → {b[0]:.0f} MiB | {a[1]:.0f} → {b[1]:.0f} MiB |"
        for who, a, b in pairs
    ]
    growth = max(b[1] - a[1] for _, a, b in pairs)
    if results.get("pss_each_minute"):
        lines += [
            "",
            "PSS each minute, MiB (daemon / workers together): "
            + ", ".join(
                f"{m['daemon']:.0f}/{m['workers']:.0f}" for m in results["pss_each_minute"]
            ),
        ]
    lines += [
        "",
        f"- zero errors: **{verdict(results['errors'] == 0)}**",
        f"- memory flat (PSS growth at most {FLAT_MIB:.0f} MiB a process; most: {growth:.1f} MiB):"
        f" **{verdict(growth <= FLAT_MIB)}**",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one minute")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args()
    terminate_on_sigterm()
    results = in_temp_dir(
        "mlfleet-bench-soak-", args.keep, lambda d: measure(d, args.quick, args.minutes)
    )
    write_results(args.out, "soak-latest", results, markdown)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
