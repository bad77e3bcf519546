"""Benchmark what the sandbox costs and write bench/results/sandbox-latest.{json,md}.

Run: ``.venv/bin/python bench/sandbox.py [--quick] [--out bench/results] [--keep]``

Two daemons built the same way (copies of one data dir, so they share the admin key), one
confining its MLflow workers with bubblewrap and one whose PATH lacks ``bwrap`` (so it runs them
unconfined, which its /health must say), measured taking turns:

1. CreateMlflowTrackingServer -> Created of a Small server with a file: store (Describe polled
   every 50 ms), then Delete, and wait until its worker is gone; the first create of each daemon
   (right after it started) is reported apart;
2. the real MLflow client logging one metric per call through the gateway (HTTP Basic with the
   admin key), bench/clients.py's training-loop process, a fresh one per run, taking turns
   between the two daemons call by call;
3. log-metric at concurrency 8 through the gateway on a Medium server (2 workers).

Each round measures both daemons back to back, the order swapped every round, and the verdicts
use the median of the rounds' confined/unconfined ratios: on a shared 2-core box the machine's
speed drifts between minutes by more than the 5 % judged here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from clients import client_summary, mlflow_client_run
from common import (
    BenchDaemon,
    CpuProbe,
    Plan,
    Target,
    basic_header,
    create_run,
    create_server,
    delete_server,
    each,
    errors_seen,
    finish_results,
    header,
    loadavg,
    main_of,
    median,
    new_results,
    percentile,
    targets_table,
    tracking_url,
    verdict,
    wait_workers,
)
from loadgen import run_case, warm

SIDES = ("confined", "unconfined")
# The bar: the sandbox costs the training-loop client and Create -> Created at most 5 %.
MAX_COST = 0.05


def make_plan(quick: bool) -> Plan:
    """``cycles``: creates per daemon after its first; ``target_repeats``: rounds of the client
    loop and of the Medium case."""
    return Plan(
        cycles=2 if quick else 11,
        warmup=1.0,
        duration=3.0 if quick else 10.0,
        concurrencies=(8,),
        client_calls=100 if quick else 500,
        target_repeats=1 if quick else 7,
    )


def turn(index: int) -> tuple[str, ...]:
    """Which daemon goes first in round ``index``: swapped every round."""
    return SIDES if index % 2 == 0 else SIDES[::-1]


def path_without(tool: str, farm: Path) -> str:
    """PATH with each folder that holds ``tool`` replaced by a folder of links to its other
    commands: the daemon finds everything it would find, except ``tool``."""
    entries = []
    for index, entry in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        folder = Path(entry)
        if not (folder / tool).exists():
            entries.append(entry)
            continue
        mirror = farm / str(index)
        mirror.mkdir(parents=True)
        for command in folder.iterdir():
            if command.name != tool:
                (mirror / command.name).symlink_to(command)
        entries.append(str(mirror))
    return os.pathsep.join(entries)


def prepare_daemons(data_dir: Path) -> dict[str, BenchDaemon]:
    """Both daemons, not started yet. Their data dirs are copies of one that a daemon started
    in and left: the same admin key (so one client process can take turns between them) and
    the same schema template."""
    seed = BenchDaemon(data_dir / "seed")
    print(f"seed: starting mlfleet in {seed.data_dir} ...", flush=True)
    try:
        seed.start()
    finally:
        seed.close()
    for side in SIDES:
        shutil.copytree(
            seed.data_dir, data_dir / side, ignore=shutil.ignore_patterns("*.out", "*.log")
        )
    path = path_without("bwrap", data_dir / "path-without-bwrap")
    return {
        "confined": BenchDaemon(data_dir / "confined"),
        "unconfined": BenchDaemon(data_dir / "unconfined", {"PATH": path}),
    }


def start_daemons(daemons: dict[str, BenchDaemon]) -> None:
    """Start both and check them: /health must say which one confines."""
    for side, daemon in daemons.items():
        print(f"{side}: starting mlfleet in {daemon.data_dir} ...", flush=True)
        daemon.start()
        confined = sandbox_of(daemon).get("confined")
        if confined != (side == "confined"):
            raise RuntimeError(f"{side} daemon: /health says confined = {confined}")


def sandbox_of(daemon: BenchDaemon) -> dict[str, Any]:
    health = requests.get(f"{daemon.url}/health", timeout=10)
    health.raise_for_status()
    return dict(health.json()["sandbox"])


# ---------------------------------------------------------------------------------------------
# 1. Create -> Created


def create_rounds(daemons: dict[str, BenchDaemon], plan: Plan) -> dict[str, Any]:
    """``cycles`` + 1 rounds of create and delete on each daemon in turn."""
    clients = {side: daemon.sagemaker() for side, daemon in daemons.items()}
    rounds: list[dict[str, Any]] = []
    for index in range(plan.cycles + 1):
        row: dict[str, Any] = {"loadavg_1m": float(loadavg()[0])}
        for side in turn(index):
            daemon, name = daemons[side], f"sbx-create-{index}"
            row[side] = create_server(clients[side], name, daemon.artifacts)
            delete_server(clients[side], name)
            wait_workers(daemon.data_dir, 0)  # its worker gone before the next create
        row["ratio"] = row["confined"] / row["unconfined"]
        print(
            f"  create {index}: confined {row['confined']:.2f} s, unconfined "
            f"{row['unconfined']:.2f} s (load {row['loadavg_1m']:.2f})",
            flush=True,
        )
        rounds.append(row)
    later = rounds[1:]
    out: dict[str, Any] = {"rounds": rounds, "ratios": [r["ratio"] for r in later]}
    for side in SIDES:
        times = sorted(r[side] for r in later)
        out[side] = {
            "first_s": rounds[0][side],
            "n": len(times),
            "p50_s": percentile(times, 0.5),
            "p90_s": percentile(times, 0.9),
        }
    out["ratio"] = median(out["ratios"])
    return out


# ---------------------------------------------------------------------------------------------
# 2. and 3. through the gateway


@dataclass
class Server:
    """A tracking server of one daemon, ready to measure."""

    daemon: BenchDaemon
    target: Target
    run_id: str
    probe: CpuProbe
    create_s: float


def ready_server(side: str, daemon: BenchDaemon, name: str, size: str, workers: int) -> Server:
    sm = daemon.sagemaker()
    created = create_server(sm, name, daemon.artifacts, size=size)
    pids = wait_workers(daemon.data_dir, workers)
    target = Target(side, tracking_url(sm, name), basic_header(*daemon.credentials()))
    run_id = create_run(target)
    warm([target], run_id)
    return Server(daemon, target, run_id, CpuProbe(list(pids), daemon.pid), created)


def drop_server(server: Server, name: str) -> None:
    delete_server(server.daemon.sagemaker(), name)
    wait_workers(server.daemon.data_dir, 0)


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def client_round(
    servers: dict[str, Server], order: tuple[str, ...], calls: int
) -> list[dict[str, Any]]:
    """One training-loop process taking turns between the daemons call by call, with the CPU
    each daemon and its worker used per call and the load of everything else."""
    probes = {side: servers[side].probe for side in order}
    before = children_cpu()
    for probe in probes.values():
        probe.begin()
    results = mlflow_client_run(
        {side: servers[side].target.base for side in order},
        [servers[side].run_id for side in order],
        calls,
        servers[order[0]].daemon.credentials(),
    )
    spent = {side: probe.end() for side, probe in probes.items()}
    # Everything else: the machine's busy time less both daemons, their workers, this process
    # and the training-loop process (its start-up included).
    ours = sum(cpu["worker"] + cpu["gateway"] for cpu in spent.values())
    ours += spent[order[0]]["client"] + children_cpu() - before
    wall = spent[order[0]]["wall"]
    for result in results:
        cpu, sent = spent[result["mode"]], result["calls"] + 5  # its warm-up calls too
        result["worker_cpu_ms_per_call"] = cpu["worker"] * 1000 / sent
        result["gateway_cpu_ms_per_call"] = cpu["gateway"] * 1000 / sent
        result["foreign_cores"] = max(0.0, spent[order[0]]["machine"] - ours) / wall
    return results


def client_rounds(servers: dict[str, Server], plan: Plan) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for index in range(plan.target_repeats):
        for result in client_round(servers, turn(index), plan.client_calls):
            runs[result["mode"]].append(result)
    pairs = list(zip(runs["confined"], runs["unconfined"], strict=True))
    # Time per call, confined over unconfined, in each run (both in the same process).
    ratios = [u["calls_per_s"] / c["calls_per_s"] for c, u in pairs]
    worker_cpu = [c["worker_cpu_ms_per_call"] / u["worker_cpu_ms_per_call"] for c, u in pairs]
    return {
        "modes": {side: client_summary(side, runs[side]) for side in SIDES},
        "ratios": ratios,
        "ratio": median(ratios),
        "worker_cpu_ratios": worker_cpu,
        "worker_cpu_ratio": median(worker_cpu),
    }


def medium_rounds(servers: dict[str, Server], plan: Plan) -> dict[str, Any]:
    cases: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for index in range(plan.target_repeats):
        for side in turn(index):
            s = servers[side]
            case = run_case("log-metric", s.run_id, s.target, 8, plan, s.probe, "Medium")
            case.repeat = index + 1
            cases[side].append(asdict(case))
    # Time per request (1 / throughput), confined over unconfined, each round's pair.
    ratios = [
        u["rps"] / c["rps"] if c["rps"] else float("nan")
        for c, u in zip(cases["confined"], cases["unconfined"], strict=True)
    ]
    return {
        "create_s": {side: servers[side].create_s for side in SIDES},
        "cases": [c for pair in zip(*cases.values(), strict=True) for c in pair],
        "ratios": ratios,
        "ratio": median(ratios),
    }


def on_servers(
    daemons: dict[str, BenchDaemon], name: str, size: str, workers: int
) -> dict[str, Server]:
    return {side: ready_server(side, daemons[side], name, size, workers) for side in SIDES}


# ---------------------------------------------------------------------------------------------
# the run and its report


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    plan = make_plan(quick)
    results = new_results("bench/sandbox.py", quick, plan)
    started = time.perf_counter()
    daemons = prepare_daemons(data_dir)
    try:
        start_daemons(daemons)
        results["daemons"] = {
            side: {"startup_s": d.startup_seconds, "sandbox": sandbox_of(d)}
            for side, d in daemons.items()
        }
        print(f"Create -> Created, {plan.cycles + 1} rounds ...", flush=True)
        results["create"] = create_rounds(daemons, plan)

        print("MLflow client through the gateway, one call at a time ...", flush=True)
        small = on_servers(daemons, "bench-small", "Small", 1)
        results["client"] = client_rounds(small, plan)
        for server in small.values():
            drop_server(server, "bench-small")

        print("Medium server, log-metric c=8 through the gateway ...", flush=True)
        medium = on_servers(daemons, "bench-medium", "Medium", 2)
        results["medium"] = medium_rounds(medium, plan)
    except BaseException:
        for side, daemon in daemons.items():
            print(f"{side} daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
        raise
    finally:
        for daemon in daemons.values():
            daemon.close()
    finish_results(results, started)
    results["targets"] = targets(results)
    return results


def _cost(ratio: float) -> str:
    return f"{ratio - 1:+.1%}"


def _ratios(ratios: list[float]) -> str:
    return ", ".join(_cost(r) for r in ratios)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    create, client = results["create"], results["client"]
    modes = client["modes"]
    return [
        {
            "target": "Create → Created: the sandbox costs at most 5 %",
            "value": f"{_cost(create['ratio'])} (median of {len(create['ratios'])} paired "
            f"rounds); p50 {create['confined']['p50_s']:.2f} vs "
            f"{create['unconfined']['p50_s']:.2f} s",
            "verdict": verdict(create["ratio"] <= 1 + MAX_COST),
        },
        {
            "target": "MLflow client one call at a time: the sandbox costs at most 5 %",
            "value": f"{_cost(client['ratio'])} time per call (median of "
            f"{len(client['ratios'])} paired runs); {modes['confined']['calls_per_s']:.1f} vs "
            f"{modes['unconfined']['calls_per_s']:.1f} calls/s",
            "verdict": verdict(client["ratio"] <= 1 + MAX_COST),
        },
    ]


def markdown(results: dict[str, Any]) -> str:
    create, client, medium = results["create"], results["client"], results["medium"]
    health = results["daemons"]
    lines = [
        *header("# mlfleet: what the sandbox costs", results),
        "",
        "Two daemons built the same way (SQLite, loopback, each in a copy of one data dir that "
        "a daemon started in, so they share the admin key and the schema template), both up "
        "for the whole run: **confined** runs its MLflow workers under bubblewrap "
        f"(/health: `{json.dumps(health['confined']['sandbox'])}`), **unconfined** has a PATH "
        "whose folders holding `bwrap` are replaced by links to their other commands, so it "
        f"runs them unconfined (/health: `{json.dumps(health['unconfined']['sandbox'])}`). "
        "Both serve their workers on Unix sockets. Every round measures both back to back (the "
        "client: call by call), the order swapped each round; a cost is confined over "
        "unconfined minus 1 in time (per create, per call, per request), and the verdicts take "
        "the median of the rounds' ratios, which the machine's drift between minutes touches "
        "less than the medians of each side.",
        "",
        *targets_table(results),
        "",
        "## Create → Created (Small, file: store; Describe polled every 50 ms)",
        "",
        "Each create is followed by its delete and a wait until its worker is gone.",
        "",
        "| | first create (after start) | p50 | p90 | n |",
        "|---|---|---|---|---|",
        *(
            f"| {side} | {create[side]['first_s']:.2f} s | {create[side]['p50_s']:.2f} s "
            f"| {create[side]['p90_s']:.2f} s | {create[side]['n']} |"
            for side in SIDES
        ),
        "",
        f"Cost per round (first excluded): {_ratios(create['ratios'])}; median "
        f"**{_cost(create['ratio'])}**. Load average (1 min) at each round: "
        f"{each(create['rounds'], 'loadavg_1m')}.",
        "",
        f"## MLflow client, one `log_metric` call at a time through the gateway "
        f"({results['plan']['client_calls']} calls per run after 5 warm-up calls)",
        "",
        "One training-loop process per run, with a client for each daemon, taking turns call "
        "by call (the order swapped every call), HTTP Basic with the shared admin key. After its "
        "first call the gateway hands the connection to the worker, so these calls are served "
        "by the (confined or not) worker itself. CPU per call includes the 5 warm-up calls. "
        "Other load: cores used during the run by everything but the two daemons, their "
        "workers, the training-loop process and this benchmark.",
        "",
        "| | calls/s (median) | p50 ms | p99 ms | calls/s of each run "
        "| worker CPU/call ms | gateway CPU/call ms | other load |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {side} | {c['calls_per_s']:.1f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} "
            f"| {each(c['rounds'], 'calls_per_s')} "
            f"| {each(c['rounds'], 'worker_cpu_ms_per_call')} "
            f"| {each(c['rounds'], 'gateway_cpu_ms_per_call')} "
            f"| {each(c['rounds'], 'foreign_cores')} |"
            for side, c in client["modes"].items()
        ),
        "",
        f"Cost per paired run (time per call): {_ratios(client['ratios'])}; median "
        f"**{_cost(client['ratio'])}**. The worker's CPU per call, confined over unconfined: "
        f"{_ratios(client['worker_cpu_ratios'])}; median {_cost(client['worker_cpu_ratio'])}.",
        "",
        "## Medium server (2 workers), log-metric c=8 through the gateway "
        f"({results['plan']['warmup']:.0f} s warm-up + {results['plan']['duration']:.0f} s "
        "per case, aiohttp closed loop)",
        "",
        f"Create → Created: confined {medium['create_s']['confined']:.2f} s, unconfined "
        f"{medium['create_s']['unconfined']:.2f} s.",
        "",
        "| round | side | req/s | p50 / p99 ms | errors | CPU/req workers / gw ms | other load |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c['repeat']} | {c['mode']} | {c['rps']:.1f} | {c['p50_ms']:.1f} / "
            f"{c['p99_ms']:.1f} | {c['errors']} | {c['cpu_ms_per_request']['worker']:.1f} / "
            f"{c['cpu_ms_per_request']['gateway']:.1f} | {c['foreign_cores']:.2f} |"
            for c in medium["cases"]
        ),
        "",
        f"Cost per round (time per request): {_ratios(medium['ratios'])}; median "
        f"**{_cost(medium['ratio'])}**.",
    ]
    lines += errors_seen(medium["cases"], lambda c: f"Medium c=8 {c['mode']} #{c['repeat']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    main_of(__doc__, "a smoke run: 3 creates and 1 round each", "sandbox", run_benchmark, markdown)


if __name__ == "__main__":
    main()
