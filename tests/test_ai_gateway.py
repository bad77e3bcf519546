"""MLflow 3's AI gateway on an mlfleet tracking server, behind the egress policy.

A fake OpenAI-compatible provider listens on a loopback port that this module's daemon
allowlists (``--egress-allow 127.0.0.1:<port>``). Secrets, model definitions and endpoints are
made through MLflow's own REST store, as the MLflow client and UI make them; calls to an
endpoint reach the provider through the daemon's egress proxy, which records each connection.
Every other destination (another loopback port, a name resolving to loopback, the metadata
address, the daemon itself) is refused, and so is a server whose egress is switched off.

Judges also run on the server, as MLflow's jobs (the UI's "Run judge", ``scorer/invoke``):
the job calls the endpoint through the server's own gateway, and its verdict lands on the
trace. Scorers defined by code stay refused, with MLflow's own words.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.genai.judges import make_judge
from mlflow.tracking._tracking_service.utils import _get_store

from mlfleet.auth.secrets import SecretBox
from mlfleet.egress.proxy import egress_key
from mlfleet.runtime.egress_forwarder import OWN_GATEWAY_HOST
from support.aws import ACCOUNT, unique
from support.chaos import trail_records
from support.daemon import Daemon, free_port
from support.fake_llm import FakeLlm, gateway_endpoint
from support.iam import new_user, policy
from support.waiting import wait_for

NAMED_PORT = free_port()


@pytest.fixture(scope="module")
def gateway_daemon(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLlm) -> Iterator[Daemon]:
    # "localhost" is allowed by name on another port: names admit public addresses only, so
    # it stays refused (as a provider's name that a DNS answer points at loopback would).
    d = Daemon(
        tmp_path_factory.mktemp("ai-gateway") / "data",
        "--egress-allow",
        f"127.0.0.1:{fake_llm.port}",
        "--egress-allow",
        f"localhost:{NAMED_PORT}",
    )
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def server(gateway_daemon: Daemon) -> dict[str, Any]:
    name = unique("genai")
    sm = gateway_daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{gateway_daemon.data_dir.parent / 'artifacts' / name}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
    )
    desc = gateway_daemon.wait_status(name, "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc
    return desc


@pytest.fixture
def store(gateway_daemon: Daemon, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """MLflow's REST store of the server, signed in with the daemon's admin key."""
    key, secret = gateway_daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    return _get_store(server["TrackingServerUrl"])


def invoke(daemon: Daemon, server: dict[str, Any], endpoint: str) -> requests.Response:
    return requests.post(
        f"{server['TrackingServerUrl']}/gateway/{endpoint}/mlflow/invocations",
        json={"messages": [{"role": "user", "content": "hello"}]},
        auth=daemon.credentials,
        timeout=60,
    )


def outbound(daemon: Daemon, port: int) -> list[dict[str, Any]]:
    return [
        r
        for r in trail_records(daemon, "OutboundConnection")
        if r["requestParameters"].get("port") == port
    ]


def test_an_endpoint_calls_the_provider_through_the_egress_proxy(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm
) -> None:
    endpoint = gateway_endpoint(store, fake_llm.url, api_key="sk-fake-key-1")
    answer = invoke(gateway_daemon, server, endpoint)
    assert answer.status_code == 200, answer.text
    verdict = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert verdict["rationale"] == "echo: hello"
    sent = fake_llm.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["key"] == "Bearer sk-fake-key-1"
    assert sent["body"]["model"] == "gpt-fake"

    # The connection, as the server made it, is a data event of the server.
    records = outbound(gateway_daemon, fake_llm.port)
    assert records, "no OutboundConnection record"
    record = records[0]
    assert record["eventCategory"] == "Data"
    assert record["userIdentity"] == {
        "type": "AWSService",
        "invokedBy": "sagemaker-mlflow.amazonaws.com",
    }
    assert record["resources"][0]["ARN"] == server["TrackingServerArn"]
    assert record["requestParameters"]["address"] == "127.0.0.1"
    assert "errorCode" not in record


def test_a_provider_key_is_stored_encrypted_and_never_shown(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm
) -> None:
    key = "sk-never-shown-" + unique("k")
    endpoint = gateway_endpoint(store, fake_llm.url, api_key=key)
    infos = store.list_secret_infos()
    assert infos and all(key not in json.dumps(i.to_proto().__str__()) for i in infos)
    # The trail keeps the creating call without the value.
    created = [
        r
        for r in trail_records(gateway_daemon, "CreateGatewaySecret")
        if (r["requestParameters"].get("body") or {}).get("secret_name") == endpoint
    ]
    assert created and created[0]["requestParameters"]["body"]["secret_value"] == (
        "HIDDEN_DUE_TO_SECURITY_REASONS"
    )
    # Encrypted with a key of the server's own, not MLflow's default passphrase (which is the
    # same in every installation), and not in the database file in clear.
    config = requests.get(
        f"{server['TrackingServerUrl']}/ajax-api/3.0/mlflow/gateway/secrets/config",
        auth=gateway_daemon.credentials,
        timeout=30,
    ).json()
    assert config == {"secrets_available": True, "using_default_passphrase": False}
    database = (
        gateway_daemon.data_dir / "servers" / gateway_daemon.server_id(server["TrackingServerName"])
    )
    files = [p for p in database.rglob("*.db*") if p.is_file()]
    assert files and all(key.encode() not in p.read_bytes() for p in files)
    assert key not in (gateway_daemon.data_dir / "mlfleet.log").read_text()


@pytest.mark.parametrize(
    ("api_base", "reason"),
    [
        ("http://127.0.0.1:{other}/v1", "not on the egress allowlist"),  # nobody allowed it
        # An allowed name that resolves to loopback (a DNS answer pointing inwards).
        ("http://localhost:{named}/v1", "which is not a public address"),
        ("http://169.254.169.254/latest", "not on the egress allowlist"),  # cloud metadata
        # mlfleet itself (refused by address even where an entry admits it: test_egress.py).
        ("http://127.0.0.1:{daemon}/v1", "not on the egress allowlist"),
    ],
)
def test_destinations_outside_the_policy_are_refused(
    gateway_daemon: Daemon,
    server: dict[str, Any],
    store: Any,
    fake_llm: FakeLlm,
    api_base: str,
    reason: str,
) -> None:
    other = free_port()
    url = api_base.format(other=other, named=NAMED_PORT, daemon=gateway_daemon.port)
    before = len(fake_llm.requests)
    answer = invoke(gateway_daemon, server, gateway_endpoint(store, url))
    assert answer.status_code >= 400
    assert len(fake_llm.requests) == before
    port = int(url.split(":")[2].split("/")[0]) if url.count(":") == 2 else 80

    assert reason in answer.text

    def refusal_recorded() -> list[dict[str, Any]]:
        return [r for r in outbound(gateway_daemon, port) if r.get("errorCode") == "EgressDenied"]

    recorded = wait_for(refusal_recorded, 10, what="the refused connection in the trail")
    assert reason in recorded[-1]["errorMessage"]


def test_a_server_with_egress_off_connects_nowhere(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm
) -> None:
    endpoint = gateway_endpoint(store, fake_llm.url)
    sm = gateway_daemon.client()
    arn = server["TrackingServerArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "mlfleet:egress", "Value": "off"}])
    try:
        before = len(fake_llm.requests)
        answer = invoke(gateway_daemon, server, endpoint)
        assert answer.status_code >= 400
        assert "off" in answer.text
        assert len(fake_llm.requests) == before
    finally:
        sm.delete_tags(ResourceArn=arn, TagKeys=["mlfleet:egress"])
    assert invoke(gateway_daemon, server, endpoint).status_code == 200


def test_sagemaker_mlflow_grants_do_not_reach_the_ai_gateway(
    gateway_daemon: Daemon, server: dict[str, Any], fake_llm: FakeLlm
) -> None:
    user = new_user(
        gateway_daemon,
        inline=policy({"Effect": "Allow", "Action": "sagemaker-mlflow:*", "Resource": "*"}),
    )
    auth = (user["AccessKeyId"], user["SecretAccessKey"])
    url = f"{server['TrackingServerUrl']}/api/3.0/mlflow/gateway/secrets/list"

    def answered(status: int) -> bool:
        return requests.get(url, auth=auth, timeout=30).status_code == status

    wait_for(lambda: answered(403), 10, what="the refusal of a sagemaker-mlflow:* holder")
    gateway_daemon.client("iam").put_user_policy(
        UserName=user["UserName"],
        PolicyName="gateway",
        PolicyDocument=policy(
            {
                "Effect": "Allow",
                "Action": "mlfleet-mlflow:ListGateway*",
                "Resource": server["TrackingServerArn"],
            }
        ),
    )
    wait_for(lambda: answered(200), 10, what="the answer once mlfleet-mlflow is granted")


def proxy_answer(daemon: Daemon, authorization: str | None) -> bytes:
    path = daemon.data_dir / "run" / "egress" / "proxy.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        head = f"CONNECT 127.0.0.1:{daemon.port} HTTP/1.1\r\nHost: x\r\n"
        if authorization:
            head += f"Proxy-Authorization: Basic {authorization}\r\n"
        sock.sendall((head + "\r\n").encode())
        return sock.recv(4096)


def test_the_proxy_serves_no_one_without_a_servers_key(
    gateway_daemon: Daemon, server: dict[str, Any], fake_llm: FakeLlm
) -> None:
    name = server["TrackingServerName"]
    for given in (
        None,
        base64.b64encode(f"{name}:".encode()).decode(),
        base64.b64encode(f"{name}:{'0' * 64}".encode()).decode(),
        base64.b64encode(b"no-such-server:x").decode(),
        "not base64!",
    ):
        assert proxy_answer(gateway_daemon, given).startswith(b"HTTP/1.1 407"), given


def test_no_server_passes_for_another_with_its_own_key(
    gateway_daemon: Daemon, server: dict[str, Any]
) -> None:
    """A worker knows its own proxy key: with another server's name it is no key at all."""
    sm = gateway_daemon.client()
    other = unique("genai-other")
    sm.create_mlflow_tracking_server(
        TrackingServerName=other,
        ArtifactStoreUri=f"file://{gateway_daemon.data_dir.parent / 'artifacts' / other}",
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/mlfleet",
    )
    box = SecretBox.from_file(gateway_daemon.data_dir / "master.key")
    own_key = egress_key(box, gateway_daemon.server_id(server["TrackingServerName"]))
    own = base64.b64encode(f"{server['TrackingServerName']}:{own_key}".encode()).decode()
    posing = base64.b64encode(f"{other}:{own_key}".encode()).decode()
    # The key works under its own server's name (the proxy then decides on the destination)...
    assert proxy_answer(gateway_daemon, own).startswith(b"HTTP/1.1 403")
    # ...and under another server's name it is refused before anything else.
    assert proxy_answer(gateway_daemon, posing).startswith(b"HTTP/1.1 407")
    gateway_daemon.wait_status(other, "Created", "CreateFailed")
    sm.delete_mlflow_tracking_server(TrackingServerName=other)


