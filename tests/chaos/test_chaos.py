"""Chaos: faults injected under a mixed client workload, then every acknowledged write checked.

Three runs, each with a seed of its own, one per setup: SQLite with a local-folder artifact
store; PostgreSQL (a private cluster, so it can be restarted) with a local-folder store; and
PostgreSQL with an S3 store, what a team runs. S3 is moto's server behind a link the test can
cut (``support.cut``). The daemon's data dir and the local artifact store lie on a small tmpfs
that the test fills (``support.disk``; root only). Each run: one daemon, one Medium tracking
server that registers logged models as model packages, an endpoint serving one of them, and a
rule that sends the server's events (lifecycle, MLflow, API calls) to a local receiver. Six
client threads run meanwhile, each recording only what the server acknowledged:

* training: the MLflow client logs a metric at every step (and a param every 20 steps), in runs
  of 150 steps;
* artifacts: ``log_artifact`` of small files of random bytes, their sha256 kept;
* registry: registered models, two versions of each (source: a run's artifact URI);
* control plane: boto3 Describe, List, and AddTags with a new key each time (at most 40 tags);
* inference: InvokeEndpoint, each answer checked against the model's own predictions;
* browsing: the MLflow UI's ajax reads (experiments, runs) in a presigned URL's session.

Clients retry as users' clients do: the MLflow client with its own retries (7, backoff factor
1, ``Retry-After`` honoured, a 30 s read timeout), boto3 in a loop on connection errors and 5xx
answers (``support.chaos.persist``). A call refused for a full disk (507 for MLflow's API) is
not retried: it is a refusal, allowed while the disk is full, and must have written nothing.
Calls that took longer than 25 s are printed, never asserted on (tests do not time things).

Faults, one of each kind the setup has, in an order chosen by the seed:
``kill -9`` of the daemon (started again on the same data dir after 0-1.5 s), of one MLflow
worker, of the endpoint's instance; the data dir's disk filled for 1-4 s, then freed; S3 cut
off for 1-4 s; PostgreSQL crashed (``immediate`` restart) or stopped for 1-4 s. After each fault
the test waits for the training loop and the endpoint to be served again, then for a random
0.5-2 s, then injects the next. The seed fixes the schedule (kinds, pauses, victims), not the
request a fault lands on: ``MLFLEET_CHAOS_SEED=<seed>`` with the run's test id replays its
schedule, which reproduces a failure with good odds, not with certainty.

Then, with every fault over and the daemon up: each acknowledged metric (key, step, value) is in
its run's history exactly once, each param is there, each artifact downloads with its sha256 and
every artifact in the store is one whole upload (none half-written), each model version exists
with its source and exactly one model package of its own (registrations that met
a fault retried within a minute), each tag is on the server; the trail holds a
LogMetric data event for every acknowledged step and an AddTags record for every acknowledged
tag; the receiver got Creating and Created, a Creating Run / RegisteredModel / ModelVersion
event for every acknowledged one and an API-call event for every acknowledged AddTags; the
server is not left in a transitional status and runs its two workers, the endpoint is InService;
no client call failed after its retries (except a create answered "already exists" because an
earlier try of it had been done before its answer was lost, and refusals for the full disk);
after SIGTERM the daemon exits 0 and ``mlfleet audit verify`` finds the chain intact.

Not injected yet: an event receiver that is down or refusing during the faults (retries, dead
letters); a hung worker (SIGSTOP) rather than a dead one; faults during Stop, Start and Update.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support.aws import ACCOUNT
from support.chaos import (
    alive,
    chaos_seed,
    check_trail,
    live_workers,
    persist,
    replayable,
    stop_and_verify,
)
from support.cut import CuttableLink
from support.daemon import Daemon
from support.disk import SmallDisk
from support.events import Receiver, route_to
from support.postgres import PrivateCluster
from support.serving import FEATURES, log_model, scoring_pids, wait_endpoint
from support.waiting import wait_for

ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
PACKAGE_TAG = "sagemaker.model_package_arn"
NAME = "chaos"
ENDPOINT = "chaos-endpoint"
ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/{NAME}"
BUCKET = "chaos-artifacts"
METRIC = "loss"
RUN_LENGTH = 150
MAX_TAGS = 40  # AWS's limit is 50 tags per resource
SETTLED = {"Created", "Updated", "Started"}
SLOW = 25  # seconds: a call slower than this is shown with the run's output
DISK_MIB = 512
LABELS = [0, 1, 0, 1, 1]


@dataclass(frozen=True)
class Setup:
    name: str
    postgres: bool
    s3: bool

    def kinds(self, disk: bool) -> list[str]:
        kinds = ["daemon", "worker", "endpoint"]
        kinds += ["disk"] * disk + ["postgres"] * self.postgres + ["s3"] * self.s3
        return kinds


SETUPS = [
    Setup("sqlite-file", postgres=False, s3=False),
    Setup("postgresql-file", postgres=True, s3=False),
    Setup("postgresql-s3", postgres=True, s3=True),
]


class FullDisk:
    """When the disk was full: a call that overlapped such a time may be refused for it."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []
        self.since: float | None = None

    def filled(self) -> None:
        self.since = time.monotonic()

    def freed(self) -> None:
        assert self.since is not None
        self.windows.append((self.since, time.monotonic()))
        self.since = None

    def overlaps(self, started: float, ended: float) -> bool:
        if self.since is not None and ended >= self.since:
            return True
        return any(started <= end and ended >= start for start, end in self.windows)


