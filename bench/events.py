"""Benchmark what events and audit data events cost; write bench/results/events-latest.{json,md}.

Run: ``.venv/bin/python bench/events.py [--quick] [--out bench/results] [--keep]``

One daemon (SQLite, temporary data dir, loopback only) and, in this process, an aiohttp receiver
on 127.0.0.1 (its own thread and uvloop event loop) that the rules' API destinations POST to:

1. PutEvents to a local HTTP target: one rule matching this benchmark's source, whose one target
   is an API destination (API_KEY connection) pointing at the receiver.
   (a) one event at a time: PutEvents with one entry, wait for its delivery, again: the delivery
       lag of an idle pipeline;
   (b) a burst: N events in PutEvents calls of 10 entries from a few threads, each with its own
       boto3 events client: PutEvents latency, accepted events/s, delivered events/s (first call
       to last delivery) and delivery lag (the receiver's clock minus a send time in Detail).
2. What audit and events add to a gateway write: two Small servers in the same daemon. "on"
   keeps data events on (the default) and has a rule routing its MLflow events to the receiver;
   "off" is tagged mlfleet:data-events=off and no rule matches it. Closed-loop create-run (a data
   event and an EventBridge event) and log-metric (a data event only) at c=1 and c=8, on and off
   alternating round by round (bench/loadgen.py's on/off matrix), medians of the rounds. An
   "on" case ends only once the receiver has every event it caused, so delivery is inside its
   figures.

The daemon handling and report helpers come from bench/common.py, the load generator and the
on/off matrix from bench/loadgen.py. Every wait is bounded; the daemon, its workers and the
data dir go on any exit (unless ``--keep``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError
from common import (
    REQUEST_TIMEOUT,
    BenchDaemon,
    CpuProbe,
    Plan,
    Target,
    basic_header,
    create_run,
    create_server,
    errors_seen,
    finish_results,
    free_port,
    header,
    main_of,
    median,
    new_results,
    percentile,
    span,
    tracking_url,
    wait_workers,
)
from loadgen import Side, on_off_matrix, on_off_rows, on_off_table, run_async, warm

SOURCE = "mlfleet.bench"
API_KEY = "bench-receiver-key-0123456789"
BATCH = 10  # PutEvents' limit
# An MLflow event's detail-type starts with this (sources.MLFLOW_DETAIL_TYPES).
MLFLOW_EVENTS = "SageMaker MLFlow Tracking Server"
CREATING_RUN = MLFLOW_EVENTS + " Creating Run"
DELIVERY_TIMEOUT = 30.0  # one event, or the tail of a case, to reach the receiver
BURST_DELIVERY_TIMEOUT = 300.0


@dataclass(frozen=True)
class EventsPlan:
    one_at_a_time: int  # events sent and waited for one by one
    burst: int  # events in the burst
    senders: int  # threads, each with its own boto3 client

    @staticmethod
    def make(quick: bool) -> EventsPlan:
        if quick:
            return EventsPlan(one_at_a_time=30, burst=1_000, senders=4)
        return EventsPlan(one_at_a_time=200, burst=6_000, senders=4)


def gateway_plan(quick: bool) -> Plan:
    """The cases through the gateway; ``target_repeats`` is the number of on/off rounds each."""
    return Plan(
        cycles=0,
        warmup=0.5 if quick else 1.0,
        duration=2.0 if quick else 5.0,
        concurrencies=(1, 8),
        client_calls=0,
        target_repeats=1 if quick else 5,
    )


# ---------------------------------------------------------------------------------------------
# the receiver


class Receiver:
    """``POST /hook`` on 127.0.0.1 in its own thread and event loop; notes (arrival, body) of
    every request and answers 200 at once. Parsing is left to whoever reads ``arrivals``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.arrivals: list[tuple[float, bytes]] = []
        self.arrived = threading.Condition()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        with self.arrived:
            self.arrivals.append((now, body))
            self.arrived.notify_all()
        return web.Response()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def start(self) -> Receiver:
        self._thread = threading.Thread(
            target=run_async, args=(self._serve(),), name="receiver", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def count(self) -> int:
        with self.arrived:
            return len(self.arrivals)

    def wait_count(self, count: int, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.arrivals) >= count, timeout)

    def wait_marker(self, marker: str, first: int, timeout: float) -> int | None:
        """The index of the first arrival from ``first`` on that contains ``marker``."""
        needle = marker.encode()
        cursor = first
        found: list[int] = []

        def seen() -> bool:
            nonlocal cursor
            for i in range(cursor, len(self.arrivals)):
                if needle in self.arrivals[i][1]:
                    found.append(i)
                    return True
            cursor = len(self.arrivals)
            return False

        with self.arrived:
            self.arrived.wait_for(seen, timeout)
        return found[0] if found else None


