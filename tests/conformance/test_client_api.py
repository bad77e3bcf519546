"""Conformance: the MLflow client's public API gives the same results through an mlfleet
tracking server as against MLflow served directly (``mlflow server``, the installed line).

Each scenario runs the same calls, with the same names, on a fresh mlfleet server and on a
fresh ``mlflow server``; what comes back is compared whole (entities as their protobuf
messages), after ids and times, which differ by nature, are masked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.genai
import pandas as pd
import pytest
import requests
from google.protobuf.json_format import MessageToDict
from mlflow import MlflowClient
from mlflow.entities import (
    DatasetInput,
    InputTag,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
    ViewType,
)
from mlflow.genai.judges import make_judge
from mlflow.genai.scorers import delete_scorer, get_scorer, list_scorers
from mlflow.utils.rest_utils import http_request

from support.aws import unique
from support.daemon import Daemon, free_port
from support.fake_llm import FakeLlm, gateway_endpoint
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"
# Values that differ between two servers by nature: masked before comparing.
VOLATILE_KEYS = {"execution_duration", "timestamp"}
VOLATILE_TEXT = [
    (re.compile(r"\b(?:m-|tr-)?[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"(mlflow-artifacts:/|experiment_id\W+)\d+"), r"\1<n>"),
    (re.compile(r'"utc_time_created": "[^"]*"'), '"utc_time_created": "<time>"'),
]


@dataclass(frozen=True)
class Where:
    """What a scenario may use besides its client: a folder of its own, and the fake LLM
    provider that both servers' AI gateways may reach."""

    tmp: Path
    provider_url: str


def masked(value: Any, key: str = "") -> Any:
    if (
        key in VOLATILE_KEYS
        or key.endswith(("_id", "_time", "_timestamp", "_timestamp_ms", "_ms", "_nano"))
        or key in ("run_uuid", "id")
    ):
        return "<volatile>"
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    if isinstance(value, str):
        for pattern, replacement in VOLATILE_TEXT:
            value = pattern.sub(replacement, value)
        return value
    return value


def shape(entity: Any) -> Any:
    """An entity as plain data: its protobuf message when it has one."""
    if hasattr(entity, "to_proto"):
        return masked(MessageToDict(entity.to_proto(), preserving_proto_field_name=True))
    if hasattr(entity, "to_dictionary"):
        return masked(entity.to_dictionary())
    return masked(entity)


def experiments(client: MlflowClient, name: str, where: Where) -> Any:
    created = client.create_experiment(f"{name}-a", tags={"team": "x"})
    client.set_experiment_tag(created, "stage", "dev")
    client.rename_experiment(created, f"{name}-b")
    found = client.search_experiments(filter_string=f"name LIKE '{name}%'")
    client.delete_experiment(created)
    deleted = client.get_experiment(created).lifecycle_stage
    client.restore_experiment(created)
    return [shape(e) for e in found], deleted, shape(client.get_experiment_by_name(f"{name}-b"))


def runs(client: MlflowClient, name: str, where: Where) -> Any:
    experiment = client.create_experiment(name)
    first = client.create_run(experiment, tags={"k": "v"}, run_name="first").info.run_id
    client.log_batch(
        first,
        metrics=[Metric("m", 1.5, 0, 0), Metric("m", 2.5, 0, 1)],
        params=[Param("p", "1"), Param("q", "with space")],
        tags=[RunTag("t", "x")],
    )
    client.log_metric(first, "m", 3.5, timestamp=0, step=2)
    client.set_terminated(first, "FINISHED")
    second = client.create_run(experiment, run_name="second").info.run_id
    client.log_metric(second, "m", 0.5, timestamp=0, step=0)
    history = client.get_metric_history(first, "m")
    searched = client.search_runs([experiment], "metrics.m > 1", order_by=["metrics.m DESC"])
    client.delete_run(second)
    deleted = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    return (
        shape(client.get_run(first)),
        [shape(m) for m in history],
        [shape(r) for r in searched],
        [r.info.run_name for r in deleted],
    )


