"""Benchmark what authorization costs and write bench/results/auth-latest.{json,md}.

Run: ``.venv/bin/python bench/auth.py [--quick] [--out bench/results] [--keep]``

1. per check, in process: a real IamStore and Authorizer over a temporary SQLite control
   database, wired as ``build_daemon`` wires them, and a user with a realistic policy set (see
   ``grant_in_store``); ``Authorizer.check`` timed one call at a time with ``perf_counter_ns``:
   (a) a cached decision, (b) a decision-cache miss with the policies loaded (every call from
   another source address: evaluation only), (c) fully uncached (``invalidate()`` before each
   call: the policies are read from the database and parsed, then evaluated);
2. through the gateway: two daemons side by side, one enforcing policies (the default) and one
   with ``MLFLEET_AUTHORIZATION=authenticate-only``, the same non-admin user (created with boto3's
   IAM client, calling with its key over HTTP Basic) on one Small server each; closed-loop
   log-metric and get-run at several concurrencies, policies on and off alternating round by
   round, medians of the rounds.

The daemon handling and report helpers come from bench/common.py, the load generator and the
on/off matrix from bench/loadgen.py. Every loop is bounded; daemons, workers and the data dir go
on any exit (unless ``--keep``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
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
    header,
    main_of,
    new_results,
    percentile,
    span,
    tracking_url,
    wait_workers,
)
from loadgen import ON_OFF, Side, on_off_matrix, on_off_rows, on_off_table, warm

from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox
from mlfleet.iam.store import IamStore
from mlfleet.mlflow_api.actions import required_action
from mlfleet.policy.authorizer import Authorizer, RequestFacts
from mlfleet.settings import Settings
from mlfleet.state.db import open_database

# ---------------------------------------------------------------------------------------------
# the principal under test: the same user and policies in both parts

USER = "bench-ds"
USER_TAGS = [{"Key": "team", "Value": "vision"}]
GROUP = "bench-data-scientists"
SERVER = "bench-auth"
# The server's tags feed aws:ResourceTag/*; env=dev keeps the user's Deny out of the way.
SERVER_TAGS = [{"Key": "env", "Value": "dev"}, {"Key": "team", "Value": "vision"}]
DATA_SCIENTIST = "arn:aws:iam::aws:policy/MlfleetDataScientistAccess"
# The group's: everything on servers named after the user (a policy variable in the resource),
# deletes only from the office network (an IpAddress condition).
GROUP_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "OwnServers",
            "Effect": "Allow",
            "Action": "sagemaker-mlflow:*",
            "Resource": "arn:aws:sagemaker:*:*:mlflow-tracking-server/${aws:username}-*",
        },
        {
            "Sid": "DeleteFromTheOffice",
            "Effect": "Allow",
            "Action": "sagemaker-mlflow:Delete*",
            "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "192.168.0.0/16"}},
        },
    ],
}
# The user's own guard rails: no writes to servers tagged env=prod, nothing from outside.
USER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "NoProdWrites",
            "Effect": "Deny",
            "Action": [
                "sagemaker-mlflow:Log*",
                "sagemaker-mlflow:Set*",
                "sagemaker-mlflow:Update*",
                "sagemaker-mlflow:Delete*",
            ],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}},
        },
        {
            "Sid": "InsideOnly",
            "Effect": "Deny",
            "Action": "sagemaker-mlflow:*",
            "Resource": "*",
            "Condition": {
                "NotIpAddress": {"aws:SourceIp": ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]}
            },
        },
    ],
}
POLICY_SET = (
    f"user {USER} (tagged team=vision): {DATA_SCIENTIST.rsplit('/', 1)[1]} attached; inline "
    "Deny of Log*/Set*/Update*/Delete* when aws:ResourceTag/env = prod (StringEquals) and "
    "Deny of everything when aws:SourceIp is outside 127/8, 10/8 and ::1 (NotIpAddress); "
    f"member of group {GROUP}, whose inline policy allows sagemaker-mlflow:* on "
    "mlflow-tracking-server/${aws:username}-* and Delete* from 192.168.0.0/16 (IpAddress). "
    f"Tracking server {SERVER}, tagged env=dev."
)


def grant_in_store(store: IamStore) -> str:
    """The policy set straight in the store (part 1); returns the user's access key id."""
    store.create_user({"UserName": USER, "Tags": USER_TAGS})
    store.attach_policy("user", USER, DATA_SCIENTIST)
    store.put_inline_policy("user", USER, "guard-rails", json.dumps(USER_POLICY))
    store.create_group({"GroupName": GROUP})
    store.put_inline_policy("group", GROUP, "own-servers", json.dumps(GROUP_POLICY))
    store.add_user_to_group(GROUP, USER)
    return str(store.create_access_key(USER)["AccessKey"]["AccessKeyId"])