def refused_for_space(error: Exception) -> bool:
    """MLflow's answer to a write the full disk refused: 507, RESOURCE_EXHAUSTED."""
    if isinstance(error, MlflowException):
        return error.error_code == "RESOURCE_EXHAUSTED" or "507" in str(error)
    if isinstance(error, requests.HTTPError):
        return error.response is not None and error.response.status_code == 507
    return False


class Client(threading.Thread):
    """A workload thread: it calls until told to stop and keeps only what was acknowledged.
    A call that fails after the client's own retries is a failure, unless ``allowed`` says
    the failure is the expected answer to a retry, or the disk was full meanwhile and the
    call was refused for it (kept in ``refused``)."""

    def __init__(self, name: str, stop: threading.Event, seed: int, full: FullDisk) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = stop
        self.full = full
        self.rng = random.Random(f"{seed}-{name}")
        self.acked = 0
        self.runs: list[str] = []  # acknowledged CreateRun
        self.failures: list[str] = []
        self.refused: list[str] = []
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
            if refused_for_space(error) and self.full.overlaps(started, time.monotonic()):
                self.refused.append(what)
            elif not allowed(error):
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
            time.sleep(0.2)
        return None

    def progressed(self, mark: int) -> bool:
        if self.crashed is not None:
            raise AssertionError(f"{self.name} crashed: {self.crashed!r}") from self.crashed
        return self.acked > mark


class Training(Client):
    def __init__(
        self, stop: threading.Event, seed: int, full: FullDisk, url: str, experiment_id: str
    ) -> None:
        super().__init__("training", stop, seed, full)
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
        self,
        stop: threading.Event,
        seed: int,
        full: FullDisk,
        url: str,
        experiment_id: str,
        folder: Path,
    ) -> None:
        super().__init__("artifacts", stop, seed, full)
        self.url, self.experiment_id, self.folder = url, experiment_id, folder
        self.files: dict[tuple[str, str], str] = {}  # (run, artifact path) -> sha256
        self.tried: dict[tuple[str, str], str] = {}  # every upload, acknowledged or not

    def work(self) -> None:
        client = MlflowClient(tracking_uri=self.url)
        run_id = self.new_run(client, self.experiment_id)
        self.folder.mkdir(parents=True)
        number = 0
        while run_id is not None and not self.stopping.is_set():
            content = self.rng.randbytes(self.rng.randint(1, 64 * 1024))
            local = self.folder / f"blob-{number:04}.bin"
            local.write_bytes(content)
            digest = hashlib.sha256(content).hexdigest()
            self.tried[(run_id, f"blobs/{local.name}")] = digest
            ok, _ = self.attempt(
                f"log_artifact {local.name}", client.log_artifact, run_id, str(local), "blobs"
            )
            if ok:
                self.files[(run_id, f"blobs/{local.name}")] = digest
            number += 1
            time.sleep(0.05)


