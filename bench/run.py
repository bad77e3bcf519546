"""Benchmark mlfleet end to end on this machine and write bench/results/latest.{json,md}.

Run: ``.venv/bin/python bench/run.py [--quick] [--out bench/results] [--keep]``

It starts its own daemon (SQLite, temporary data dir, loopback only) and measures:

1. lifecycle: CreateMlflowTrackingServer -> Created, Stop -> Stopped, Start -> Started,
   Delete -> gone, for Small servers (the first, right after the daemon started, may wait for the
   MLflow schema template the daemon builds at start);
2. memory: RSS/PSS of a warmed, idle Small server's MLflow worker(s) and of the daemon;
3. throughput and latency of log-metric and get-run at several concurrencies, direct to the
   MLflow worker (on its Unix socket) and through the gateway, alternating, with CPU per request
   of each party (bench/loadgen.py);
4. the real MLflow client logging one metric per call, direct and through the gateway taking
   turns call by call in one training-loop process (it speaks only http://, so "direct" goes
   through a TCP-to-Unix-socket forwarder in that process: see bench/clients.py), then the
   sagemaker-mlflow plugin (ARN tracking URI) through the gateway;
5. a stock ``mlflow server`` (defaults: 4 uvicorn workers, job execution) started as a user would:
   its idle footprint, log-metric c=1/c=8 and the MLflow client loop, the baseline the issue's
   targets were written against ("direct" above is mlfleet's own lean worker, not this; see
   bench/stock.py);
6. log-metric at c=8 on a Medium server (2 workers) through the gateway.

Then it judges the targets (Created < 10 s, gateway vs direct worker, gateway vs stock) and
writes the report. Every wait and loop is bounded in count and time; the daemon and its workers
are stopped and the data dir removed on any exit (unless ``--keep``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients import client_summary, mlflow_client_rounds, mlflow_client_run
from common import (
    BenchDaemon,
    CpuProbe,
    Plan,
    Target,
    basic_header,
    cmdline,
    create_run,
    create_server,
    delete_server,
    descendants,
    direct_target,
    each,
    errors_seen,
    finish_results,
    main_of,
    median,
    memory_mib,
    new_results,
    ran,
    targets_table,
    timed_transition,
    tracking_url,
    verdict,
    wait_workers,
)
from loadgen import Case, run_case, warm
from stock import bench_stock, stock_markdown, stock_targets


def make_plan(quick: bool) -> Plan:
    """The full run, or ``--quick``: 1 lifecycle cycle, 3 s cases, 100 client calls, no repeats."""
    return Plan(
        cycles=1 if quick else 3,
        warmup=1.0,
        duration=3.0 if quick else 10.0,
        concurrencies=(1, 8, 32),
        client_calls=100 if quick else 500,
        target_repeats=1 if quick else 5,
    )


# ---------------------------------------------------------------------------------------------
# 1. lifecycle


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
# 2. memory


def memory_report(daemon: BenchDaemon, workers: dict[int, Path]) -> dict[str, Any]:
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
# 3. closed-loop load, direct vs gateway


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


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    plan = make_plan(quick)
    results = new_results("bench/run.py", quick, plan)
    started = time.perf_counter()
    with BenchDaemon(data_dir / "daemon") as daemon:
        artifacts = daemon.artifacts
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
    finish_results(results, started)
    results["targets"] = targets(results)
    return results


# ---------------------------------------------------------------------------------------------
# report


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


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    life = results["lifecycle"]
    mem = results["memory_idle"]
    lines = [
        "# mlfleet benchmark",
        "",
        ran(results),
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
        *targets_table(results),
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
            f"| {each(c['rounds'], 'calls_per_s')} |"
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


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    if len(ordered) == 1:
        return f"{median:.2f} s"
    return f"{median:.2f} s [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


def main() -> None:
    main_of(__doc__, "~3 s per case, 1 lifecycle cycle", "", run_benchmark, markdown)


if __name__ == "__main__":
    main()