def api_destination(events: Any, receiver: Receiver) -> str:
    """An API destination (API_KEY connection) pointing at the receiver; returns its ARN."""
    connection = events.create_connection(
        Name="bench-receiver",
        AuthorizationType="API_KEY",
        AuthParameters={
            "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": API_KEY}
        },
    )
    return str(
        events.create_api_destination(
            Name="bench-receiver",
            ConnectionArn=connection["ConnectionArn"],
            InvocationEndpoint=receiver.url,
            HttpMethod="POST",
        )["ApiDestinationArn"]
    )


def route(events: Any, rule: str, pattern: dict[str, Any], destination: str) -> None:
    events.put_rule(Name=rule, EventPattern=json.dumps(pattern))
    put = events.put_targets(Rule=rule, Targets=[{"Id": "receiver", "Arn": destination}])
    if put["FailedEntryCount"]:
        raise RuntimeError(f"PutTargets failed: {put}")


# ---------------------------------------------------------------------------------------------
# 1. PutEvents to a local HTTP target


def entries(first_seq: int, count: int) -> list[dict[str, str]]:
    sent_at = time.time()
    return [
        {
            "Source": SOURCE,
            "DetailType": "bench",
            "Detail": json.dumps({"seq": first_seq + i, "sent_at": sent_at}),
        }
        for i in range(count)
    ]


def ms_stats(seconds: list[float], prefix: str) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        f"{prefix}_p50_ms": percentile(ordered, 0.50) * 1000,
        f"{prefix}_p99_ms": percentile(ordered, 0.99) * 1000,
        f"{prefix}_max_ms": (ordered[-1] if ordered else float("nan")) * 1000,
    }


def one_at_a_time(events: Any, receiver: Receiver, count: int) -> dict[str, Any]:
    """PutEvents with one entry, wait for its delivery, ``count`` times."""
    calls, lags = [], []
    for seq in range(count):
        first = receiver.count()
        started = time.perf_counter()
        put = events.put_events(Entries=entries(seq, 1))
        calls.append(time.perf_counter() - started)
        if put["FailedEntryCount"] or not receiver.wait_count(first + 1, DELIVERY_TIMEOUT):
            raise RuntimeError(f"event {seq} not delivered within {DELIVERY_TIMEOUT:.0f} s: {put}")
        arrived, body = receiver.arrivals[first]
        lags.append(arrived - json.loads(body)["detail"]["sent_at"])
    return {"events": count, **ms_stats(calls, "put"), **ms_stats(lags, "lag")}


def _send(client: Any, batches: range) -> list[tuple[float, float, int, str | None]]:
    """One sender thread: (start, end, failed entries, error) of each PutEvents call."""
    out = []
    for batch in batches:
        body = entries(batch * BATCH, BATCH)
        started = time.perf_counter()
        try:
            failed, error = int(client.put_events(Entries=body)["FailedEntryCount"]), None
        except (ClientError, BotoCoreError) as exc:
            failed, error = BATCH, repr(exc)[:200]
        out.append((started, time.perf_counter(), failed, error))
    return out


