"""A PostgreSQL restart under load loses nothing, and service resumes by itself.

A daemon whose control plane and tracking-server databases are in a private PostgreSQL cluster
(``support.postgres``: the machine's shared cluster is never restarted), one Medium tracking
server, and a rule sending the server's events to a local receiver. Two clients run meanwhile,
each keeping only what was acknowledged: an MLflow training loop (one metric per step, the MLflow
client's own retries: 7, backoff factor 1) and boto3 (Describe, and AddTags with a new key each
time, retried as a user's script retries: ``support.chaos.persist``).

Two faults, one after the other: an ``immediate`` restart of PostgreSQL (a crash, recovered from
its WAL), then a stop of a few seconds and a start. While it is stopped, a call made without
retries is answered quickly and in its protocol's shape: ``503`` with ``Retry-After`` and
MLflow's ``{"error_code", "message"}`` on the data path, AWS's ``ServiceUnavailable`` on the
control plane, with no SQL or traceback in the answer. After each fault the training loop must be
served again with nothing restarted by hand.

Then: every acknowledged metric step is in its run's history exactly once with its value, every
acknowledged tag is on the server, the trail has a LogMetric data event for every acknowledged
step and an AddTags record for every acknowledged tag, the receiver got the lifecycle events, a
Creating Run event for every acknowledged run and an API-call event for every acknowledged
AddTags; the server is ``Created`` and Active, served by the same two worker processes as before
the faults (no restart loop); no client call failed after its retries; on SIGTERM the daemon
exits 0 and ``mlfleet audit verify`` finds the chain intact.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from support.aws import ACCOUNT
from support.chaos import check_trail, live_workers, persist, stop_and_verify
from support.daemon import Daemon
from support.events import Receiver, route_to
from support.postgres import PrivateCluster
from support.waiting import wait_for

ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"
NAME = "steady"
ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/{NAME}"
METRIC = "loss"
RUN_LENGTH = 100
MAX_TAGS = 40  # AWS's limit is 50 tags per resource
DOWN_SECONDS = 4
# Words an answer must not show its caller: what failed inside is for the daemon's log.
INTERNALS = ("Traceback", "[SQL", "psycopg", "sqlalche", "OperationalError")


class Client(threading.Thread):
    """A workload thread: it calls until told to stop and keeps only what was acknowledged;
    a call that fails after the client's own retries is a failure."""

    def __init__(self, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = stop
        self.acked = 0
        self.failures: list[str] = []
        self.crashed: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as error:  # a bug of the test's own, shown by `progressed`
            self.crashed = error

    def work(self) -> None:
        raise NotImplementedError

    def attempt(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        try:
            call(*args, **kwargs)
        except Exception as error:
            self.failures.append(f"{self.name}: {what}: {error!r}"[:600])
            return False
        self.acked += 1
        return True

    def progressed(self, mark: int) -> bool:
        if self.crashed is not None:
            raise AssertionError(f"{self.name} crashed: {self.crashed!r}") from self.crashed
        return self.acked > mark


class Training(Client):
    def __init__(self, stop: threading.Event, url: str, experiment_id: str) -> None:
        super().__init__("training", stop)
        self.url, self.experiment_id = url, experiment_id
        self.rng = random.Random(f"{NAME}-training")
        self.runs: list[str] = []
        self.metrics: dict[tuple[str, int], float] = {}

    def work(self) -> None:
        client = MlflowClient(tracking_uri=self.url)
        while not self.stopping.is_set():
            run = None
            while run is None and not self.stopping.is_set():
                try:
                    run = client.create_run(self.experiment_id).info.run_id
                except Exception as error:
                    self.failures.append(f"create_run: {error!r}"[:600])
            if run is None:
                return
            self.runs.append(run)
            for step in range(RUN_LENGTH):
                if self.stopping.is_set():
                    return
                value = round(self.rng.uniform(0, 10), 6)
                stamp = int(time.time() * 1000)
                if self.attempt(
                    f"log_metric {run} step {step}",
                    client.log_metric,
                    run,
                    METRIC,
                    value,
                    timestamp=stamp,
                    step=step,
                ):
                    self.metrics[(run, step)] = value


class ControlPlane(Client):
    def __init__(self, stop: threading.Event, daemon: Daemon) -> None:
        super().__init__("control-plane", stop)
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
            if number < MAX_TAGS:
                key, value = f"restart-{number:03}", f"v{number}"
                if self.attempt(
                    f"add_tags {key}",
                    persist,
                    sm.add_tags,
                    ResourceArn=ARN,
                    Tags=[{"Key": key, "Value": value}],
                ):
                    self.tags[key] = value
            number += 1
            time.sleep(0.5)


def test_acknowledged_writes_survive_postgresql_restarts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    receiver: Receiver,
) -> None:
    # The sagemaker-mlflow plugin's header provider warns at every call whose tracking URI is
    # not an ARN (here, the gateway's URL).
    caplog.set_level(logging.ERROR, logger="mlflow.tracking.request_header.registry")
    stop = threading.Event()
    clients: list[Client] = []
    with PrivateCluster(tmp_path / "postgres") as cluster:
        database_url = cluster.url_of("mlfleet")
        daemon = Daemon(tmp_path / "data", "--database-url", database_url)
        try:
            daemon.start()
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
            workers = live_workers(daemon.data_dir)
            key, secret = daemon.credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            experiment_id = MlflowClient(tracking_uri=url).create_experiment("restarts")

            training = Training(stop, url, experiment_id)
            control = ControlPlane(stop, daemon)
            clients = [training, control]
            for client in clients:
                client.start()
            wait_for(lambda: all(c.progressed(5) for c in clients), 90, what="both clients served")

            for fault in ("immediate restart", "stop and start"):
                marks = [c.acked for c in clients]
                if fault == "immediate restart":
                    cluster.restart("immediate")
                else:
                    cluster.stop("fast")
                    _check_refusals_while_down(daemon, url, training)
                    time.sleep(DOWN_SECONDS)
                    cluster.start()
                print(f"\n  PostgreSQL: {fault}")
                wait_for(
                    lambda marks=marks: all(
                        c.progressed(m + 5) for c, m in zip(clients, marks, strict=True)
                    ),
                    150,
                    what=f"both clients to be served again after the {fault}",
                )
            stop.set()
            for client in clients:
                client.join(180)
            assert not [c.name for c in clients if c.is_alive()], "clients that never returned"
            print(
                f"  acknowledged: {len(training.metrics)} metric steps in {len(training.runs)} "
                f"runs, {len(control.tags)} tags, {sum(c.acked for c in clients)} calls"
            )

            _check_server(daemon, workers)
            failures = [failure for c in clients for failure in c.failures]
            assert not failures, f"calls that failed after the client's retries: {failures}"
            _check_metrics(url, training)
            tags = {
                tag["Key"]: tag["Value"]
                for page in sm.get_paginator("list_tags").paginate(ResourceArn=ARN)
                for tag in page["Tags"]
            }
            lost = {k: v for k, v in control.tags.items() if tags.get(k) != v}
            assert not lost, f"acknowledged tags not on the server: {lost}"
            check_trail(daemon, ARN, METRIC, set(training.metrics), set(control.tags))
            _check_events(receiver, training, control)

            stop_and_verify(daemon, "--database-url", database_url)
        finally:
            stop.set()
            for client in clients:
                client.join(60)
            daemon.stop()


def _check_refusals_while_down(daemon: Daemon, url: str, training: Training) -> None:
    """With PostgreSQL stopped, calls made without retries are refused at once, as their
    protocol says "try again later", and tell nothing of what failed inside."""
    run = training.runs[-1]
    key, secret = daemon.credentials
    for method, path, body in (
        ("GET", f"/api/2.0/mlflow/runs/get?run_id={run}", None),
        (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": run, "key": "probe", "value": 1.0, "timestamp": 1, "step": 0},
        ),
    ):
        # A new connection each time: one handed over to a worker would be served there.
        answer = requests.request(
            method,
            url + path,
            json=body,
            auth=(key, secret),
            timeout=30,
            headers={"Connection": "close"},
        )
        assert answer.status_code == 503, (method, path, answer.status_code, answer.text)
        assert answer.headers.get("Retry-After"), (method, path, dict(answer.headers))
        assert answer.json().get("error_code"), answer.text
        assert not [word for word in INTERNALS if word in answer.text], answer.text

    sm = daemon.client(config=Config(retries={"max_attempts": 1}, read_timeout=30))
    for call, kwargs in (
        (sm.describe_mlflow_tracking_server, {"TrackingServerName": NAME}),
        (sm.add_tags, {"ResourceArn": ARN, "Tags": [{"Key": "probe", "Value": "down"}]}),
    ):
        with pytest.raises(ClientError) as refused:
            call(**kwargs)
        error = refused.value.response
        assert error["Error"]["Code"] == "ServiceUnavailable", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 503, error
        assert error["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), error
        assert not [word for word in INTERNALS if word in error["Error"].get("Message", "")]


def _check_server(daemon: Daemon, workers: list[int]) -> None:
    """Created, Active, and served by the workers it had before the faults: none was
    restarted, none marked failed."""
    sm = daemon.client()

    def settled() -> dict[str, Any] | None:
        desc = sm.describe_mlflow_tracking_server(TrackingServerName=NAME)
        return desc if desc["IsActive"] == "Active" else None

    desc = wait_for(settled, 90, what=f"{NAME} to be Active")
    assert desc["TrackingServerStatus"] == "Created", desc
    assert live_workers(daemon.data_dir) == workers, (
        f"workers before the faults {workers}, after {live_workers(daemon.data_dir)}"
    )


def _check_metrics(url: str, training: Training) -> None:
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


def _delivered(bodies: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for body in bodies:
        kind, detail = body["detail-type"], body["detail"]
        if kind.startswith("SageMaker Tracking Server "):
            yield ("lifecycle", detail["TrackingServerStatus"])
        elif kind == "SageMaker MLFlow Tracking Server Creating Run":
            yield ("run", detail["Response"]["run"]["info"]["run_id"])
        elif kind == "AWS API Call via CloudTrail" and detail["eventName"] == "AddTags":
            for tag in detail["requestParameters"]["tags"]:
                yield ("tag", tag["key"])


def _check_events(receiver: Receiver, training: Training, control: ControlPlane) -> None:
    """Every event the rule should have delivered arrived, at least once."""
    expected = {("lifecycle", "Creating"), ("lifecycle", "Created")}
    expected |= {("run", run) for run in training.runs}
    expected |= {("tag", key) for key in control.tags}
    missing: set[tuple[str, str]] = set()

    def arrived() -> bool:
        missing.clear()
        missing.update(expected - set(_delivered(receiver.bodies())))
        return not missing

    try:
        wait_for(arrived, 90, 0.5, what="the events")
    except AssertionError:
        raise AssertionError(
            f"{len(missing)} of {len(expected)} expected events never arrived: "
            f"{sorted(missing)[:30]}"
        ) from None