def _already_exists(error: Exception) -> bool:
    return isinstance(error, MlflowException) and error.error_code == "RESOURCE_ALREADY_EXISTS"


class Registry(Client):
    def __init__(
        self, stop: threading.Event, seed: int, full: FullDisk, url: str, experiment_id: str
    ) -> None:
        super().__init__("registry", stop, seed, full)
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


def _patient() -> Config:
    return Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=60
    )


class ControlPlane(Client):
    def __init__(self, stop: threading.Event, seed: int, full: FullDisk, daemon: Daemon) -> None:
        super().__init__("control-plane", stop, seed, full)
        self.daemon = daemon
        self.tags: dict[str, str] = {}

    def work(self) -> None:
        sm = self.daemon.client(config=_patient())
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


class Inference(Client):
    def __init__(
        self, stop: threading.Event, seed: int, full: FullDisk, daemon: Daemon, expected: Any
    ) -> None:
        super().__init__("inference", stop, seed, full)
        self.daemon = daemon
        self.expected = expected

    def work(self) -> None:
        runtime = self.daemon.client("sagemaker-runtime", config=_patient())
        body = json.dumps({"inputs": FEATURES.tolist()}).encode()
        while not self.stopping.is_set():
            ok, answer = self.attempt(
                "invoke_endpoint",
                persist,
                runtime.invoke_endpoint,
                EndpointName=ENDPOINT,
                ContentType="application/json",
                Body=body,
            )
            if ok:
                predictions = json.loads(answer["Body"].read())["predictions"]
                if predictions != self.expected:
                    self.failures.append(f"inference: predicted {predictions}")
            time.sleep(0.1)


class Browsing(Client):
    """The MLflow UI's own reads (ajax-api), in a session opened by a presigned URL: what a
    browser on the Runs page sends. Like a user who reloads, it tries again on a 5xx or a lost
    connection; a refused session (401, 403) is a failure."""

    def __init__(
        self,
        stop: threading.Event,
        seed: int,
        full: FullDisk,
        daemon: Daemon,
        url: str,
        experiment_id: str,
    ) -> None:
        super().__init__("browsing", stop, seed, full)
        self.daemon, self.url, self.experiment_id = daemon, url, experiment_id

    def work(self) -> None:
        sm = self.daemon.client(config=_patient())
        presigned = persist(
            sm.create_presigned_mlflow_tracking_server_url,
            TrackingServerName=NAME,
            SessionExpirationDurationInSeconds=43200,
        )["AuthorizedUrl"]
        browser = requests.Session()
        self.attempt("open the UI", _reloaded, browser.get, presigned)
        reads = [
            ("GET", "ajax-api/2.0/mlflow/experiments/search?max_results=25", None),
            (
                "POST",
                "ajax-api/2.0/mlflow/runs/search",
                {"experiment_ids": [self.experiment_id], "max_results": 25},
            ),
        ]
        while not self.stopping.is_set():
            method, path, body = self.rng.choice(reads)
            self.attempt(
                f"{method} {path}",
                _reloaded,
                browser.request,
                method,
                f"{self.url}/{path}",
                json=body,
            )
            time.sleep(0.2)


def _reloaded(call: Callable[..., requests.Response], *args: Any, **kwargs: Any) -> Any:
    """A page's call, again (half a second apart, for at most 120 s) while the answer is a
    5xx or no answer at all; then its JSON, or an HTTPError for any other refusal."""
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = call(*args, timeout=30, **kwargs)
            if answer.status_code < 500 or time.monotonic() > deadline:
                answer.raise_for_status()
                return answer
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@dataclass(frozen=True)
class Fault:
    kind: str  # one of Setup.kinds
    pause: float  # seconds of workload before it
    down: float  # how long the fault lasts: daemon down, disk full, S3 cut, PostgreSQL stopped
    victim: int  # which worker or instance, by index; for "postgres", crash (0) or stop (1)


def schedule(rng: random.Random, kinds: list[str]) -> list[Fault]:
    chosen = list(kinds)
    rng.shuffle(chosen)
    return [
        Fault(
            kind,
            round(rng.uniform(0.5, 2), 2),
            round(rng.uniform(0, 1.5) if kind == "daemon" else rng.uniform(1, 4), 2),
            rng.randrange(2),
        )
        for kind in chosen
    ]