def grant_with_iam(iam: Any) -> tuple[str, str]:
    """The same policy set through a daemon's IAM API (part 2); returns the user's key."""
    iam.create_user(UserName=USER, Tags=USER_TAGS)
    iam.attach_user_policy(UserName=USER, PolicyArn=DATA_SCIENTIST)
    iam.put_user_policy(
        UserName=USER, PolicyName="guard-rails", PolicyDocument=json.dumps(USER_POLICY)
    )
    iam.create_group(GroupName=GROUP)
    iam.put_group_policy(
        GroupName=GROUP, PolicyName="own-servers", PolicyDocument=json.dumps(GROUP_POLICY)
    )
    iam.add_user_to_group(GroupName=GROUP, UserName=USER)
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


# ---------------------------------------------------------------------------------------------
# 1. Authorizer.check, in process


@dataclass(frozen=True)
class MicroPlan:
    rounds: int  # scenarios take turns, block by block, so drift hits all of them alike
    cached: int  # calls per (scenario, action) over all rounds
    evaluate: int
    uncached: int

    @staticmethod
    def make(quick: bool) -> MicroPlan:
        if quick:
            return MicroPlan(rounds=2, cached=20_000, evaluate=4_000, uncached=400)
        return MicroPlan(rounds=5, cached=200_000, evaluate=40_000, uncached=4_000)


# What the gateway asks for log-metric, get-run, and one the policy set refuses.
MICRO_REQUESTS = (
    ("POST", "/api/2.0/mlflow/runs/log-metric"),
    ("GET", "/api/2.0/mlflow/runs/get"),
    ("POST", "/api/2.0/mlflow/runs/delete"),
)


@dataclass
class InProcess:
    authorizer: Authorizer
    unenforced: Authorizer
    principal: Principal
    resource: str


def in_process(data_dir: Path) -> InProcess:
    """Store, authorizer and principal wired as ``build_daemon`` wires them."""
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.control_db_url)
    box = SecretBox.from_file(settings.master_key_path)
    on_change: list[Callable[[], None]] = []
    store = IamStore(sessions, settings.account_id, box, on_change=lambda: [f() for f in on_change])
    authorizer = Authorizer(store, settings.account_id)
    on_change.append(authorizer.invalidate)
    key_id = grant_in_store(store)
    # The principal the gateway gets from an access key.
    record = Credentials(settings, sessions, box).lookup(key_id)
    assert record is not None
    resource = (
        f"arn:aws:sagemaker:{settings.region}:{settings.account_id}:mlflow-tracking-server/{SERVER}"
    )
    return InProcess(
        authorizer,
        Authorizer(store, settings.account_id, enforce=False),
        record.principal,
        resource,
    )


def _timed(call: Callable[[int], object], count: int, before: Callable[[], object]) -> list[int]:
    """Nanoseconds of each of ``count`` calls; ``before`` runs untimed ahead of each."""
    clock = time.perf_counter_ns
    out = [0] * count
    for i in range(count):
        before()
        started = clock()
        call(i)
        out[i] = clock() - started
    return out


def _nothing() -> None:
    return None