def burst(clients: list[Any], receiver: Receiver, total: int, probe: CpuProbe) -> dict[str, Any]:
    """``total`` events in calls of 10 from ``len(clients)`` threads, then every delivery."""
    batches = total // BATCH
    first = receiver.count()
    probe.begin()
    wall_start, perf_start = time.time(), time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        shares = [range(k, batches, len(clients)) for k in range(len(clients))]
        calls = [c for mine in pool.map(_send, clients, shares) for c in mine]
    put_seconds = time.perf_counter() - perf_start
    cpu_put = probe.end()
    failed = sum(c[2] for c in calls)
    accepted = batches * BATCH - failed
    probe.begin()
    complete = receiver.wait_count(first + accepted, BURST_DELIVERY_TIMEOUT)
    cpu_drain = probe.end()
    arrivals = receiver.arrivals[first:]
    seen: set[int] = set()
    lags = []
    for arrived, body in arrivals:
        detail = json.loads(body)["detail"]
        seen.add(detail["seq"])
        lags.append(arrived - detail["sent_at"])
    last = arrivals[-1][0] if arrivals else wall_start
    times = [a[0] for a in arrivals]
    half = len(times) // 2
    cpu_total = {k: cpu_put[k] + cpu_drain[k] for k in ("gateway", "client")}
    return {
        "events": batches * BATCH,
        "senders": len(clients),
        "calls": len(calls),
        "failed_entries": failed,
        "error_sample": next((c[3] for c in calls if c[3]), None),
        **ms_stats([c[1] - c[0] for c in calls], "put"),
        "put_seconds": put_seconds,
        "accepted_per_s": accepted / put_seconds,
        "calls_per_s": len(calls) / put_seconds,
        "delivered": len(seen),
        "duplicates": len(arrivals) - len(seen),
        "complete": complete,
        "first_put_to_last_delivery_s": last - wall_start,
        "delivered_per_s": len(seen) / max(last - wall_start, 1e-9),
        # The worker's own pace, once it has a queue: first delivery to last, and each half of
        # the deliveries (the queue is long in the first, short in the second).
        "delivery_only_per_s": pace(times),
        "delivery_first_half_per_s": pace(times[:half]),
        "delivery_second_half_per_s": pace(times[half:]),
        "backlog_after_puts": accepted
        - sum(1 for a in arrivals if a[0] <= wall_start + put_seconds),
        **ms_stats(lags, "lag"),
        "daemon_cpu_ms_per_call_put_phase": cpu_put["gateway"] * 1000 / max(len(calls), 1),
        "client_cpu_ms_per_call": cpu_put["client"] * 1000 / max(len(calls), 1),
        "daemon_cpu_ms_per_event": cpu_total["gateway"] * 1000 / max(accepted, 1),
        "daemon_cores_put_phase": cpu_put["gateway"] / max(cpu_put["wall"], 1e-9),
        "daemon_cores_drain_phase": cpu_drain["gateway"] / max(cpu_drain["wall"], 1e-9),
        "drain_phase_s": cpu_drain["wall"],
        "foreign_cores": cpu_put["foreign_cores"],
    }