@dataclass
class World:
    """What the faults act on."""

    daemon: Daemon
    full: FullDisk = field(default_factory=FullDisk)
    disk: SmallDisk | None = None
    cluster: PrivateCluster | None = None
    link: CuttableLink | None = None

    @staticmethod
    def database_options_of(cluster: PrivateCluster | None) -> list[str]:
        return ["--database-url", cluster.url_of("mlfleet")] if cluster else []

    @property
    def database_options(self) -> list[str]:
        """What ``mlfleet up`` and the offline commands are given to reach the database."""
        return self.database_options_of(self.cluster)

    def inject(self, fault: Fault) -> str:
        daemon = self.daemon
        if fault.kind == "daemon":
            daemon.kill()
            time.sleep(fault.down)
            daemon.start()
            return f"kill -9 daemon, down {fault.down} s"
        if fault.kind == "worker":
            pids = wait_for(lambda: live_workers(daemon.data_dir), 90, what="a live worker")
            return f"kill -9 worker {_kill(pids[fault.victim % len(pids)])} (of {pids})"
        if fault.kind == "endpoint":
            pids = wait_for(
                lambda: [p for p in scoring_pids(ENDPOINT, "main") if alive(p)],
                90,
                what="a live endpoint instance",
            )
            return f"kill -9 endpoint instance {_kill(pids[fault.victim % len(pids)])}"
        if fault.kind == "disk":
            assert self.disk is not None
            self.full.filled()
            self.disk.fill()
            time.sleep(fault.down)
            self.disk.free()
            self.full.freed()
            return f"disk full for {fault.down} s"
        if fault.kind == "s3":
            assert self.link is not None
            self.link.cut()
            time.sleep(fault.down)
            self.link.restore()
            return f"S3 cut off for {fault.down} s"
        assert fault.kind == "postgres" and self.cluster is not None
        if fault.victim == 0:
            self.cluster.restart("immediate")
            return "PostgreSQL crashed and restarted (immediate)"
        self.cluster.stop()
        time.sleep(fault.down)
        self.cluster.start()
        return f"PostgreSQL stopped for {fault.down} s"


def _kill(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, what=f"process {pid} to die")
    return pid


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


@contextlib.contextmanager
def world_for(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_s3: str
) -> Iterator[tuple[World, str]]:
    """The daemon and what the setup's faults act on; and the server's artifact store URI."""
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(SmallDisk(tmp_path / "disk", DISK_MIB)) if _root() else None
        place = disk.path if disk else tmp_path
        options: list[str] = []
        cluster = None
        if setup.postgres:
            cluster = stack.enter_context(PrivateCluster(keep_log_in=tmp_path))
            options += World.database_options_of(cluster)
        link = None
        store = f"file://{place / 'artifacts'}"
        if setup.s3:
            moto_port = int(moto_s3.rsplit(":", 1)[1])
            link = stack.enter_context(CuttableLink("127.0.0.1", moto_port).running())
            for name, value in {
                "AWS_ACCESS_KEY_ID": "moto",
                "AWS_SECRET_ACCESS_KEY": "moto",
                "MLFLEET_S3_ENDPOINT_URL": link.url,
            }.items():
                monkeypatch.setenv(name, value)
            bucket = f"{BUCKET}-{setup.name}"
            boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(
                Bucket=bucket
            )
            store = f"s3://{bucket}/{tmp_path.name}"
        daemon = Daemon(place / "data", *options)
        if disk:  # the daemon's log, kept when the disk goes
            stack.callback(_keep, daemon.data_dir / "daemon.out", tmp_path / "daemon.out")
        stack.callback(daemon.stop)
        yield World(daemon.start(), disk=disk, cluster=cluster, link=link), store


def _keep(log: Path, to: Path) -> None:
    if log.exists():
        to.write_bytes(log.read_bytes())


def _root() -> bool:
    return os.geteuid() == 0