def micro_benchmark(setup: InProcess, plan: MicroPlan) -> dict[str, Any]:
    """Each scenario x action in ``plan.rounds`` interleaved blocks; percentiles over all."""
    auth, who, arn = setup.authorizer, setup.principal, setup.resource
    facts = RequestFacts(source_ip="127.0.0.1", resource_tags=SERVER_TAGS)
    # A distinct address per call of (b): never cached; inside 10/8, so InsideOnly never denies.
    addresses = iter(
        [
            RequestFacts(
                source_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", resource_tags=SERVER_TAGS
            )
            for i in range(len(MICRO_REQUESTS) * plan.evaluate + 1)
        ]
    )
    actions = []
    for method, path in MICRO_REQUESTS:
        action = required_action(method, path).action
        assert action is not None, path
        actions.append(action)

    def block(scenario: str, action: str, count: int) -> list[int]:
        if scenario == "timer":
            return _timed(lambda _i: None, count, _nothing)
        if scenario == "off":
            return _timed(
                lambda _i: setup.unenforced.check(who, action, arn, facts), count, _nothing
            )
        if scenario == "cached":
            auth.check(who, action, arn, facts)
            return _timed(lambda _i: auth.check(who, action, arn, facts), count, _nothing)
        if scenario == "evaluate":
            # Start each block from an empty decision cache (so it never hits its size limit),
            # with the policies loaded.
            auth.invalidate()
            auth.check(who, action, arn, facts)
            chunk = [next(addresses) for _ in range(count)]
            return _timed(lambda i: auth.check(who, action, arn, chunk[i]), count, _nothing)
        assert scenario == "uncached"
        return _timed(lambda _i: auth.check(who, action, arn, facts), count, auth.invalidate)

    counts = {
        "timer": plan.cached,
        "off": plan.cached,
        "cached": plan.cached,
        "evaluate": plan.evaluate,
        "uncached": plan.uncached,
    }
    samples: dict[tuple[str, str], list[int]] = {}
    for _ in range(plan.rounds):
        for scenario, total in counts.items():
            for action in actions if scenario not in ("timer", "off") else actions[:1]:
                key = (scenario, action)
                samples.setdefault(key, []).extend(block(scenario, action, total // plan.rounds))

    rows = []
    for (scenario, action), values in samples.items():
        auth.invalidate()
        decision = (
            (setup.unenforced if scenario == "off" else auth)
            .check(who, action, arn, facts)
            .decision.value
        )
        ordered = sorted(v / 1000 for v in values)
        rows.append(
            {
                "scenario": scenario,
                "action": action if scenario != "timer" else "",
                "decision": decision if scenario != "timer" else "",
                "n": len(ordered),
                "p50_us": percentile(ordered, 0.50),
                "p99_us": percentile(ordered, 0.99),
                "mean_us": sum(ordered) / len(ordered),
            }
        )
        print(
            f"  {scenario:8} {action.split(':')[1] if scenario != 'timer' else '':10} "
            f"p50 {rows[-1]['p50_us']:8.2f} us  p99 {rows[-1]['p99_us']:8.2f} us  "
            f"n={len(ordered)}",
            flush=True,
        )
    return {"plan": asdict(plan), "rows": rows}


# ---------------------------------------------------------------------------------------------
# 2. through the gateway, policies on vs off


# The daemon's ``authorization`` setting on each side.
MODES = {"on": "iam", "off": "authenticate-only"}


def throughput_plan(quick: bool) -> Plan:
    """The cases through the gateway; ``target_repeats`` is the number of on/off rounds each."""
    return Plan(
        cycles=0,
        warmup=0.5 if quick else 1.0,
        duration=2.0 if quick else 5.0,
        concurrencies=(1, 8) if quick else (1, 8, 32),
        client_calls=0,
        target_repeats=1 if quick else 5,
    )


def start_side(mode: str, data_dir: Path) -> Side:
    """A daemon with ``authorization = MODES[mode]``, the user, and a warmed Small server."""
    daemon = BenchDaemon(data_dir / f"policies-{mode}", {"MLFLEET_AUTHORIZATION": MODES[mode]})
    print(f"policies {mode}: starting mlfleet in {daemon.data_dir} ...", flush=True)
    daemon.start()
    try:
        sm = daemon.sagemaker()
        key, secret = grant_with_iam(daemon.client("iam"))
        created = create_server(sm, SERVER, daemon.artifacts, tags=SERVER_TAGS)
        workers = wait_workers(daemon.data_dir, 1)
        target = Target(mode, tracking_url(sm, SERVER), basic_header(key, secret))
        run_id = create_run(target)
        warm([target], run_id)
        enforcement = {"create_s": created, **enforcement_probe(target, run_id)}
    except BaseException:
        print(f"policies {mode} failed; daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
        daemon.close()
        raise
    print(f"  {enforcement['note']}", flush=True)
    return Side(mode, daemon, target, run_id, CpuProbe(list(workers), daemon.pid), enforcement)


def enforcement_probe(target: Target, run_id: str) -> dict[str, Any]:
    """DeleteRun is not in the user's policies: 403 with policies on, forwarded with them off."""
    resp = requests.post(
        f"{target.base}/api/2.0/mlflow/runs/delete",
        json={"run_id": "0" * 32},
        headers=target.headers,
        timeout=REQUEST_TIMEOUT,
    )
    allowed = requests.get(
        f"{target.base}/api/2.0/mlflow/runs/get",
        params={"run_id": run_id},
        headers=target.headers,
        timeout=REQUEST_TIMEOUT,
    ).status_code
    expected = 403 if target.mode == "on" else "not 403"
    ok = (resp.status_code == 403) == (target.mode == "on") and allowed == 200
    if not ok:
        raise RuntimeError(
            f"policies {target.mode}: DeleteRun answered {resp.status_code} (expected {expected}), "
            f"GetRun {allowed}: {resp.text[:300]}"
        )
    return {
        "delete_run_status": resp.status_code,
        "get_run_status": allowed,
        "note": f"DeleteRun as {USER} -> {resp.status_code}, GetRun -> {allowed}",
    }


def gateway_benchmark(data_dir: Path, plan: Plan) -> dict[str, Any]:
    sides: dict[str, Side] = {}
    try:
        for mode in ON_OFF:
            sides[mode] = start_side(mode, data_dir)
        print("throughput, policies on vs off ...", flush=True)
        cases = on_off_matrix(sides, plan)
    except BaseException:
        for side in sides.values():
            print(f"daemon log tail ({side.mode}):\n{side.daemon.log_tail()}", file=sys.stderr)
        raise
    finally:
        for side in sides.values():
            side.daemon.close()
    return {
        "plan": asdict(plan),
        "setup": {mode: side.setup for mode, side in sides.items()},
        "cases": cases,
        "rows": on_off_rows(cases),
    }


# ---------------------------------------------------------------------------------------------
# report


def markdown(results: dict[str, Any]) -> str:
    micro, gateway = results["micro"], results["gateway"]
    mp, gp = micro["plan"], gateway["plan"]
    lines = [
        *header("# mlfleet: what authorization costs", results),
        "",
        f"Policy set: {POLICY_SET}",
        "",
        "## 1. `Authorizer.check`, one call (in process)",
        "",
        "A real `IamStore` and `Authorizer` over a temporary SQLite control database, wired as "
        "`build_daemon` wires them; the principal is the one the gateway gets from the user's "
        "access key; the resource is the server's ARN with its tags, source address 127.0.0.1. "
        "Each call timed alone with `time.perf_counter_ns`; the scenarios take turns in "
        f"{mp['rounds']} rounds of blocks and the percentiles are over all the calls.",
        "",
        "- **cached**: the decision cache answers (what nearly every gateway request pays);",
        "- **evaluate**: decision-cache miss, policies already loaded and compiled: each call "
        "comes from another source address (10.x.y.z), so this is key building + evaluation of "
        "every statement + the cache insert (what a request pays when the address, action, "
        "server or its tags are new, or every request when a policy reads the clock);",
        "- **uncached**: `invalidate()` before each call (as after any IAM change): the user's "
        "record (for its tags), its groups and the user's and groups' inline and attached "
        "policies are read from SQLite and parsed, then evaluated;",
        "- **off**: `authorization = authenticate-only`; **timer**: an empty timed call, the "
        "overhead included in every other figure.",
        "",
        "| scenario | action | decision | calls | p50 µs | p99 µs | mean µs |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['action'].split(':')[-1]} | {r['decision']} | {r['n']} "
            f"| {r['p50_us']:.2f} | {r['p99_us']:.2f} | {r['mean_us']:.2f} |"
            for r in micro["rows"]
        ),
        "",
        "## 2. Through the gateway, policies on vs off (same run)",
        "",
        "Two daemons side by side on fresh SQLite data dirs, `authorization = iam` (on, the "
        "default) and `MLFLEET_AUTHORIZATION=authenticate-only` (off), each with one Small "
        f"tracking server `{SERVER}` and the user above (created with boto3's IAM client), whose "
        "access key is sent as HTTP Basic. Before measuring: "
        + "; ".join(
            f"policies {mode}: DeleteRun {s['delete_run_status']}, GetRun {s['get_run_status']}"
            for mode, s in gateway["setup"].items()
        )
        + ". aiohttp closed loop with keep-alive (bench/loadgen.py), "
        f"{gp['warmup']:g} s warm-up + {gp['duration']:g} s per case, "
        f"{gp['target_repeats']} round(s) per case with on and off alternating (who goes first "
        "swaps every round); the figures are medians of the rounds. Only one daemon is loaded at "
        "a time; the other sits idle. on/off: the median of the rounds' on/off ratios (each "
        "round's two cases ran back to back), then the ratio of the median req/s, then each "
        "round's ratio.",
        "",
        *on_off_table(gateway["rows"]),
    ]
    lines += [
        "",
        "gateway CPU/req: CPU ms of the daemon process per request (its whole gateway path: "
        "authentication, authorization, admission, proxying, audit). worker CPU/req: the "
        "MLflow worker's; authorization runs in the daemon, not in the worker, so a difference "
        "between on and off in this column is not authorization's. Other load: cores used by "
        "everything else on the machine during the case (the idle daemon included).",
    ]
    lines += ["", summary(results)]
    lines += errors_seen(
        gateway["cases"], lambda c: f"{c['endpoint']} c={c['concurrency']} policies {c['mode']}"
    )
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    """The cached check set against the daemon's whole CPU per request, and the ratio range."""
    cached = [r["p50_us"] for r in results["micro"]["rows"] if r["scenario"] == "cached"]
    rows = results["gateway"]["rows"]
    cpu_us = [r["on"]["gateway_cpu_ms"] * 1000 for r in rows]
    ratios = [r["paired_ratio"] for r in rows]
    extra = statistics.median(r["on"]["gateway_cpu_ms"] - r["off"]["gateway_cpu_ms"] for r in rows)
    return (
        f"In short: a cached decision costs {span(cached, '.1f')} µs (p50), "
        f"{span([max(cached) / c for c in cpu_us], '.2%')} of the daemon's "
        f"{span([c / 1000 for c in cpu_us], '.2f')} ms of CPU per request with policies on. "
        f"Through the gateway, policies on vs off: {span(ratios, '.0%')} of the throughput "
        "across the cases (median of round ratios; the spread between rounds is in the 'each "
        "round' column), and the daemon's CPU per request differed by "
        f"{extra * 1000:+.0f} µs (median over the cases of on - off)."
    )


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    results = new_results("bench/auth.py", quick)
    results["policy_set"] = POLICY_SET
    started = time.perf_counter()
    print("Authorizer.check in process ...", flush=True)
    results["micro"] = micro_benchmark(in_process(data_dir / "in-process"), MicroPlan.make(quick))
    results["gateway"] = gateway_benchmark(data_dir, throughput_plan(quick))
    finish_results(results, started)
    return results


def main() -> None:
    main_of(__doc__, "a smoke run: fewer, shorter cases", "auth", run_benchmark, markdown)


if __name__ == "__main__":
    main()