def pace(times: list[float]) -> float:
    """Deliveries per second between the first and the last of ``times``."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def put_events_benchmark(
    daemon: BenchDaemon, receiver: Receiver, destination: str, plan: EventsPlan
) -> dict[str, Any]:
    events = daemon.client("events")
    rule = "bench-put-events"
    route(events, rule, {"source": [SOURCE]}, destination)
    print(f"PutEvents one at a time, {plan.one_at_a_time} events ...", flush=True)
    single = one_at_a_time(events, receiver, plan.one_at_a_time)
    print(
        f"  PutEvents p50 {single['put_p50_ms']:.1f} ms, delivery lag p50 "
        f"{single['lag_p50_ms']:.1f} ms p99 {single['lag_p99_ms']:.1f} ms",
        flush=True,
    )
    print(f"PutEvents burst, {plan.burst} events from {plan.senders} threads ...", flush=True)
    clients = [daemon.client("events") for _ in range(plan.senders)]
    many = burst(clients, receiver, plan.burst, CpuProbe([], daemon.pid))
    print(
        f"  accepted {many['accepted_per_s']:.0f} events/s (PutEvents p50 {many['put_p50_ms']:.1f}"
        f" p99 {many['put_p99_ms']:.1f} ms), delivered {many['delivered']} at "
        f"{many['delivered_per_s']:.0f} events/s end to end, lag p50 {many['lag_p50_ms']:.0f} ms "
        f"p99 {many['lag_p99_ms']:.0f} ms",
        flush=True,
    )
    # Part 2 has its own rule; this one goes so that it is not matched against every event.
    events.remove_targets(Rule=rule, Ids=["receiver"])
    events.delete_rule(Name=rule)
    return {"plan": asdict(plan), "one_at_a_time": single, "burst": many}


# ---------------------------------------------------------------------------------------------
# 2. a gateway write with audit and events on vs off


@dataclass
class SettlingProbe(CpuProbe):
    """A case's CPU probe that, before taking the end reading, creates a marker run on its
    server: for "on" it waits for the marker's event at the receiver, so the events the case
    caused (delivered in order, before the marker's) and their delivery count in the case.
    Each case's events (their number, delivery lag) and that wait are kept in ``reports``."""

    receiver: Receiver | None = None
    target: Target | None = None
    routed: bool = False
    reports: list[dict[str, Any]] = field(default_factory=list)
    _first: int = 0

    def begin(self) -> None:
        assert self.receiver is not None
        self._first = self.receiver.count()
        super().begin()

    def end(self) -> dict[str, float]:
        assert self.receiver is not None and self.target is not None
        marker = f"marker-{uuid.uuid4().hex}"
        started = time.perf_counter()
        create_run(self.target, marker)
        report: dict[str, Any]
        if self.routed:
            found = self.receiver.wait_marker(marker, self._first, DELIVERY_TIMEOUT)
            if found is None:
                raise RuntimeError(f"{self.target.mode}: the marker run's event never arrived")
            report = case_events(self.receiver.arrivals[self._first : found])
            report["settle_s"] = time.perf_counter() - started
        else:
            report = {"events": self.receiver.count() - self._first}
        self.reports.append(report)
        return super().end()


def case_events(arrivals: list[tuple[float, bytes]]) -> dict[str, Any]:
    """How many CreateRun events a case caused and their delivery lag: arrival minus the
    run's start_time (the client's clock when it built the request, in whole ms)."""
    lags = []
    for arrived, body in arrivals:
        event = json.loads(body)
        if event["detail-type"] == CREATING_RUN:
            lags.append(arrived - event["detail"]["Request"]["start_time"] / 1000)
    return {"events": len(arrivals), **ms_stats(lags, "lag")}


def data_events_for(daemon: BenchDaemon, arn: str, metric: str) -> int:
    """LogMetric data events on ``arn`` with metric key ``metric`` (the newest 50 looked at)."""
    found = daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "LogMetric"}],
        MaxResults=50,
    )["Events"]
    records = [json.loads(e["CloudTrailEvent"]) for e in found]
    return sum(
        1
        for r in records
        if r["resources"][0]["ARN"] == arn and r["requestParameters"]["body"]["key"] == metric
    )