def test_the_proxy_socket_is_not_reachable_by_other_users(gateway_daemon: Daemon) -> None:
    run_dir = gateway_daemon.data_dir / "run"
    assert run_dir.stat().st_mode & 0o077 == 0
    assert Path(run_dir / "egress" / "proxy.sock").is_socket()


def test_gateway_objects_are_mlflow_errors_when_absent(store: Any) -> None:
    with pytest.raises(MlflowException) as raised:
        store.get_gateway_endpoint(name="no-such-endpoint")
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"


@pytest.fixture
def traced(server: dict[str, Any], store: Any) -> Iterator[MlflowClient]:
    """A client of the server that traces write their spans to (the global tracking URI)."""
    mlflow.set_tracking_uri(server["TrackingServerUrl"])
    try:
        yield MlflowClient(server["TrackingServerUrl"])
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def answered_traces(client: MlflowClient, experiment: str, questions: list[str]) -> list[str]:
    traces = []
    for question in questions:
        root = client.start_trace("agent", inputs={"q": question}, experiment_id=experiment)
        client.end_trace(root.trace_id, outputs={"a": f"answer to {question}"})
        traces.append(root.trace_id)
    mlflow.flush_trace_async_logging()
    return traces


def run_judge(
    daemon: Daemon, server: dict[str, Any], experiment: str, scorer: str, traces: list[str]
) -> requests.Response:
    """What the UI's "Run judge" sends."""
    return requests.post(
        f"{server['TrackingServerUrl']}/ajax-api/3.0/mlflow/scorer/invoke",
        json={
            "experiment_id": experiment,
            "serialized_scorer": scorer,
            "trace_ids": traces,
            "log_assessments": True,
        },
        auth=daemon.credentials,
        timeout=60,
    )