def deploy(daemon: Daemon) -> Any:
    """The endpoint, InService, of a model logged on the chaos server: the model's own
    predictions for FEATURES."""
    sm = daemon.client()
    package, model = log_model(daemon, NAME, LABELS)
    sm.update_model_package(ModelPackageArn=package, ModelApprovalStatus="Approved")
    sm.create_model(ModelName=ENDPOINT, PrimaryContainer={"ModelPackageName": package})
    sm.create_endpoint_config(
        EndpointConfigName=ENDPOINT,
        ProductionVariants=[
            {
                "VariantName": "main",
                "ModelName": ENDPOINT,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
    assert wait_endpoint(daemon, ENDPOINT)["EndpointStatus"] == "InService"
    return model.predict(FEATURES).tolist()


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_acknowledged_writes_survive_faults(
    setup: Setup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    receiver: Receiver,
    moto_s3: str,
) -> None:
    # The sagemaker-mlflow plugin's header provider warns at every call whose tracking URI is
    # not an ARN (here, the gateway's URL), the registry client notes every version it awaits:
    # thousands of lines that would hide the schedule.
    caplog.set_level(logging.ERROR, logger="mlflow.tracking.request_header.registry")
    caplog.set_level(logging.WARNING, logger="mlflow.store.model_registry.abstract_store")
    seed = chaos_seed()
    rng = random.Random(seed)
    kinds = setup.kinds(disk=_root())
    faults = schedule(rng, kinds)
    print(f"\nchaos seed {seed} ({setup.name}): {[(f.kind, f.pause) for f in faults]}")
    if not _root():
        print("  not injected: a full disk (mounting a small tmpfs needs root)")
    stop = threading.Event()
    clients: list[Client] = []
    started = time.monotonic()
    with world_for(setup, tmp_path, monkeypatch, moto_s3) as (world, store):
        daemon = world.daemon
        try:
            kept = tmp_path / "daemon.out" if world.disk else None
            with replayable(seed, daemon.data_dir, kept):
                route_to(daemon, receiver, {"source": ["aws.sagemaker"], "resources": [ARN]})
                sm = daemon.client()
                sm.create_mlflow_tracking_server(
                    TrackingServerName=NAME,
                    ArtifactStoreUri=store,
                    RoleArn=ROLE,
                    TrackingServerSize="Medium",
                    AutomaticModelRegistration=True,
                )
                url = daemon.wait_status(NAME, "Created")["TrackingServerUrl"]
                wait_for(lambda: len(live_workers(daemon.data_dir)) == 2, 90, what="two workers")
                expected = deploy(daemon)
                key, secret = daemon.credentials
                monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
                monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
                monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
                monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
                monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
                experiment_id = MlflowClient(tracking_uri=url).create_experiment("chaos")

                full = world.full
                training = Training(stop, seed, full, url, experiment_id)
                uploads = tmp_path / "uploads"
                artifacts = Artifacts(stop, seed, full, url, experiment_id, uploads)
                registry = Registry(stop, seed, full, url, experiment_id)
                control = ControlPlane(stop, seed, full, daemon)
                inference = Inference(stop, seed, full, daemon, expected)
                browsing = Browsing(stop, seed, full, daemon, url, experiment_id)
                clients = [training, artifacts, registry, control, inference, browsing]
                for client in clients:
                    client.start()
                wait_for(
                    lambda: all(c.progressed(0) for c in clients), 90, what="every client served"
                )

                began = time.monotonic()
                print(f"  set up in {began - started:.0f} s")
                for fault in faults:
                    time.sleep(fault.pause)
                    marks = training.acked, inference.acked
                    print(f"  {world.inject(fault)}")
                    wait_for(
                        lambda marks=marks: (
                            training.progressed(marks[0] + 5) and inference.progressed(marks[1] + 2)
                        ),
                        120,
                        what=f"training and inference to be served again after {fault}",
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
                    f"{inference.acked} predictions, {sum(c.acked for c in clients)} calls; "
                    f"refused for the full disk: {sum(len(c.refused) for c in clients)}"
                )

                for line in [line for c in clients for line in c.slow]:
                    print(f"  slow: {line}")
                checking = time.monotonic()
                print(f"  faults and workload over in {checking - began:.0f} s")
                _check_server(daemon)
                failures = [failure for c in clients for failure in c.failures]
                assert not failures, (
                    f"{len(failures)} calls failed after the client's retries: {failures[:10]}"
                )
                _check_tracking(url, training, artifacts, registry, tmp_path / "downloads")
                _check_packages(daemon, url, registry)
                tags = {
                    tag["Key"]: tag["Value"]
                    for page in sm.get_paginator("list_tags").paginate(ResourceArn=ARN)
                    for tag in page["Tags"]
                }
                lost = {k: v for k, v in control.tags.items() if tags.get(k) != v}
                assert not lost, f"acknowledged tags not on the server: {lost}"
                check_trail(daemon, ARN, METRIC, set(training.metrics), set(control.tags))
                _check_events(receiver, clients, registry, control)

                stop_and_verify(daemon, *world.database_options)
                print(f"  checked in {time.monotonic() - checking:.0f} s")
        finally:
            stop.set()
            for client in clients:
                client.join(60)


def _check_server(daemon: Daemon) -> None:
    """Not left in a transitional status, serving, with both its workers; the endpoint in
    service."""
    sm = daemon.client()

    def settled() -> dict[str, Any] | None:
        desc = sm.describe_mlflow_tracking_server(TrackingServerName=NAME)
        ok = desc["TrackingServerStatus"] in SETTLED and desc["IsActive"] == "Active"
        return desc if ok else None

    wait_for(settled, 90, what=f"{NAME} to settle ({SETTLED}, Active)")
    wait_for(lambda: len(live_workers(daemon.data_dir)) == 2, 90, what="the server's two workers")
    status = sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"]
    assert status == "InService", f"endpoint {ENDPOINT} is {status}"


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

    # One download of each run's folder (MLflow's client fetches its files in parallel). Every
    # acknowledged upload is there whole; and nothing is half-written: what else is there (an
    # upload whose answer was lost) is all of what was sent.
    for run_id in {run for run, _ in artifacts.tried}:
        folder = Path(client.download_artifacts(run_id, "blobs", str(downloads / run_id)))
        present = {
            f"blobs/{file.name}": hashlib.sha256(file.read_bytes()).hexdigest()
            for file in folder.iterdir()
        }
        for (run, path), digest in artifacts.files.items():
            if run == run_id:
                got = present.get(path)
                assert got == digest, f"artifact {path} of run {run_id}: sha256 {got}, not {digest}"
        for path, got in present.items():
            sent = artifacts.tried.get((run_id, path))
            assert got == sent, (
                f"artifact {path} of run {run_id} is not what was sent (half-written?)"
            )

    for model in registry.models:
        assert client.get_registered_model(model).name == model
    for (model, version), (source, run_id) in registry.versions.items():
        found = client.get_model_version(model, version)
        assert (found.source, found.run_id) == (source, run_id), (model, version, found)


def _check_packages(daemon: Daemon, url: str, registry: Registry) -> None:
    """Automatic registration, exactly once: each version gets a package of its own, a version
    whose registration met a fault within the minute its retries take, and no package is
    without its version."""
    client = MlflowClient(tracking_uri=url)
    sm = daemon.client()

    models = sorted({model for model, _ in registry.versions})

    def tags_of(model: str) -> dict[str, dict[str, str]]:
        versions = client.search_model_versions(f"name = '{model}'")
        return {v.version: client.get_model_version(model, v.version).tags for v in versions}

    def unregistered() -> list[str]:
        return [
            f"{model}/{version}"
            for model in models
            for version, tags in tags_of(model).items()
            if PACKAGE_TAG not in tags
        ]

    deadline = time.monotonic() + 90
    while (missing := unregistered()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, f"versions without a model package 90 s after the faults: {missing}"
    for model in models:
        arns = [str(tags[PACKAGE_TAG]) for tags in tags_of(model).values()]
        assert len(set(arns)) == len(arns), f"{model}: versions share a package: {arns}"
        group = sm.describe_model_package(ModelPackageName=arns[0])["ModelPackageGroupName"]
        packages = [
            summary["ModelPackageArn"]
            for page in sm.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=group
            )
            for summary in page["ModelPackageSummaryList"]
        ]
        assert sorted(packages) == sorted(arns), (
            f"{model}: packages {packages}, tagged on its versions {arns}"
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