def check_setup(
    daemon: BenchDaemon, receiver: Receiver, sides: dict[str, Side], arns: dict[str, str]
) -> dict[str, Any]:
    """Before measuring: a log-metric on each server is audited on "on" only, and a create-run
    on "off" (sent first) is not delivered while the one on "on" is."""
    checked: dict[str, Any] = {}
    for mode, side in sides.items():
        metric = f"check-{uuid.uuid4().hex[:8]}"
        body = {"run_id": side.run_id, "key": metric, "value": 1.0, "timestamp": 0, "step": 0}
        requests.post(
            f"{side.target.base}/api/2.0/mlflow/runs/log-metric",
            json=body,
            headers=side.target.headers,
            timeout=REQUEST_TIMEOUT,
        ).raise_for_status()
        checked[mode] = {"log_metric_data_events": data_events_for(daemon, arns[mode], metric)}
    first = receiver.count()
    markers = {mode: f"check-{mode}-{uuid.uuid4().hex}" for mode in ("off", "on")}
    for mode in ("off", "on"):
        create_run(sides[mode].target, markers[mode])
    on_seen = receiver.wait_marker(markers["on"], first, DELIVERY_TIMEOUT) is not None
    off_seen = receiver.wait_marker(markers["off"], first, 0) is not None
    checked["on"]["create_run_delivered"] = on_seen
    checked["off"]["create_run_delivered"] = off_seen
    expected = {"on": (1, True), "off": (0, False)}
    for mode, (audited, delivered) in expected.items():
        got = checked[mode]
        if (got["log_metric_data_events"], got["create_run_delivered"]) != (audited, delivered):
            raise RuntimeError(f"server {mode} is not set up as intended: {checked}")
    return checked


def start_sides(
    daemon: BenchDaemon, receiver: Receiver, destination: str, artifacts: Path
) -> tuple[dict[str, Side], dict[str, Any]]:
    """Servers "on" and "off", the tag and the rule, warmed; then the set-up checked."""
    sm = daemon.sagemaker()
    key, secret = daemon.credentials()
    sides: dict[str, Side] = {}
    arns: dict[str, str] = {}
    known: set[int] = set()
    for mode in ("on", "off"):
        name = f"bench-{mode}"
        print(f"server {name} ...", flush=True)
        created = create_server(sm, name, artifacts)
        workers = [pid for pid in wait_workers(daemon.data_dir, len(known) + 1) if pid not in known]
        known.update(workers)
        arns[mode] = sm.describe_mlflow_tracking_server(TrackingServerName=name)[
            "TrackingServerArn"
        ]
        target = Target(mode, tracking_url(sm, name), basic_header(key, secret))
        probe = SettlingProbe(
            workers, daemon.pid, receiver=receiver, target=target, routed=mode == "on"
        )
        sides[mode] = Side(mode, daemon, target, "", probe, {"create_s": created})
    sm.add_tags(ResourceArn=arns["off"], Tags=[{"Key": "mlfleet:data-events", "Value": "off"}])
    pattern = {
        "source": ["aws.sagemaker"],
        "detail-type": [{"prefix": MLFLOW_EVENTS}],
        "resources": [arns["on"]],
    }
    route(daemon.client("events"), "bench-mlflow-on", pattern, destination)
    for side in sides.values():
        side.run_id = create_run(side.target)
        warm([side.target], side.run_id)
    checked = check_setup(daemon, receiver, sides, arns)
    print(f"  set-up checked: {checked}", flush=True)
    return sides, {"rule_pattern": pattern, "checked": checked, "arns": arns}


def gateway_benchmark(
    daemon: BenchDaemon, receiver: Receiver, destination: str, artifacts: Path, plan: Plan
) -> dict[str, Any]:
    sides, setup = start_sides(daemon, receiver, destination, artifacts)
    print("throughput, audit and events on vs off ...", flush=True)
    cases = on_off_matrix(sides, plan, kinds=("create-run", "log-metric"))
    for mode, side in sides.items():
        assert isinstance(side.probe, SettlingProbe)
        mine = [c for c in cases if c["mode"] == mode]
        for case, report in zip(mine, side.probe.reports, strict=True):
            case["events"] = report
    rows = on_off_rows(cases)
    for row in rows:
        key = (row["endpoint"], row["concurrency"])
        mine = [c for c in cases if (c["endpoint"], c["concurrency"]) == key]
        row["on"]["events"] = event_summary([c for c in mine if c["mode"] == "on"])
        row["off"]["events"] = sum(c["events"]["events"] for c in mine if c["mode"] == "off")
    return {
        "plan": asdict(plan),
        "setup": {**setup, "create_s": {m: s.setup["create_s"] for m, s in sides.items()}},
        "cases": cases,
        "rows": rows,
    }


