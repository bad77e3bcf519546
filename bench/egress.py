"""Benchmark a call through the AI gateway and write bench/results/egress-latest.{json,md}.

Run: ``.venv/bin/python bench/egress.py [--quick] [--out bench/results] [--keep]``

One fake OpenAI-compatible provider on loopback (the tests' ``support.fake_llm``), and three
ways to a chat completion from it, measured taking turns call by call:

1. **provider**: the provider itself, straight;
2. **stock**: a gateway endpoint of a stock ``mlflow server`` (one worker, no job runner,
   private provider addresses and plain http allowed, as a user would set it for a local
   provider), which calls the provider directly;
3. **mlfleet**: a gateway endpoint of a Small mlfleet tracking server through the daemon's
   gateway (HTTP Basic), whose worker calls the provider through the egress forwarder and
   proxy (key, tag and address checks, an ``OutboundConnection`` data event per connection).

Each call is one keep-alive ``requests`` session per side; a round measures every side, the
order rotated each round, and the verdict takes the median of the rounds' mlfleet/stock ratios.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import requests
from common import (
    REPO,
    BenchDaemon,
    Plan,
    create_server,
    finish_results,
    header,
    main_of,
    median,
    new_results,
    percentile,
    tracking_url,
    verdict,
)
from stock import StockMlflow

sys.path.insert(0, str(REPO / "tests"))
from support.fake_llm import FakeLlm, gateway_endpoint

SIDES = ("provider", "stock", "mlfleet")
BODY = {"messages": [{"role": "user", "content": "hello"}]}
# Within this the gateway and the proxy cost nothing that matters next to a real provider's
# answer (hundreds of ms): the target is per call, over stock MLflow calling it directly.
TARGET_EXTRA_MS = 10.0


def plan_of(quick: bool) -> Plan:
    rounds = 1 if quick else 5
    return Plan(
        cycles=rounds,
        warmup=0,
        duration=0,
        concurrencies=(1,),
        client_calls=30 if quick else 200,
        target_repeats=rounds,
    )


def timed_calls(session: requests.Session, url: str, calls: int) -> list[float]:
    taken = []
    for _ in range(calls):
        started = time.perf_counter()
        answer = session.post(url, json=BODY, timeout=60)
        taken.append(time.perf_counter() - started)
        answer.raise_for_status()
    return taken


def store_of(url: str, auth: tuple[str, str] | None) -> Any:
    from mlflow.tracking._tracking_service.utils import _get_store

    if auth:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    return _get_store(url)


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    plan = plan_of(quick)
    results = new_results("egress", quick, plan)
    started = time.perf_counter()
    provider = FakeLlm()
    os.environ["MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS"] = "true"
    os.environ["MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES"] = "https,http"
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    stock = StockMlflow(data_dir / "stock")
    daemon = BenchDaemon(
        data_dir / "mlfleet", {"MLFLEET_EGRESS_ALLOW": f"127.0.0.1:{provider.port}"}
    )
    try:
        stock.start()
        daemon.start()
        sm = daemon.sagemaker()
        create_server(sm, "egress", daemon.artifacts)
        base = tracking_url(sm, "egress")
        auth = daemon.credentials()
        endpoints = {
            "stock": gateway_endpoint(store_of(stock.url, None), provider.url, name="bench"),
            "mlfleet": gateway_endpoint(store_of(base, auth), provider.url, name="bench"),
        }
        urls = {
            "provider": f"{provider.url}/chat/completions",
            "stock": f"{stock.url}/gateway/{endpoints['stock']}/mlflow/invocations",
            "mlfleet": f"{base}/gateway/{endpoints['mlfleet']}/mlflow/invocations",
        }
        sessions = {side: requests.Session() for side in SIDES}
        sessions["mlfleet"].auth = auth
        for side in SIDES:
            timed_calls(sessions[side], urls[side], 10)  # warm-up: imports, connections
        rounds = []
        for number in range(plan.cycles):
            order = SIDES[number % 3 :] + SIDES[: number % 3]
            taken = {
                side: sorted(timed_calls(sessions[side], urls[side], plan.client_calls))
                for side in order
            }
            rounds.append(
                {
                    side: {
                        "p50_ms": percentile(taken[side], 0.5) * 1000,
                        "p99_ms": percentile(taken[side], 0.99) * 1000,
                        "calls_per_s": len(taken[side]) / sum(taken[side]),
                    }
                    for side in SIDES
                }
            )
        results["rounds"] = rounds
        extra = [r["mlfleet"]["p50_ms"] - r["stock"]["p50_ms"] for r in rounds]
        results["extra_p50_ms"] = median(extra)
        results["ok"] = results["extra_p50_ms"] <= TARGET_EXTRA_MS
        recorded = daemon.client("cloudtrail").lookup_events(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "OutboundConnection"}]
        )
        results["connections_recorded"] = len(recorded["Events"])
    finally:
        daemon.close()
        stock.close()
        provider.close()
    finish_results(results, started)
    return results


def markdown(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    lines = [
        *header("# mlfleet: a call through the AI gateway and the egress proxy", results),
        "",
        f"{results['plan']['client_calls']} chat completions per side per round, one at a time, "
        "after 10 warm-up calls; the fake provider answers at once, so what is measured is "
        "the path, not a model.",
        "",
        "| round | provider p50 | stock gateway p50 / p99 | mlfleet p50 / p99 "
        "| mlfleet over stock (p50) |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {r['provider']['p50_ms']:.1f} ms | {r['stock']['p50_ms']:.1f} / "
            f"{r['stock']['p99_ms']:.1f} ms | {r['mlfleet']['p50_ms']:.1f} / "
            f"{r['mlfleet']['p99_ms']:.1f} ms "
            f"| {r['mlfleet']['p50_ms'] - r['stock']['p50_ms']:+.1f} ms |"
            for i, r in enumerate(rounds)
        ),
        "",
        f"Median extra per call over stock MLflow calling the provider directly: "
        f"**{results['extra_p50_ms']:+.1f} ms** (target ≤ {TARGET_EXTRA_MS:.0f} ms): "
        f"{verdict(results['ok'])}. The first page of the trail's `OutboundConnection` records "
        f"held {results['connections_recorded']} (keep-alive connections to the provider are "
        "reused by MLflow's client only within one call, so each call is a connection).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main_of(__doc__, "a smoke run: 1 round of 30 calls", "egress", run_benchmark, markdown)
