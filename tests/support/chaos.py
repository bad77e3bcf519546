"""What chaos tests share: the processes to kill, a control-plane call retried the way a user's
script retries it, and the trail read back in full."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from support.daemon import Daemon
from support.procs import argv_of
from support.waiting import wait_for

T = TypeVar("T")

SEED_VARIABLE = "MLFLEET_CHAOS_SEED"
# Answers a client retries: the daemon starting, or briefly unable to serve.
TRANSIENT_CODES = frozenset(
    {"ServiceUnavailable", "InternalFailure", "ThrottlingException", "Throttling"}
)


def chaos_seed() -> int:
    """The seed of this run: MLFLEET_CHAOS_SEED to replay one, else a fresh one."""
    given = os.environ.get(SEED_VARIABLE)
    return int(given) if given else random.SystemRandom().randrange(2**32)


@contextlib.contextmanager
def replayable(seed: int, data_dir: Path, kept: Path | None = None) -> Iterator[None]:
    """Failures inside name the seed that replays them, where the daemon's log is (``kept``,
    where it is copied to if the data dir goes with the test), and the last errors in the
    daemon's and the workers' logs (CI's files are gone after the run)."""
    try:
        yield
    except AssertionError as failed:
        log = kept or data_dir / "daemon.out"
        raise AssertionError(
            f"chaos seed {seed} (replay: {SEED_VARIABLE}={seed}; daemon log {log}): {failed}"
            f"{_errors_in([data_dir / 'daemon.out', *data_dir.glob('servers/*/logs/*.log')])}"
        ) from failed


def _errors_in(logs: list[Path]) -> str:
    found = []
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        marked = [line for line in lines if "ERROR" in line or "Traceback" in line][-20:]
        found += [f"{log.name}: {line}" for line in marked]
    return "\nlast errors in the logs:\n" + "\n".join(found) if found else ""


def worker_pids(data_dir: Path) -> list[int]:
    """PIDs of the MLflow workers of the daemon owning ``data_dir`` (the Python processes, not
    the sandboxes that started them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = argv_of(int(entry.name))
        if argv[1:3] == ["-m", "mlfleet.runtime.mlflow_worker"] and any(
            str(data_dir) in part for part in argv
        ):
            pids.append(int(entry.name))
    return sorted(pids)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def live_workers(data_dir: Path) -> list[int]:
    return [pid for pid in worker_pids(data_dir) if alive(pid)]


def transient(error: Exception) -> bool:
    """A failure a user's script would retry: no connection, a dropped one, or a 5xx."""
    if isinstance(error, ConnectionError | HTTPClientError):
        return True
    if isinstance(error, ClientError):
        answer = error.response
        return (
            answer.get("Error", {}).get("Code") in TRANSIENT_CODES
            or answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
        )
    return False


def persist(call: Callable[..., T], *args: Any, timeout: float = 120, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, again after each transient failure (half a second apart),
    for at most ``timeout`` seconds: what a user's boto3 script does around a daemon that
    restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            if not transient(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def trail_records(daemon: Daemon, event_name: str) -> list[dict[str, Any]]:
    """Every record of ``event_name`` in the trail, through CloudTrail's LookupEvents, all
    pages."""
    pages = daemon.client("cloudtrail").get_paginator("lookup_events")
    return [
        json.loads(event["CloudTrailEvent"])
        for page in pages.paginate(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": event_name}],
            PaginationConfig={"PageSize": 50},
        )
        for event in page["Events"]
    ]


def check_trail(
    daemon: Daemon, arn: str, metric: str, steps: set[tuple[str, int]], tags: set[str]
) -> None:
    """A LogMetric data event for every acknowledged (run, step) of ``metric`` on ``arn``
    (those stored with MLflow's write reach the trail just after the answer: waited for), and
    an AddTags record for every acknowledged tag key."""
    missing: set[tuple[str, int]] = set()

    def complete() -> bool:
        logged = set()
        for record in trail_records(daemon, "LogMetric"):
            body = (record.get("requestParameters") or {}).get("body") or {}
            run, step = body.get("run_id") or body.get("run_uuid"), body.get("step")
            if record["resources"][0]["ARN"] == arn and body.get("key") == metric:
                logged.add((run, None if step is None else int(step)))
        missing.clear()
        missing.update(steps - logged)
        return not missing

    try:
        wait_for(complete, 60, 2, what="the LogMetric data events")
    except AssertionError:
        raise AssertionError(
            f"{len(missing)} of {len(steps)} acknowledged metric steps have no LogMetric data "
            f"event: {sorted(missing)[:30]}"
        ) from None
    tagged = set()
    for record in trail_records(daemon, "AddTags"):
        if record.get("errorCode") is None and record["resources"][0]["ARN"] == arn:
            tagged |= {t["key"] for t in record["requestParameters"]["tags"]}
    assert not tags - tagged, f"acknowledged AddTags without a record: {sorted(tags - tagged)}"


def stop_and_verify(daemon: Daemon, *database_options: str) -> None:
    """SIGTERM: the daemon exits 0, and ``mlfleet audit verify`` finds the chain intact."""
    daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, (
        f"the daemon exited with {daemon.proc.returncode if daemon.proc else None} on SIGTERM"
    )
    verified = subprocess.run(
        [
            *(sys.executable, "-m", "mlfleet", "audit", "verify"),
            *("--data-dir", str(daemon.data_dir), *database_options),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