def artifacts(client: MlflowClient, name: str, where: Where) -> Any:
    run = client.create_run(client.create_experiment(name)).info.run_id
    client.log_text(run, "hello\n", "notes/a.txt")
    client.log_dict(run, {"a": 1}, "config/c.json")
    folder = where.tmp / name
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "b.bin").write_bytes(bytes(range(256)))
    client.log_artifacts(run, str(folder), "tree")
    listed = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run)]
    nested = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run, "tree/deep")]
    fetched = Path(client.download_artifacts(run, "notes/a.txt", str(where.tmp / f"{name}-dl")))
    return listed, nested, fetched.read_text()


def registry(client: MlflowClient, name: str, where: Where) -> Any:
    client.create_registered_model(name, tags={"a": "b"}, description="d")
    run = client.create_run(client.create_experiment(name)).info.run_id
    for _ in range(2):
        client.create_model_version(name, f"runs:/{run}/model", run, tags={"x": "y"})
    client.set_registered_model_alias(name, "champion", "1")
    client.update_model_version(name, "2", description="second")
    client.set_model_version_tag(name, "2", "k", "v")
    by_alias = client.get_model_version_by_alias(name, "champion")
    searched = client.search_model_versions(f"name = '{name}'", order_by=["version_number ASC"])
    client.delete_model_version(name, "1")
    return (
        shape(client.get_registered_model(name)),
        shape(by_alias),
        [shape(v) for v in searched],
        [shape(m) for m in client.search_registered_models(filter_string=f"name = '{name}'")],
    )


def logged_models(client: MlflowClient, name: str, where: Where) -> Any:
    experiment = client.create_experiment(name)
    model = client.create_logged_model(experiment, name="lm", params={"a": "1"}, tags={"t": "v"})
    client.log_model_params(model.model_id, {"b": "2"})
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    found = client.search_logged_models([experiment])
    return [shape(m) for m in found], shape(client.get_logged_model(model.model_id))


def prompts(client: MlflowClient, name: str, where: Where) -> Any:
    first = client.register_prompt(name, "Hello {{name}}", commit_message="first")
    second = client.register_prompt(name, "Hi {{name}}!", tags={"lang": "en"})
    loaded = client.load_prompt(f"prompts:/{name}/1")
    return (
        (first.version, second.version),
        loaded.template,
        loaded.format(name="Ada"),
        client.load_prompt(name, version=2).tags,
    )