def event_summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """An "on" case's events over its rounds: total delivered, medians of the rounds' lag
    percentiles and of the wait for the marker after the load stopped."""
    reports = [c["events"] for c in cases]
    return {
        "delivered": sum(r["events"] for r in reports),
        "lag_p50_ms": median([r["lag_p50_ms"] for r in reports]),
        "lag_p99_ms": median([r["lag_p99_ms"] for r in reports]),
        "lag_max_ms": max(r["lag_max_ms"] for r in reports),
        "settle_s": median([r["settle_s"] for r in reports]),
    }


# ---------------------------------------------------------------------------------------------
# report


def markdown(results: dict[str, Any]) -> str:
    lines = [
        *header("# mlfleet: what audit data events and EventBridge events cost", results),
        "",
        "One daemon (SQLite control database, fresh data dir, loopback only). The receiver is an "
        "aiohttp server on uvloop in the benchmark process (its own thread), on 127.0.0.1, that "
        "notes the arrival time and body of every POST and answers 200 at once; it is reached "
        "through an API destination with an API_KEY connection (so every delivery carries the "
        "key and an HMAC signature).",
        "",
        *put_events_markdown(results["put_events"]),
        "",
        *gateway_markdown(results["gateway"]),
    ]
    return "\n".join(lines) + "\n"


def put_events_markdown(part: dict[str, Any]) -> list[str]:
    one, many = part["one_at_a_time"], part["burst"]
    client_bound = many["client_cpu_ms_per_call"] > many["daemon_cpu_ms_per_call_put_phase"]
    lines = [
        "## 1. PutEvents to a local HTTP target",
        "",
        f'One rule, pattern `{{"source": ["{SOURCE}"]}}`, one target: the receiver. Senders are '
        "boto3 `events` clients (retries off), one per thread. Each call's entries carry "
        '`{"seq": n, "sent_at": time.time()}` in Detail, taken just before the call; delivery '
        "lag is the receiver's `time.time()` at arrival minus `sent_at` (same process, same "
        "clock), so it includes the PutEvents call itself.",
        "",
        "| phase | events | PutEvents p50 / p99 ms | delivery lag p50 / p99 / max ms |",
        "|---|---|---|---|",
        f"| one at a time (1 entry per call, next sent once delivered) | {one['events']} "
        f"| {one['put_p50_ms']:.1f} / {one['put_p99_ms']:.1f} "
        f"| {one['lag_p50_ms']:.1f} / {one['lag_p99_ms']:.1f} / {one['lag_max_ms']:.1f} |",
        f"| burst ({many['calls']} calls of {BATCH} from {many['senders']} threads) "
        f"| {many['events']} | {many['put_p50_ms']:.1f} / {many['put_p99_ms']:.1f} "
        f"| {many['lag_p50_ms']:.0f} / {many['lag_p99_ms']:.0f} / {many['lag_max_ms']:.0f} |",
        "",
        "| burst | |",
        "|---|---|",
        f"| accepted (entries in successful PutEvents / time of the put phase) "
        f"| **{many['accepted_per_s']:.0f} events/s** ({many['calls_per_s']:.0f} calls/s, "
        f"{many['put_seconds']:.1f} s) |",
        f"| delivered end to end (first PutEvents to last delivery) "
        f"| **{many['delivered_per_s']:.0f} events/s** ({many['delivered']} of {many['events']} "
        f"in {many['first_put_to_last_delivery_s']:.1f} s"
        + ("" if many["complete"] else f"; gave up waiting after {BURST_DELIVERY_TIMEOUT:.0f} s")
        + ") |",
        f"| the delivery worker's pace (first delivery to last) "
        f"| {many['delivery_only_per_s']:.0f} events/s (first half of the deliveries "
        f"{many['delivery_first_half_per_s']:.0f}, second half "
        f"{many['delivery_second_half_per_s']:.0f}) |",
        f"| still queued when the last PutEvents returned | {many['backlog_after_puts']} |",
        f"| failed entries / duplicate deliveries | {many['failed_entries']} / "
        f"{many['duplicates']} |",
        f"| daemon CPU per PutEvents call (put phase) / per event (accept + deliver) "
        f"| {many['daemon_cpu_ms_per_call_put_phase']:.2f} / "
        f"{many['daemon_cpu_ms_per_event']:.2f} ms |",
        f"| daemon cores used: put phase / draining after it "
        f"| {many['daemon_cores_put_phase']:.2f} / {many['daemon_cores_drain_phase']:.2f} "
        f"({many['drain_phase_s']:.1f} s) |",
        f"| this process's CPU per PutEvents call (boto3 senders + receiver) "
        f"| {many['client_cpu_ms_per_call']:.2f} ms |",
        f"| other load (cores, put phase) | {many['foreign_cores']:.2f} |",
        "",
        "boto3 or raw signed requests: the senders are boto3. Per PutEvents call this process "
        f"used {many['client_cpu_ms_per_call']:.2f} ms of CPU against the daemon's "
        f"{many['daemon_cpu_ms_per_call_put_phase']:.2f} ms, and the daemon used "
        f"{many['daemon_cores_put_phase']:.2f} cores in the put phase (one Python process: "
        "about 1 core is its ceiling), "
        + (
            "so on 2 cores the client's own overhead is a real part of the accepted rate: "
            "raw signed requests would raise it."
            if client_bound
            else "so boto3's own overhead is not what limits the accepted rate."
        ),
    ]
    if many["error_sample"]:
        lines += ["", f"First PutEvents error: `{many['error_sample']}`"]
    return lines


