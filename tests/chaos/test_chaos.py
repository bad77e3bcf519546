"""Chaos: faults injected under a mixed client workload, then every acknowledged write checked.

One daemon (SQLite, a local-folder artifact store), one Medium tracking server, and a rule that
sends the server's events (lifecycle, MLflow, API calls) to a local receiver. Four client
threads run meanwhile, each recording only what the server acknowledged:

* training: the MLflow client logs a metric at every step (and a param every 20 steps), in runs
  of 150 steps;
* artifacts: ``log_artifact`` of small files of random bytes, their sha256 kept;
* registry: registered models, two versions of each (source: a run's artifact URI);
* control plane: boto3 Describe, List, and AddTags with a new key each time (at most 40 tags).

Clients retry as users' clients do: the MLflow client with its own retries (7, backoff factor
1, ``Retry-After`` honoured, a 30 s read timeout), boto3 in a loop on connection errors and 5xx
answers (``support.chaos.persist``). Calls that took longer than 25 s are printed, never asserted
on (tests do not time things): a call that hung until the client's timeout, then succeeded on
its retry, shows there.

Faults, three to five per run, at least one of each kind, chosen by the seed: ``kill -9`` of the
daemon (started again on the same data dir after 0-1.5 s) or of one MLflow worker. After each
fault the test waits for the training loop to be served again, then for a random 1-5 s, then
injects the next. The seed fixes the schedule (kinds, pauses, victims), not the request a fault
lands on: ``MLFLEET_CHAOS_SEED=<seed>`` replays a run's schedule, which reproduces a failure
with good odds, not with certainty.

Then, with every fault over and the daemon up: each acknowledged metric (key, step, value) is
in its run's history exactly once, each param is there, each artifact downloads with its
sha256, each model version exists with its source, each tag is on the server; the trail holds a
LogMetric data event for every acknowledged step and an AddTags record for every acknowledged
tag; the receiver got Creating and Created, a Creating Run / RegisteredModel / ModelVersion
event for every acknowledged one and an API-call event for every acknowledged AddTags; the
server is not left in a transitional status and runs its two workers; no client call failed
after its retries (except a create answered "already exists" because an earlier try of it had
been done before its answer was lost); after SIGTERM the daemon exits 0 and
``mlfleet audit verify`` finds the chain intact.

Not injected yet (TODO):

* kill -9 of an endpoint instance (a scoring worker) under InvokeEndpoint load;
* a PostgreSQL restart (this test on the PostgreSQL variant);
* a full disk (the data dir, the artifact store);
* S3 cut off (moto stopped, with an S3 artifact store) during artifact uploads;
* an event receiver that is down or refusing during the faults (retries, dead letters);
* a hung worker (SIGSTOP) rather than a dead one, and faults during Stop, Start and Update.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support.aws import ACCOUNT
from support.chaos import (
    alive,
    chaos_seed,
    live_workers,
    persist,
    replayable,
    trail_records,
)
from support.daemon import Daemon
from support.events import Receiver, route_to
from support.waiting import wait_for

ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
NAME = "chaos"
ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/{NAME}"
METRIC = "loss"
RUN_LENGTH = 150
MAX_TAGS = 40  # AWS's limit is 50 tags per resource
SETTLED = {"Created", "Updated", "Started"}
SLOW = 25  # seconds: a call slower than this is shown with the run's output


class Client(threading.Thread):
    """A workload thread: it calls until told to stop and keeps only what was acknowledged.
    A call that fails after the client's own retries is a failure, unless ``allowed`` says
    the failure is the expected answer to a retry."""

    def __init__(self, name: str, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = stop
        self.rng = random.Random(f"{seed}-{name}")
        self.acked = 0
        self.runs: list[str] = []  # acknowledged CreateRun
        self.failures: list[str] = []
        self.slow: list[str] = []
        self.crashed: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as error:  # a bug of the test's own, shown by `progressed`
            self.crashed = error

    def work(self) -> None:
        raise NotImplementedError

    def attempt(
        self,
        what: str,
        call: Callable[..., Any],
        *args: Any,
        allowed: Callable[[Exception], bool] = lambda _: False,
        **kwargs: Any,
    ) -> tuple[bool, Any]:
        """``(True, answer)`` if acknowledged, else ``(False, the exception)``."""
        started = time.monotonic()
        try:
            result = call(*args, **kwargs)
        except Exception as error:
            if not allowed(error):
                self.failures.append(f"{self.name}: {what}: {error!r}"[:600])
            return False, error
        finally:
            self.note_if_slow(what, started)
        self.acked += 1
        return True, result

    def note_if_slow(self, what: str, started: float) -> None:
        """Calls that took long are shown (never asserted on: tests do not time things), to
        tell a hang that the client's retries hid from a fault's latency."""
        took = time.monotonic() - started
        if took > SLOW:
            moment = time.strftime("%H:%M:%S", time.localtime(time.time() - took))
            self.slow.append(f"{self.name}: {what} took {took:.0f} s from {moment}")

    def new_run(self, client: MlflowClient, experiment_id: str) -> str | None:
        """A run, tried until acknowledged (or the workload stops)."""
        while not self.stopping.is_set():
            ok, run = self.attempt("create_run", client.create_run, experiment_id)
            if ok:
                self.runs.append(run.info.run_id)
                return str(run.info.run_id)
        return None

    def progressed(self, mark: int) -> bool:
        if self.crashed is not None:
            raise AssertionError(f"{self.name} crashed: {self.crashed!r}") from self.crashed
        return self.acked > mark


class Training(Client):
    def __init__(self, stop: threading.Event, seed: int, url: str, experiment_id: str) -> None:
        super().__init__("training", stop, seed)
        self.url, self.experiment_id = url, experiment_id
        self.metrics: dict[tuple[str, int], float] = {}
        self.params: dict[tuple[str, str], str] = {}

    def work(self) -> None:
        client = MlflowClient(tracking_uri=self.url)
        while not self.stopping.is_set():
            run_id = self.new_run(client, self.experiment_id)
            for step in range(RUN_LENGTH):
                if run_id is None or self.stopping.is_set():
                    return
                value = round(self.rng.uniform(0, 10), 6)
                ok, _ = self.attempt(
                    f"log_metric {run_id} step {step}",
                    client.log_metric,
                    run_id,
                    METRIC,
                    value,
                    timestamp=int(time.time() * 1000),
                    step=step,
                )
                if ok:
                    self.metrics[(run_id, step)] = value
                if step % 20 == 0:
                    key = f"p{step}"
                    ok, _ = self.attempt(
                        f"log_param {run_id} {key}", client.log_param, run_id, key, str(value)
                    )
                    if ok:
                        self.params[(run_id, key)] = str(value)


class Artifacts(Client):
    def __init__(
        self, stop: threading.Event, seed: int, url: str, experiment_id: str, folder: Path
    ) -> None:
        super().__init__("artifacts", stop, seed)
        self.url, self.experiment_id, self.folder = url, experiment_id, folder
        self.files: dict[tuple[str, str], str] = {}  # (run, artifact path) -> sha256

    def work(self) -> None:
        client = MlflowClient(tracking_uri=self.url)
        run_id = self.new_run(client, self.experiment_id)
        self.folder.mkdir(parents=True)
        number = 0
        while run_id is not None and not self.stopping.is_set():
            content = self.rng.randbytes(self.rng.randint(1, 64 * 1024))
            local = self.folder / f"blob-{number:04}.bin"
            local.write_bytes(content)
            ok, _ = self.attempt(
                f"log_artifact {local.name}", client.log_artifact, run_id, str(local), "blobs"
            )
            if ok:
                self.files[(run_id, f"blobs/{local.name}")] = hashlib.sha256(content).hexdigest()
            number += 1
            time.sleep(0.05)


def _already_exists(error: Exception) -> bool:
    return isinstance(error, MlflowException) and error.error_code == "RESOURCE_ALREADY_EXISTS"


class Registry(Client):
    def __init__(self, stop: threading.Event, seed: int, url: str, experiment_id: str) -> None:
        super().__init__("registry", stop, seed)
        self.url, self.experiment_id = url, experiment_id
        self.models: list[str] = []
        self.versions: dict[tuple[str, str], tuple[str, str]] = {}  # -> (source, run)

    def work(self) -> None:
        client = MlflowClient(tracking_uri=self.url)
        run_id = self.new_run(client, self.experiment_id)
        if run_id is None:
            return
        source = client.get_run(run_id).info.artifact_uri
        number = 0
        while not self.stopping.is_set():
            model = f"chaos-model-{number:03}"
            number += 1
            # "Already exists": an earlier try within the client's retries created it and its
            # answer was lost. The model is there, but was never acknowledged.
            ok, answer = self.attempt(
                f"create_registered_model {model}",
                client.create_registered_model,
                model,
                allowed=_already_exists,
            )
            if ok:
                self.models.append(model)
            elif not _already_exists(answer):
                continue
            for _ in range(2):
                ok, version = self.attempt(
                    f"create_model_version {model}",
                    client.create_model_version,
                    model,
                    source,
                    run_id=run_id,
                )
                if ok:
                    self.versions[(model, str(version.version))] = (source, run_id)
            time.sleep(0.3)


class ControlPlane(Client):
    def __init__(self, stop: threading.Event, seed: int, daemon: Daemon) -> None:
        super().__init__("control-plane", stop, seed)
        self.daemon = daemon
        self.tags: dict[str, str] = {}

    def work(self) -> None:
        sm = self.daemon.client(
            config=Config(
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
            )
        )
        number = 0
        while not self.stopping.is_set():
            self.attempt(
                "describe", persist, sm.describe_mlflow_tracking_server, TrackingServerName=NAME
            )
            self.attempt("list", persist, sm.list_mlflow_tracking_servers)
            if number % 2 == 0 and number // 2 < MAX_TAGS:
                key, value = f"chaos-{number:03}", self.rng.choice("abcdefgh") * 3
                ok, _ = self.attempt(
                    f"add_tags {key}",
                    persist,
                    sm.add_tags,
                    ResourceArn=ARN,
                    Tags=[{"Key": key, "Value": value}],
                )
                if ok:
                    self.tags[key] = value
            number += 1
            time.sleep(0.3)


@dataclass(frozen=True)
class Fault:
    kind: str  # "daemon" or "worker"
    pause: float  # seconds of workload before it
    down: float  # for "daemon": seconds before it is started again
    victim: int  # for "worker": which live worker, by index


def schedule(rng: random.Random) -> list[Fault]:
    kinds = ["daemon", "worker"] + [
        rng.choice(["daemon", "worker"]) for _ in range(rng.randint(1, 3))
    ]
    rng.shuffle(kinds)
    return [
        Fault(kind, round(rng.uniform(1, 5), 2), round(rng.uniform(0, 1.5), 2), rng.randrange(2))
        for kind in kinds
    ]


def inject(fault: Fault, daemon: Daemon) -> str:
    if fault.kind == "daemon":
        daemon.kill()
        time.sleep(fault.down)
        daemon.start()
        return f"kill -9 daemon, down {fault.down} s"
    pids = wait_for(lambda: live_workers(daemon.data_dir), 90, what="a live worker to kill")
    victim = pids[fault.victim % len(pids)]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), 10, what=f"worker {victim} to die")
    return f"kill -9 worker {victim} (of {pids})"


def received(bodies: list[dict[str, Any]]) -> Iterator[tuple[str, ...]]:
    """What each delivered event says happened, in the terms the workload recorded."""
    for body in bodies:
        kind, detail = body["detail-type"], body["detail"]
        if kind.startswith("SageMaker Tracking Server "):
            yield ("lifecycle", detail["TrackingServerStatus"])
        elif kind == "SageMaker MLFlow Tracking Server Creating Run":
            yield ("run", detail["Response"]["run"]["info"]["run_id"])
        elif kind == "SageMaker MLFlow Tracking Server Creating RegisteredModel":
            yield ("model", detail["Request"]["name"])
        elif kind == "SageMaker MLFlow Tracking Server Creating ModelVersion":
            version = detail["Response"]["model_version"]
            yield ("version", version["name"], str(version["version"]))
        elif kind == "AWS API Call via CloudTrail" and detail["eventName"] == "AddTags":
            for tag in detail["requestParameters"]["tags"]:
                yield ("tag", tag["key"])


def test_acknowledged_writes_survive_kill_9_of_daemon_and_workers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    receiver: Receiver,
) -> None:
    # The sagemaker-mlflow plugin's header provider warns at every call whose tracking URI is
    # not an ARN (here, the gateway's URL), the registry client notes every version it awaits:
    # thousands of lines that would hide the schedule.
    caplog.set_level(logging.ERROR, logger="mlflow.tracking.request_header.registry")
    caplog.set_level(logging.WARNING, logger="mlflow.store.model_registry.abstract_store")
    seed = chaos_seed()
    rng = random.Random(seed)
    faults = schedule(rng)
    print(f"\nchaos seed {seed}: {[(f.kind, f.pause) for f in faults]}")
    daemon = Daemon(tmp_path / "data").start()
    stop = threading.Event()
    clients: list[Client] = []
    try:
        with replayable(seed, daemon.data_dir):
            route_to(daemon, receiver, {"source": ["aws.sagemaker"], "resources": [ARN]})
            sm = daemon.client()
            sm.create_mlflow_tracking_server(
                TrackingServerName=NAME,
                ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
                RoleArn=ROLE,
                TrackingServerSize="Medium",
            )
            url = daemon.wait_status(NAME, "Created")["TrackingServerUrl"]
            wait_for(lambda: len(live_workers(daemon.data_dir)) == 2, 90, what="two workers")
            key, secret = daemon.credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            experiment_id = MlflowClient(tracking_uri=url).create_experiment("chaos")

            training = Training(stop, seed, url, experiment_id)
            artifacts = Artifacts(stop, seed, url, experiment_id, tmp_path / "uploads")
            registry = Registry(stop, seed, url, experiment_id)
            control = ControlPlane(stop, seed, daemon)
            clients = [training, artifacts, registry, control]
            for client in clients:
                client.start()
            wait_for(lambda: all(c.progressed(0) for c in clients), 90, what="every client served")

            for fault in faults:
                time.sleep(fault.pause)
                mark = training.acked
                print(f"  {inject(fault, daemon)}")
                wait_for(
                    lambda mark=mark: training.progressed(mark + 5),
                    120,
                    what=f"training to be served again after {fault}",
                )
            marks = [c.acked for c in clients]
            wait_for(
                lambda: all(c.progressed(m) for c, m in zip(clients, marks, strict=True)),
                120,
                what="every client to be served after the last fault",
            )
            stop.set()
            for client in clients:
                client.join(180)
            assert not [c.name for c in clients if c.is_alive()], "clients that never returned"
            print(
                f"  acknowledged: {len(training.metrics)} metric steps in "
                f"{len(training.runs)} runs, {len(training.params)} params, "
                f"{len(artifacts.files)} artifacts, {len(registry.models)} models, "
                f"{len(registry.versions)} versions, {len(control.tags)} tags, "
                f"{sum(c.acked for c in clients)} calls"
            )

            for line in [line for c in clients for line in c.slow]:
                print(f"  slow: {line}")
            _check_server(daemon)
            failures = [failure for c in clients for failure in c.failures]
            assert not failures, f"calls that failed after the client's retries: {failures}"
            _check_tracking(url, training, artifacts, registry, tmp_path / "downloads")
            tags = {
                tag["Key"]: tag["Value"]
                for page in sm.get_paginator("list_tags").paginate(ResourceArn=ARN)
                for tag in page["Tags"]
            }
            lost = {k: v for k, v in control.tags.items() if tags.get(k) != v}
            assert not lost, f"acknowledged tags not on the server: {lost}"
            _check_trail(daemon, training, control)
            _check_events(receiver, clients, registry, control)

            daemon.stop()
            assert daemon.proc is not None and daemon.proc.returncode == 0, (
                f"the daemon exited with {daemon.proc.returncode if daemon.proc else None} "
                "on SIGTERM"
            )
            verified = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mlfleet",
                    "audit",
                    "verify",
                    "--data-dir",
                    str(daemon.data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        stop.set()
        for client in clients:
            client.join(60)
        daemon.stop()


def _check_server(daemon: Daemon) -> None:
    """Not left in a transitional status, serving, with both its workers."""
    sm = daemon.client()

    def settled() -> dict[str, Any] | None:
        desc = sm.describe_mlflow_tracking_server(TrackingServerName=NAME)
        ok = desc["TrackingServerStatus"] in SETTLED and desc["IsActive"] == "Active"
        return desc if ok else None

    wait_for(settled, 90, what=f"{NAME} to settle ({SETTLED}, Active)")
    wait_for(lambda: len(live_workers(daemon.data_dir)) == 2, 90, what="the server's two workers")


def _check_tracking(
    url: str, training: Training, artifacts: Artifacts, registry: Registry, downloads: Path
) -> None:
    client = MlflowClient(tracking_uri=url)
    for run_id in training.runs:
        history = client.get_metric_history(run_id, METRIC)
        counts = Counter(m.step for m in history)
        values = {m.step: m.value for m in history}
        acked = {step: v for (run, step), v in training.metrics.items() if run == run_id}
        lost = sorted(step for step in acked if counts[step] == 0)
        doubled = sorted(step for step in acked if counts[step] > 1)
        changed = sorted(s for s in acked if counts[s] == 1 and values[s] != acked[s])
        assert not (lost or doubled or changed), (
            f"run {run_id}, metric {METRIC}: acknowledged steps lost {lost}, "
            f"recorded more than once {doubled}, with another value {changed}"
        )
        params = client.get_run(run_id).data.params
        expected = {k: v for (run, k), v in training.params.items() if run == run_id}
        assert params.items() >= expected.items(), (run_id, expected, params)

    for (run_id, path), digest in artifacts.files.items():
        local = client.download_artifacts(run_id, path, str(downloads / run_id))
        got = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        assert got == digest, f"artifact {path} of run {run_id}: sha256 {got}, not {digest}"

    for model in registry.models:
        assert client.get_registered_model(model).name == model
    for (model, version), (source, run_id) in registry.versions.items():
        found = client.get_model_version(model, version)
        assert (found.source, found.run_id) == (source, run_id), (model, version, found)


def _check_trail(daemon: Daemon, training: Training, control: ControlPlane) -> None:
    """A LogMetric data event for every acknowledged step, an AddTags record for every
    acknowledged tag. A record of a call served on a handed-over connection is appended just
    after the answer (by the next worker to start if the daemon died first): waited for."""
    acked = set(training.metrics)

    def logged() -> set[tuple[str, int]]:
        steps = set()
        for record in trail_records(daemon, "LogMetric"):
            body = (record.get("requestParameters") or {}).get("body") or {}
            run, step = body.get("run_id") or body.get("run_uuid"), body.get("step")
            if record["resources"][0]["ARN"] == ARN and body.get("key") == METRIC:
                steps.add((run, None if step is None else int(step)))
        return steps

    missing: set[tuple[str, int]] = set()

    def complete() -> bool:
        missing.clear()
        missing.update(acked - logged())
        return not missing

    try:
        wait_for(complete, 60, 2, what="the LogMetric data events")
    except AssertionError:
        raise AssertionError(
            f"{len(missing)} of {len(acked)} acknowledged metric steps have no LogMetric data "
            f"event: {sorted(missing)[:30]}"
        ) from None

    tagged = set()
    for record in trail_records(daemon, "AddTags"):
        if record.get("errorCode") is None and record["resources"][0]["ARN"] == ARN:
            tagged |= {t["key"] for t in record["requestParameters"]["tags"]}
    assert not set(control.tags) - tagged, (
        f"acknowledged AddTags without a record: {sorted(set(control.tags) - tagged)}"
    )


def _check_events(
    receiver: Receiver, clients: list[Client], registry: Registry, control: ControlPlane
) -> None:
    """Every event the rule should have delivered arrived, at least once."""
    expected = {("lifecycle", "Creating"), ("lifecycle", "Created")}
    expected |= {("run", run) for c in clients for run in c.runs}
    expected |= {("model", model) for model in registry.models}
    expected |= {("version", model, version) for model, version in registry.versions}
    expected |= {("tag", key) for key in control.tags}
    missing: set[tuple[str, ...]] = set()

    def arrived() -> bool:
        missing.clear()
        missing.update(expected - set(received(receiver.bodies())))
        return not missing

    try:
        wait_for(arrived, 90, 0.5, what="the events")
    except AssertionError:
        raise AssertionError(
            f"{len(missing)} of {len(expected)} expected events never arrived: "
            f"{sorted(missing)[:30]}"
        ) from None