def datasets(client: MlflowClient, name: str, where: Where) -> Any:
    run = client.create_run(client.create_experiment(name)).info.run_id
    frame = pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]})
    dataset = mlflow.data.from_pandas(frame, name="train", targets="y")
    tags = [InputTag("mlflow.data.context", "training")]
    client.log_inputs(run, [DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    inputs = client.get_run(run).inputs
    return [shape(d) for d in inputs.dataset_inputs]


def traces(client: MlflowClient, name: str, where: Where) -> Any:
    experiment = client.create_experiment(name)
    root = client.start_trace("root", inputs={"q": 1}, experiment_id=experiment)
    child = client.start_span(
        "child", trace_id=root.trace_id, parent_id=root.span_id, inputs={"x": 2}
    )
    client.end_span(root.trace_id, child.span_id, outputs={"y": 3})
    client.end_trace(root.trace_id, outputs={"a": 4})
    trace = client.get_trace(root.trace_id)
    spans = sorted((s.name, json.dumps(s.inputs), json.dumps(s.outputs)) for s in trace.data.spans)
    found = client.search_traces(locations=[experiment])
    return spans, trace.info.state, len(found)


def genai_evaluation(client: MlflowClient, name: str, where: Where) -> Any:
    """A judge of MLflow's (``make_judge``) calling a model through the server's AI gateway
    (``gateway:/<endpoint>``, the fake provider behind it), run by ``mlflow.genai.evaluate``."""
    endpoint = gateway_endpoint(client._tracking_client.store, where.provider_url, name=name)
    judge = make_judge(
        name="echoed",
        instructions="Does {{ outputs }} answer {{ inputs }}? Answer yes or no.",
        model=f"gateway:/{endpoint}",
        feedback_value_type=str,
    )
    experiment = client.create_experiment(name)
    mlflow.set_experiment(experiment_id=experiment)
    result = mlflow.genai.evaluate(
        data=[{"inputs": {"question": "q1"}}, {"inputs": {"question": "q2"}}],
        predict_fn=lambda question: f"answer to {question}",
        scorers=[judge],
    )
    assessments = sorted(
        (a.name, a.value, a.rationale)
        for trace in client.search_traces(locations=[experiment])
        for a in trace.info.assessments
    )
    # The judge ran (through the gateway, to the provider) on both sides, not nowhere on both.
    assert [value for judged, value, _ in assessments if judged == "echoed"] == ["yes", "yes"]
    return masked(result.metrics), assessments


def scorers(client: MlflowClient, name: str, where: Where) -> Any:
    """A judge registered as a scorer of an experiment (stored only: running registered
    scorers on the server needs MLflow's job runner), listed, read back and deleted."""
    experiment = client.create_experiment(name)
    judge = make_judge(
        name="polite",
        instructions="Is {{ outputs }} polite?",
        model="openai:/gpt-fake",
        feedback_value_type=bool,
    )
    judge.register(experiment_id=experiment)
    judge.register(name="polite-2", experiment_id=experiment)
    listed = sorted(s.name for s in list_scorers(experiment_id=experiment))
    found = get_scorer(name="polite", experiment_id=experiment)
    delete_scorer(name="polite-2", experiment_id=experiment, version="all")
    remaining = sorted(s.name for s in list_scorers(experiment_id=experiment))
    return listed, found.name, found.instructions, remaining


def prompt_lab(client: MlflowClient, name: str, where: Where) -> Any:
    """The UI's prompt lab: the run it records for a prompt evaluated on a gateway endpoint."""
    experiment = client.create_experiment(name)
    answer = http_request(
        client._tracking_client.store.get_host_creds(),
        "/ajax-api/2.0/mlflow/runs/create-promptlab-run",
        "POST",
        json={
            "experiment_id": experiment,
            "run_name": "lab",
            "prompt_template": "Say {{ word }}",
            "prompt_parameters": [{"key": "word", "value": "hi"}],
            "model_route": "chat",
            "model_parameters": [{"key": "temperature", "value": "0.1"}],
            "model_input": "Say hi",
            "model_output": "hi",
            "mlflow_version": mlflow.__version__,
        },
    )
    assert answer.status_code == 200, answer.text
    run = client.get_run(answer.json()["run"]["info"]["run_id"])
    return shape(run), [(f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id)]


Scenario = Callable[[MlflowClient, str, Where], Any]
SCENARIOS: list[Scenario] = [
    experiments,
    runs,
    artifacts,
    registry,
    logged_models,
    prompts,
    datasets,
    traces,
    genai_evaluation,
    scorers,
    prompt_lab,
]


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` as a user starts it (one worker, no job runner), on loopback."""
    folder = tmp_path_factory.mktemp("direct")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # A provider on loopback, over plain http, as a user would allow a local one.
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "https,http",
    }
    with (folder / "server.out").open("ab") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (folder / "server.out").read_text()[-2000:]
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(healthy, 120, what="mlflow server")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


@pytest.fixture(scope="module")
def through_mlfleet(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh mlfleet tracking server's TrackingServerUrl."""
    name = unique("conformance")
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp(name)}",
        RoleArn=ROLE,
    )
    yield daemon.wait_status(name, "Created")["TrackingServerUrl"]
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_the_client_api_answers_as_mlflow_does(
    scenario: Scenario,
    direct: str,
    through_mlfleet: str,
    daemon: Daemon,
    fake_llm: FakeLlm,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    # A scenario may choose the active experiment (mlflow.genai.evaluate logs to it): it must
    # not outlive the test, where another server has no experiment of that id.
    # (setenv then delenv: the variable is unset during the test and removed again after it.)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "none")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    name = f"{scenario.__name__}-{uuid.uuid4().hex[:6]}"
    answers = []
    for side, url in enumerate((direct, through_mlfleet)):
        # Traces are exported to the global tracking URI, not the client's.
        mlflow.set_tracking_uri(url)
        folder = tmp_path / str(side)
        folder.mkdir()
        where = Where(folder, fake_llm.url)
        answers.append(scenario(MlflowClient(tracking_uri=url), name, where))
    mlflow.set_tracking_uri(None)
    assert answers[1] == answers[0]