def finished_job(daemon: Daemon, server: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The job once it has ended, as the UI polls it."""
    url = f"{server['TrackingServerUrl']}/ajax-api/3.0/mlflow/jobs/{job_id}"

    def ended() -> dict[str, Any] | None:
        job = requests.get(url, auth=daemon.credentials, timeout=30).json()
        return job if job.get("status") not in ("PENDING", "RUNNING") else None

    return wait_for(ended, 120, what=f"job {job_id} to end")


def test_a_judge_runs_on_the_server_through_its_own_gateway(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm, traced: Any
) -> None:
    endpoint = gateway_endpoint(store, fake_llm.url, api_key="sk-judged")
    experiment = traced.create_experiment(unique("judged"))
    traces = answered_traces(traced, experiment, ["first question", "second question"])
    judge = make_judge(
        name="answered",
        instructions="Does {{ outputs }} answer {{ inputs }}? Answer yes or no.",
        model=f"gateway:/{endpoint}",
        feedback_value_type=str,
    )
    before = len(fake_llm.requests)

    answer = run_judge(gateway_daemon, server, experiment, json.dumps(judge.model_dump()), traces)
    assert answer.status_code == 200, answer.text
    jobs = answer.json()["jobs"]
    assert sorted(t for job in jobs for t in job["trace_ids"]) == sorted(traces)
    for job in jobs:
        ended = finished_job(gateway_daemon, server, job["job_id"])
        assert ended["status"] == "SUCCEEDED", ended

    # The verdicts are the provider's, reached through the endpoint and its key.
    assert len(fake_llm.requests) - before == len(traces)
    assert {r["key"] for r in fake_llm.requests[before:]} == {"Bearer sk-judged"}
    for trace_id in traces:
        verdicts = [a for a in traced.get_trace(trace_id).info.assessments if a.name == "answered"]
        assert [(v.value, v.rationale.startswith("echo: ")) for v in verdicts] == [("yes", True)]
    # Started by the caller, as a data event with its action; the call out is the server's.
    started = trail_records(gateway_daemon, "InvokeScorer")
    assert started and started[-1]["resources"][0]["ARN"] == server["TrackingServerArn"]
    assert outbound(gateway_daemon, fake_llm.port)


def test_a_scorer_defined_by_code_is_refused_as_mlflow_refuses_it(
    gateway_daemon: Daemon, server: dict[str, Any], traced: Any
) -> None:
    experiment = traced.create_experiment(unique("custom"))
    traces = answered_traces(traced, experiment, ["q"])
    scorer = {
        "name": "sneaky",
        "call_source": "import os\nreturn os.listdir('/')",
        "call_signature": "(outputs)",
        "original_func_name": "sneaky",
        "mlflow_version": "3.17.2",
        "serialization_version": 1,
    }
    answer = run_judge(gateway_daemon, server, experiment, json.dumps(scorer), traces)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "@scorer" in answer.json()["message"] or "custom" in answer.json()["message"].lower()


def test_the_servers_own_gateway_host_serves_only_its_gateway_routes(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm
) -> None:
    # An endpoint pointed at the host the server's jobs use for its own gateway: its calls
    # reach no other route of the worker than the gateway's.
    endpoint = gateway_endpoint(
        store, f"http://{OWN_GATEWAY_HOST}/ajax-api/2.0/mlflow/experiments", api_key="sk-own"
    )
    answer = invoke(gateway_daemon, server, endpoint)
    assert answer.status_code >= 400
    assert "only the AI gateway's routes" in answer.text


def test_an_evaluation_started_from_the_ui_runs_on_the_server(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm, traced: Any
) -> None:
    endpoint = gateway_endpoint(store, fake_llm.url, api_key="sk-evaluated")
    experiment = traced.create_experiment(unique("evaluated"))
    traces = answered_traces(traced, experiment, ["one", "two", "three"])
    judge = make_judge(
        name="graded",
        instructions="Does {{ outputs }} answer {{ inputs }}? Answer yes or no.",
        model=f"gateway:/{endpoint}",
        feedback_value_type=str,
    )
    answer = requests.post(
        f"{server['TrackingServerUrl']}/ajax-api/3.0/mlflow/genai/evaluate/invoke",
        json={
            "experiment_id": experiment,
            "trace_ids": traces,
            "serialized_scorers": [json.dumps(judge.model_dump())],
        },
        auth=gateway_daemon.credentials,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    started = answer.json()
    ended = finished_job(gateway_daemon, server, started["job_id"])
    assert ended["status"] == "SUCCEEDED", ended
    # The evaluation run MLflow made for it, and the judge's verdicts on every trace.
    run = traced.get_run(started["run_id"])
    assert run.info.experiment_id == experiment
    assert run.data.tags["mlflow.genaiEvaluate.jobId"] == started["job_id"]
    verdicts = {
        trace.info.trace_id: [a.value for a in trace.info.assessments if a.name == "graded"]
        for trace in traced.search_traces(locations=[experiment])
    }
    assert verdicts == {trace_id: ["yes"] for trace_id in traces}


def test_online_scoring_is_configured_through_mlfleet_mlflow_actions(
    gateway_daemon: Daemon, server: dict[str, Any], store: Any, fake_llm: FakeLlm, traced: Any
) -> None:
    endpoint = gateway_endpoint(store, fake_llm.url, api_key="sk-online")
    experiment = traced.create_experiment(unique("online"))
    make_judge(
        name="watched",
        instructions="Is {{ outputs }} polite?",
        model=f"gateway:/{endpoint}",
        feedback_value_type=bool,
    ).register(experiment_id=experiment)
    url = f"{server['TrackingServerUrl']}/api/3.0/mlflow/scorers/online-config"
    body = {"experiment_id": experiment, "name": "watched", "sample_rate": 0.5}
    user = new_user(
        gateway_daemon,
        inline=policy({"Effect": "Allow", "Action": "sagemaker-mlflow:*", "Resource": "*"}),
    )
    refused = requests.put(url, json=body, auth=(user["AccessKeyId"], user["SecretAccessKey"]))
    assert refused.status_code == 403, refused.text

    answer = requests.put(url, json=body, auth=gateway_daemon.credentials, timeout=30)
    assert answer.status_code == 200, answer.text
    config = answer.json()["config"]
    assert config["sample_rate"] == 0.5 and config["experiment_id"] == experiment
    read = requests.get(
        f"{url}s",
        params={"scorer_ids": config["scorer_id"]},
        auth=gateway_daemon.credentials,
        timeout=30,
    )
    assert read.status_code == 200, read.text
    assert [c["sample_rate"] for c in read.json()["configs"]] == [0.5]
