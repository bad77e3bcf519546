"""Benchmark serverless tracking servers: warm starts, waking a sleeping server, what idle
servers and MLflow Apps cost; write bench/results/serverless-latest.{json,md}.

Run: ``.venv/bin/python bench/serverless.py [--quick] [--out bench/results] [--keep]``

1. Starts: ``Create -> Created``, ``Stop -> Stopped`` and ``Start -> Started`` of Small servers
   (``starts`` of each, one after the other, a pause between them for the spare to be made
   again), timed by boto3 until Describe shows the outcome: on a daemon with warm starts
   (runtime.warm) and on one with ``MLFLEET_WARM_STARTS=false`` (every worker cold, as before).
2. Wake: a server tagged ``mlfleet:idle-timeout=2s``, ``wakes`` times: once Describe says it
   sleeps (IsActive Inactive, no worker), one MLflow call through the gateway (HTTP Basic,
   ``experiments/search``), timed from sending to answer.
3. Idle cost: ``idle_servers`` servers and ``idle_apps`` Apps, all created with an idle
   timeout (so asleep: no process). Measured: create and list times, the daemon's RSS before
   and after (its growth per sleeping server or App), the worker processes then; then
   ``awake`` of them woken at once by one call each, all answered, and the processes and memory
   with them awake.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import requests
from common import (
    WORKER_MODULE,
    BenchDaemon,
    cmdline,
    create_server,
    descendants,
    finish_results,
    header,
    main_of,
    memory_mib,
    new_results,
    percentile,
    timed_transition,
    worker_sockets,
)

ROLE = "arn:aws:iam::123456789012:role/mlfleet-bench"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "n": len(ordered),
    }


def starts(daemon: BenchDaemon, count: int) -> dict[str, Any]:
    sm = daemon.sagemaker()
    created, stopped, started = [], [], []
    time.sleep(8)  # the daemon's first spare imports MLflow
    for number in range(count):
        name = f"start-{number}"
        created.append(create_server(sm, name, daemon.artifacts))
        time.sleep(4)  # the next spare
        stopped.append(
            timed_transition(
                sm,
                name,
                lambda n=name: sm.stop_mlflow_tracking_server(TrackingServerName=n),
                "Stopped",
            )
        )
        started.append(
            timed_transition(
                sm,
                name,
                lambda n=name: sm.start_mlflow_tracking_server(TrackingServerName=n),
                "Started",
            )
        )
        time.sleep(4)
        sm.delete_mlflow_tracking_server(TrackingServerName=name)
    return {"create": summary(created), "stop": summary(stopped), "start": summary(started)}


def asleep(sm: Any, data_dir: Path, name: str) -> bool:
    described = sm.describe_mlflow_tracking_server(TrackingServerName=name)
    return described["IsActive"] == "Inactive" and not worker_sockets(data_dir)


def wakes(daemon: BenchDaemon, count: int) -> dict[str, Any]:
    sm = daemon.sagemaker()
    name = "sleepy"
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{daemon.artifacts / name}",
        RoleArn=ROLE,
        Tags=[{"Key": "mlfleet:idle-timeout", "Value": "2s"}],
    )
    url = sm.describe_mlflow_tracking_server(TrackingServerName=name)["TrackingServerUrl"]
    auth = daemon.credentials()
    seconds = []
    for _ in range(count):
        deadline = time.monotonic() + 120
        while not asleep(sm, daemon.data_dir, name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not fall asleep")
            time.sleep(0.2)
        time.sleep(4)  # the spare made after the last wake is ready
        sent = time.perf_counter()
        answer = requests.get(url + SEARCH, auth=auth, timeout=120)
        seconds.append(time.perf_counter() - sent)
        if answer.status_code != 200:
            raise RuntimeError(f"the waking call answered {answer.status_code}: {answer.text}")
    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    return summary(seconds)


def processes_of(daemon: BenchDaemon) -> dict[str, float]:
    """The daemon's RSS, and its MLflow worker processes (spares included) with their PSS:
    the Python processes, not the sandboxes around them."""
    rss, _ = memory_mib(daemon.pid)
    workers = [p for p in descendants(daemon.pid) if cmdline(p)[1:3] == ["-m", WORKER_MODULE]]
    return {
        "daemon_rss_mib": rss,
        "worker_processes": len(workers),
        "workers_pss_mib": sum(memory_mib(p)[1] for p in workers),
    }


def idle_costs(daemon: BenchDaemon, servers: int, apps: int, awake: int) -> dict[str, Any]:
    sm = daemon.sagemaker()
    time.sleep(8)
    before = processes_of(daemon)
    tags = [{"Key": "mlfleet:idle-timeout", "Value": "10m"}]
    creating = time.perf_counter()
    names = [f"idle-{n:04d}" for n in range(servers)]
    for name in names:
        sm.create_mlflow_tracking_server(
            TrackingServerName=name,
            ArtifactStoreUri=f"file://{daemon.artifacts / name}",
            RoleArn=ROLE,
            Tags=tags,
        )
    app_arns = [
        sm.create_mlflow_app(
            Name=f"app-{n}",
            ArtifactStoreUri=f"s3://bench-bucket/app-{n}",
            RoleArn=ROLE,
        )["Arn"]
        for n in range(apps)
    ]
    created_calls = time.perf_counter() - creating

    def all_created() -> bool:
        listed = listing(sm)
        return sum(1 for s in listed if s["TrackingServerStatus"] == "Created") == servers

    while not all_created():
        time.sleep(1)
    created = time.perf_counter() - creating
    listing_started = time.perf_counter()
    listed = listing(sm)
    list_seconds = time.perf_counter() - listing_started
    time.sleep(2)
    idle = processes_of(daemon)
    # Wake ``awake`` of them at once: one call each.
    url = daemon.url
    auth = daemon.credentials()

    def call(name: str) -> tuple[int, float]:
        sent = time.perf_counter()
        answer = requests.get(f"{url}/mlflow/{name}{SEARCH}", auth=auth, timeout=300)
        return answer.status_code, time.perf_counter() - sent

    woke = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(awake) as pool:
        answers = list(pool.map(call, names[:awake]))
    wake_all = time.perf_counter() - woke
    time.sleep(2)
    with_awake = processes_of(daemon)
    return {
        "servers": servers,
        "apps": apps,
        "listed": len(listed),
        "create_calls_s": created_calls,
        "all_created_s": created,
        "list_all_s": list_seconds,
        "before": before,
        "idle": idle,
        "daemon_kib_per_sleeping": (idle["daemon_rss_mib"] - before["daemon_rss_mib"])
        * 1024
        / (servers + apps),
        "awake": awake,
        "awake_answers": [code for code, _ in answers],
        "awake_latency": summary([s for _, s in answers]),
        "wake_all_s": wake_all,
        "with_awake": with_awake,
        "app_arns": len(app_arns),
    }


def listing(sm: Any) -> list[dict[str, Any]]:
    pages = sm.get_paginator("list_mlflow_tracking_servers").paginate(
        PaginationConfig={"PageSize": 100}
    )
    return [s for page in pages for s in page["TrackingServerSummaries"]]


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    count, wake_count = (3, 3) if quick else (10, 10)
    servers, apps, awake = (50, 10, 5) if quick else (1000, 100, 20)
    results = new_results("bench/serverless.py", quick)
    results["plan"] = {
        "starts": count,
        "wakes": wake_count,
        "idle_servers": servers,
        "idle_apps": apps,
        "awake": awake,
    }
    started = time.perf_counter()
    with BenchDaemon(data_dir / "cold", {"MLFLEET_WARM_STARTS": "false"}) as cold:
        cold.start()
        results["cold"] = starts(cold, count)
    with BenchDaemon(data_dir / "warm") as warm:
        warm.start()
        results["warm"] = starts(warm, count)
        results["wake"] = wakes(warm, wake_count)
    with BenchDaemon(data_dir / "idle") as idle:
        idle.start()
        results["idle"] = idle_costs(idle, servers, apps, awake)
    finish_results(results, started)
    return results


def markdown(results: dict[str, Any]) -> str:
    cold, warm, wake, idle = results["cold"], results["warm"], results["wake"], results["idle"]

    def row(what: str, figures: dict[str, float], target: str) -> str:
        return (
            f"| {what} | {figures['p50']:.2f} s | {figures['p99']:.2f} s | {figures['max']:.2f} s "
            f"| {int(figures['n'])} | {target} |"
        )

    return "\n".join(
        [
            *header("# mlfleet: serverless tracking servers", results),
            "",
            "| step | p50 | p99 | max | n | target |",
            "|---|---|---|---|---|---|",
            row("Create → Created, warm", warm["create"], "≤ 1 s (p50)"),
            row("Create → Created, cold (warm starts off)", cold["create"], ""),
            row("Start → Started, warm", warm["start"], "≤ 1 s (p50)"),
            row("Start → Started, cold", cold["start"], ""),
            row("Stop → Stopped, warm", warm["stop"], ""),
            row("a call that wakes a sleeping server, until answered", wake, "≤ 1 s (p50, p99)"),
            "",
            f"Idle: {idle['servers']} servers and {idle['apps']} MLflow Apps, all asleep: created "
            f"(calls) in {idle['create_calls_s']:.1f} s, all Created after "
            f"{idle['all_created_s']:.1f} s; all {idle['listed']} servers listed in "
            f"{idle['list_all_s']:.2f} s. Daemon RSS {idle['before']['daemon_rss_mib']:.0f} → "
            f"{idle['idle']['daemon_rss_mib']:.0f} MiB: "
            f"**{idle['daemon_kib_per_sleeping']:.0f} KiB per sleeping server or App** "
            "(target ≤ 1 MiB); worker processes while all sleep: "
            f"**{idle['idle']['worker_processes']}** (the spare), target 0 per server.",
            "",
            f"{idle['awake']} of them woken at once, one call each: answers "
            f"{sorted(set(idle['awake_answers']))}, the last after {idle['wake_all_s']:.1f} s "
            f"(p50 {idle['awake_latency']['p50']:.1f} s); then "
            f"{idle['with_awake']['worker_processes']} worker processes, "
            f"{idle['with_awake']['workers_pss_mib']:.0f} MiB PSS, daemon RSS "
            f"{idle['with_awake']['daemon_rss_mib']:.0f} MiB.",
            "",
        ]
    )


if __name__ == "__main__":
    main_of(
        __doc__,
        "a smoke run: 3 starts and wakes, 50 idle servers and 10 Apps",
        "serverless",
        run_benchmark,
        markdown,
    )