def gateway_markdown(part: dict[str, Any]) -> list[str]:
    plan, setup = part["plan"], part["setup"]
    checked = setup["checked"]
    lines = [
        "## 2. A gateway write: audit and events on vs off (same daemon, same run)",
        "",
        "Two Small tracking servers. **on**: data events on (the default) and a rule "
        f"`{json.dumps(setup['rule_pattern'])}` routing its MLflow events to the receiver. "
        "**off**: tagged `mlfleet:data-events=off` (boto3 `add_tags`) and matched by no rule "
        "(its create-runs still build an event and match it against the rules, then store "
        "nothing). Checked before measuring: a log-metric left "
        f"{checked['on']['log_metric_data_events']} / {checked['off']['log_metric_data_events']}"
        " data events (on / off) and a create-run was delivered "
        f"{'yes' if checked['on']['create_run_delivered'] else 'no'} / "
        f"{'yes' if checked['off']['create_run_delivered'] else 'no'}.",
        "",
        "create-run (`runs/create`): one data event and one event delivered to the receiver; "
        "log-metric: one data event only. aiohttp closed loop with keep-alive (bench/loadgen.py), "
        "HTTP Basic with the admin's key, "
        f"{plan['warmup']:g} s warm-up + {plan['duration']:g} s per case, "
        f"{plan['target_repeats']} round(s) per case with on and off alternating (who goes "
        "first swaps every round); figures are medians of the rounds. Each case ends with a "
        "marker create-run on its server; an on case's CPU reading is taken only once the "
        "receiver has the marker's event, so every delivery the case caused is inside its CPU "
        "figures. on/off: median of the rounds' on/off req/s ratios; of medians: the ratio of "
        "the median req/s.",
        "",
        *on_off_table(part["rows"]),
        "",
        "What on adds (on minus off, medians of the rounds):",
        "",
        "| endpoint | c | p50 ms | p99 ms | daemon CPU per call ms |",
        "|---|---|---|---|---|",
        *(
            f"| {r['endpoint']} | {r['concurrency']} | {added(r, 'p50_ms'):+.1f} "
            f"| {added(r, 'p99_ms'):+.1f} | {added(r, 'gateway_cpu_ms'):+.2f} |"
            for r in part["rows"]
        ),
    ]
    lines += [
        "",
        "gateway CPU/req and daemon CPU: CPU ms of the daemon process per request sent (the "
        "gateway, the audit writer, the event bus and the delivery worker all run in it). worker "
        "CPU/req: the server's MLflow "
        "worker. Other load: cores used by everything else on the machine during the case.",
        "",
        "Events of the on cases, all rounds (delivery lag: the receiver's clock at arrival minus "
        "the run's `start_time`, set by the load generator when it built the request; medians "
        "of the rounds' percentiles; settle: from the end of the load to the marker's delivery, "
        "one create-run round trip included):",
        "",
        "| endpoint | c | events delivered (on) | delivery lag p50 / p99 / max ms "
        "| settle s | events delivered (off) |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in part["rows"] if r["endpoint"] == "create-run"):
        ev = r["on"]["events"]
        lines.append(
            f"| {r['endpoint']} | {r['concurrency']} | {ev['delivered']} "
            f"| {ev['lag_p50_ms']:.1f} / {ev['lag_p99_ms']:.1f} / {ev['lag_max_ms']:.1f} "
            f"| {ev['settle_s']:.2f} | {r['off']['events']} |"
        )
    others = sum(
        r["on"]["events"]["delivered"] for r in part["rows"] if r["endpoint"] != "create-run"
    )
    lines += ["", f"The log-metric cases caused {others} deliveries (none expected).", ""]
    lines += [in_short(part["rows"])]
    return lines + errors_seen(
        part["cases"], lambda c: f"{c['endpoint']} c={c['concurrency']} {c['mode']}"
    )


def added(row: dict[str, Any], key: str) -> float:
    """What audit and events on add to a figure of ``on_off_rows``: on minus off."""
    return float(row["on"][key] - row["off"][key])


def in_short(rows: list[dict[str, Any]]) -> str:
    """Per endpoint: the on/off throughput ratios and what on adds to the daemon's CPU and p50."""
    parts = []
    for endpoint, what in (("create-run", "audit + event"), ("log-metric", "audit only")):
        mine = [r for r in rows if r["endpoint"] == endpoint]
        ratios = [r["paired_ratio"] for r in mine]
        cpu = [added(r, "gateway_cpu_ms") for r in mine]
        p50 = [added(r, "p50_ms") for r in mine]
        parts.append(
            f"{endpoint} ({what}) keeps {span(ratios, '.0%')} of its off throughput at c=1/8, "
            f"costs the daemon {span(cpu, '.2f')} ms more CPU per call and adds "
            f"{span(p50, '.1f')} ms at p50"
        )
    return "In short: " + "; ".join(parts) + "."


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    results = new_results("bench/events.py", quick)
    started = time.perf_counter()
    receiver = Receiver().start()
    try:
        with BenchDaemon(data_dir / "daemon") as daemon:
            print(f"starting mlfleet in {daemon.data_dir} ...", flush=True)
            daemon.start()
            destination = api_destination(daemon.client("events"), receiver)
            results["put_events"] = put_events_benchmark(
                daemon, receiver, destination, EventsPlan.make(quick)
            )
            results["gateway"] = gateway_benchmark(
                daemon, receiver, destination, daemon.artifacts, gateway_plan(quick)
            )
    finally:
        receiver.stop()
    finish_results(results, started)
    return results


def main() -> None:
    main_of(__doc__, "a smoke run: fewer, shorter cases", "events", run_benchmark, markdown)


if __name__ == "__main__":
    main()
