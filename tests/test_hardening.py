"""The gateway refuses MLflow's CVE-class payloads and still serves the same routes' real use.

Through the real daemon and MLflow workers (spec mlflow-server.md section 8). Requests go out
through ``http.client``, which sends a path byte for byte, as an attacker would: requests and
urllib3 would resolve ``..`` and could re-quote what a test means to send.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import mlflow
import pytest
from mlflow import MlflowClient

from mlfleet.gateway.proxy import ARN_HEADER
from mlfleet.mlflow_api.actions import path_segments
from mlfleet.mlflow_api.hardening import INVALID_PATH, Refusal, body_problem, url_problem
from support.daemon import Daemon

MiB = 1024 * 1024
LIMIT = 16 * MiB  # Settings.max_api_body_bytes, the daemon's default
ADDRESSING = ["url", "arn"]  # TrackingServerUrl path prefix, or ARN header (sagemaker-mlflow)


def send(
    daemon: Daemon,
    server: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | bytes | Iterable[bytes] | None = None,
    *,
    by: str = "url",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send MLflow's ``path`` to ``server`` as written; the status and the (JSON) answer."""
    key, secret = daemon.credentials
    sent = {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}
    if by == "url":
        target = urlsplit(server["TrackingServerUrl"]).path + path
    else:
        target = path
        sent[ARN_HEADER] = server["TrackingServerArn"]
    payload: bytes | Iterable[bytes] | None
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    else:
        payload = body
    chunked = payload is not None and not isinstance(payload, bytes)
    sent.update(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    try:
        connection.request(method, target, body=payload, headers=sent, encode_chunked=chunked)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data) if data else {}
    except ValueError:
        return response.status, data


def assert_refused(status: int, answer: Any, expected: Refusal | None, parameter: str) -> None:
    """Refused by the gateway itself, as it says (artifact paths in MLflow's words)."""
    assert expected is not None and expected.status == 400
    assert parameter in expected.message
    assert (status, answer) == (400, {"error_code": expected.code, "message": expected.message})


def refusal_of(
    path: str, body: dict[str, Any] | None = None, store: str | None = None
) -> Refusal | None:
    """What the gateway answers to MLflow's ``path`` (and JSON ``body``, on a server whose
    ArtifactStoreUri is ``store``)."""
    if body is None:
        return url_problem(path)
    return body_problem(path_segments(path), json.dumps(body).encode(), store)


@pytest.fixture(scope="module")
def run(daemon: Daemon, shared_server: dict[str, Any]) -> dict[str, str]:
    """A run of a fresh experiment, with the file ``model/MLmodel`` among its artifacts."""
    name = f"hardening-{uuid.uuid4().hex[:8]}"
    status, created = send(
        daemon, shared_server, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}
    )
    assert status == 200, created
    experiment_id = created["experiment_id"]
    status, started = send(
        daemon,
        shared_server,
        "POST",
        "/api/2.0/mlflow/runs/create",
        {"experiment_id": experiment_id},
    )
    assert status == 200, started
    info = started["run"]["info"]
    root = f"{experiment_id}/{info['run_id']}/artifacts"
    assert info["artifact_uri"] == f"mlflow-artifacts:/{root}"
    status, _ = send(
        daemon,
        shared_server,
        "PUT",
        f"/api/2.0/mlflow-artifacts/artifacts/{root}/model/MLmodel",
        b"flavors: {}\n",
    )
    assert status == 200
    return {"experiment_id": experiment_id, "run_id": info["run_id"], "root": root}


@pytest.fixture
def registered_model(daemon: Daemon, shared_server: dict[str, Any]) -> str:
    name = f"hardened-{uuid.uuid4().hex[:8]}"
    status, answer = send(
        daemon, shared_server, "POST", "/api/2.0/mlflow/registered-models/create", {"name": name}
    )
    assert status == 200, answer
    return name


def versions_of(daemon: Daemon, server: dict[str, Any], name: str) -> list[dict[str, Any]]:
    query = quote(f"name = '{name}'")
    status, found = send(
        daemon, server, "GET", f"/api/2.0/mlflow/model-versions/search?filter={query}"
    )
    assert status == 200, found
    return list(found.get("model_versions", []))


def on_disk(server: dict[str, Any], relative: str) -> Path:
    return Path(server["artifacts"]) / relative


# model-versions/create source (CVE-2023-1177, -2356, -2780, -6977, 2024-1558, 2025-11201) ------


SOURCES = [
    "file:///etc/passwd",  # CVE-2023-1177
    "file://{artifacts}/",  # a local path, even the server's own artifact folder
    "/etc/passwd",
    "mlflow-artifacts:/../../../../../etc/passwd",  # CVE-2023-2356: relative
    "mlflow-artifacts:/{root}/..%2f..%2f..%2f..%2fetc",
    "mlflow-artifacts:/{root}/%252e%252e/%252e%252e/%252e%252e",
    "mlflow-artifacts:/{root}\\..\\..\\..\\etc",  # CVE-2023-2780: backslash
    "mlflow-artifacts:/{root}#/../../../../etc/passwd",  # CVE-2024-1558: fragment
    "mlflow-artifacts:/{root}?/../../../../etc/passwd",
    "http://169.254.169.254/latest/meta-data/",  # SSRF
    "https://attacker.example/api/2.0/mlflow-artifacts/artifacts/x",
    "s3://another-tenant/model",
    "mlflow-artifacts://attacker.example/{root}",
]


@pytest.mark.parametrize("prefix", ["/api/2.0", "/ajax-api/2.0"])
@pytest.mark.parametrize("source", SOURCES)
def test_model_version_sources_outside_the_store_are_refused(
    daemon: Daemon,
    shared_server: dict[str, Any],
    run: dict[str, str],
    registered_model: str,
    source: str,
    prefix: str,
) -> None:
    source = source.format(artifacts=shared_server["artifacts"], root=run["root"])
    body = {"name": registered_model, "source": source, "run_id": run["run_id"]}
    path = f"{prefix}/mlflow/model-versions/create"
    status, answer = send(daemon, shared_server, "POST", path, body)
    assert_refused(status, answer, refusal_of(path, body), "'source'")
    assert versions_of(daemon, shared_server, registered_model) == []


@pytest.mark.parametrize("by", ADDRESSING)
def test_model_versions_from_the_store_are_created(
    daemon: Daemon,
    shared_server: dict[str, Any],
    run: dict[str, str],
    registered_model: str,
    by: str,
) -> None:
    sources = [f"runs:/{run['run_id']}/model", f"mlflow-artifacts:/{run['root']}/model"]
    if by == "arn":  # an ARN caller's view of the store: its bucket on the S3 endpoint
        sources.append(f"s3://shared/{run['root']}/model")
    for source in sources:
        body = {"name": registered_model, "source": source, "run_id": run["run_id"]}
        path = "/api/2.0/mlflow/model-versions/create"
        status, answer = send(daemon, shared_server, "POST", path, body, by=by)
        assert status == 200, answer
        shown = source.replace("mlflow-artifacts:/", "s3://shared/") if by == "arn" else source
        assert answer["model_version"]["source"] == shown
    stored = sorted(v["source"] for v in versions_of(daemon, shared_server, registered_model))
    assert stored == sorted(s.replace("s3://shared/", "mlflow-artifacts:/") for s in sources)


# experiments/create artifact_location (CVE-2023-6977, 2024-8859, the HTTP SSRF) ----------------


@pytest.mark.parametrize("prefix", ["/api/2.0", "/ajax-api/2.0"])
@pytest.mark.parametrize(
    ("field", "location"),
    [
        ("artifact_location", "http://169.254.169.254/latest/meta-data/"),  # SSRF via get-artifact
        ("artifact_location", "file:///etc"),
        ("artifact_location", "dbfs:/databricks/mlflow"),  # CVE-2024-8859
        ("artifact_location", "s3://another-tenant/prefix"),
        ("artifactLocation", "file:///etc"),  # protobuf's JSON name reaches the same field
    ],
)
def test_experiments_with_an_artifact_location_are_refused(
    daemon: Daemon, shared_server: dict[str, Any], prefix: str, field: str, location: str
) -> None:
    name = f"located-{uuid.uuid4().hex[:8]}"
    body = {"name": name, field: location}
    path = f"{prefix}/mlflow/experiments/create"
    status, answer = send(daemon, shared_server, "POST", path, body)
    store = shared_server["ArtifactStoreUri"]
    assert_refused(status, answer, refusal_of(path, body, store), "'artifact_location'")
    assert "must lie in this tracking server's artifact store" in answer["message"]
    status, _ = send(
        daemon,
        shared_server,
        "GET",
        f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
    )
    assert status == 404  # never created


@pytest.mark.parametrize("by", ADDRESSING)
def test_experiments_get_the_servers_artifact_location(
    daemon: Daemon, shared_server: dict[str, Any], by: str
) -> None:
    for extra in ({}, {"artifact_location": ""}):
        body = {"name": f"plain-{uuid.uuid4().hex[:8]}", **extra}
        status, created = send(
            daemon, shared_server, "POST", "/api/2.0/mlflow/experiments/create", body, by=by
        )
        assert status == 200, created
        path = f"/api/2.0/mlflow/experiments/get?experiment_id={created['experiment_id']}"
        status, got = send(daemon, shared_server, "GET", path)
        assert status == 200
        assert got["experiment"]["artifact_location"].startswith("mlflow-artifacts:/")


# artifact paths in query parameters (get-artifact, list, model-versions/get-artifact) ----------

PATH_PAYLOADS = [
    "%252e%252e/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "..%252f..%252f..%252fetc%252fpasswd",
    "model%23/../../../../etc/passwd",  # CVE-2024-1558-style fragment
    "model%3F/../../../../etc/passwd",
    "..%5c..%5c..%5cetc%5cpasswd",
    "%2Fetc%2Fpasswd",
    "file%3A%2F%2F%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("payload", PATH_PAYLOADS)
def test_get_artifact_paths_that_traverse_are_refused(
    daemon: Daemon, shared_server: dict[str, Any], run: dict[str, str], payload: str
) -> None:
    run_id = run["run_id"]
    for path in (
        f"/get-artifact?run_id={run_id}&path={payload}",
        f"/get-artifact?path=model/MLmodel&run_uuid={run_id}&path={payload}",
        f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={payload}",
        f"/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}&path={payload}",
        f"/api/2.0/mlflow-artifacts/artifacts?path={payload}",
        f"/model-versions/get-artifact?name=any&version=1&path={payload}",
    ):
        status, answer = send(daemon, shared_server, "GET", path)
        assert_refused(status, answer, refusal_of(path), INVALID_PATH)


def test_get_artifact_and_list_still_serve_the_runs_files(
    daemon: Daemon, shared_server: dict[str, Any], run: dict[str, str]
) -> None:
    run_id = run["run_id"]
    status, content = send(
        daemon, shared_server, "GET", f"/get-artifact?run_id={run_id}&path=model%2FMLmodel"
    )
    assert (status, content) == (200, b"flavors: {}\n")
    status, listed = send(
        daemon, shared_server, "GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=model"
    )
    assert status == 200 and [f["path"] for f in listed["files"]] == ["model/MLmodel"]


# the artifact proxy: delete (CVE-2023-6831), write (CVE-2023-6018, -6730), multipart ------------


@pytest.fixture
def sentinel(shared_server: dict[str, Any]) -> Iterator[Path]:
    """A file beside the artifact folder, where ``<artifacts>/../<name>`` would reach."""
    path = Path(shared_server["artifacts"]).parent / f"sentinel-{uuid.uuid4().hex[:8]}"
    path.write_text("keep me")
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("by", ADDRESSING)
@pytest.mark.parametrize(
    "template",
    [
        "{root}/%252e%252e/%252e%252e/%252e%252e/%252e%252e/{name}",  # CVE-2023-6831
        "%252e%252e%252f{name}",
        "%25252e%25252e/{name}",
        "{root}/..%5c..%5c..%5c..%5c..%5c{name}",
        "%252F{parent}%252F{name}",  # absolute once decoded twice
    ],
)
def test_artifact_delete_cannot_leave_the_store(
    daemon: Daemon,
    shared_server: dict[str, Any],
    run: dict[str, str],
    sentinel: Path,
    template: str,
    by: str,
) -> None:
    victim = f"{run['root']}/victim-{uuid.uuid4().hex[:8]}.txt"
    status, _ = send(
        daemon, shared_server, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{victim}", b"v"
    )
    assert status == 200 and on_disk(shared_server, victim).read_bytes() == b"v"

    path = template.format(
        root=run["root"], name=sentinel.name, parent=quote(str(sentinel.parent), safe="")
    )
    path = f"/api/2.0/mlflow-artifacts/artifacts/{path}"
    status, answer = send(daemon, shared_server, "DELETE", path, by=by)
    assert_refused(status, answer, refusal_of(path), INVALID_PATH)
    assert sentinel.read_text() == "keep me"

    status, _ = send(
        daemon, shared_server, "DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{victim}", by=by
    )
    assert status == 200
    assert not on_disk(shared_server, victim).exists()


@pytest.mark.parametrize("prefix", ["/api/2.0", "/ajax-api/2.0"])
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("PUT", "mlflow-artifacts/artifacts"),  # CVE-2023-6018
        ("POST", "mlflow-artifacts/mpu/create"),  # CVE-2026-2651's routes
        ("POST", "mlflow-artifacts/mpu/complete"),
        ("GET", "mlflow-artifacts/artifacts"),  # CVE-2023-6730: read
    ],
)
@pytest.mark.parametrize("traversal", ["%252e%252e", "..%255c..", "%252e%252e%252f%252e%252e"])
def test_artifact_writes_and_reads_cannot_leave_the_store(
    daemon: Daemon,
    shared_server: dict[str, Any],
    prefix: str,
    method: str,
    route: str,
    traversal: str,
) -> None:
    name = f"pwned-{uuid.uuid4().hex[:8]}.txt"
    body = (
        b'{"path": "x", "num_parts": 1}' if route.startswith("mlflow-artifacts/mpu") else b"pwned"
    )
    path = f"{prefix}/{route}/{traversal}/{name}"
    status, answer = send(daemon, shared_server, method, path, None if method == "GET" else body)
    assert_refused(status, answer, refusal_of(path), INVALID_PATH)
    assert not (Path(shared_server["artifacts"]).parent / name).exists()


def test_artifact_uploads_larger_than_the_api_cap_still_stream(
    daemon: Daemon, shared_server: dict[str, Any], run: dict[str, str]
) -> None:
    data = os.urandom(LIMIT + 4 * MiB)
    target = f"{run['root']}/big/weights.bin"
    status, answer = send(
        daemon, shared_server, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{target}", data
    )
    assert status == 200, answer
    assert on_disk(shared_server, target).read_bytes() == data


# upload-artifact (CVE-2024-8859) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "%252e%252e/%252e%252e/%252e%252e/%252e%252e/{name}",
        "..%255c..%255c{name}",
        "%2Ftmp%2F{name}",
    ],
)
def test_upload_artifact_paths_that_traverse_are_refused(
    daemon: Daemon, shared_server: dict[str, Any], run: dict[str, str], payload: str
) -> None:
    name = f"pwned-{uuid.uuid4().hex[:8]}.txt"
    query = f"run_uuid={run['run_id']}&path={payload.format(name=name)}"
    path = f"/ajax-api/2.0/mlflow/upload-artifact?{query}"
    status, answer = send(daemon, shared_server, "POST", path, b"pwned")
    assert_refused(status, answer, refusal_of(path), INVALID_PATH)
    assert not (Path(shared_server["artifacts"]).parent / name).exists()
    assert not Path(f"/tmp/{name}").exists()


def test_upload_artifact_still_stores_in_the_run(
    daemon: Daemon, shared_server: dict[str, Any], run: dict[str, str]
) -> None:
    path = f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run['run_id']}&path=notes%2Fhello.txt"
    status, answer = send(daemon, shared_server, "POST", path, b"hello")
    assert status == 200, answer
    assert on_disk(shared_server, f"{run['root']}/notes/hello.txt").read_bytes() == b"hello"


# body size --------------------------------------------------------------------------------------


def test_an_api_body_over_the_cap_is_refused(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    oversized = b'{"run_id": "x", "metrics": [' + b" " * LIMIT + b"]}"
    status, answer = send(
        daemon, shared_server, "POST", "/api/2.0/mlflow/runs/log-batch", oversized
    )
    assert status == 413, answer
    assert answer["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    assert str(LIMIT) in answer["message"]


def test_a_chunked_api_body_over_the_cap_is_refused(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    chunks = (b" " * MiB for _ in range(LIMIT // MiB + 1))
    status, answer = send(daemon, shared_server, "POST", "/api/2.0/mlflow/runs/log-batch", chunks)
    assert status == 413, answer
    assert answer["error_code"] == "RESOURCE_LIMIT_EXCEEDED"


@pytest.mark.parametrize("by", ADDRESSING)
def test_a_chunked_api_body_under_the_cap_is_forwarded_whole(
    daemon: Daemon, shared_server: dict[str, Any], by: str
) -> None:
    name = f"chunked-{uuid.uuid4().hex[:8]}"
    encoded = json.dumps({"name": name, "tags": [{"key": "k", "value": "v" * 1000}]}).encode()
    chunks = [encoded[:10], encoded[10:500], encoded[500:]]
    headers = {"Content-Type": "application/json"}
    status, created = send(
        daemon,
        shared_server,
        "POST",
        "/api/2.0/mlflow/experiments/create",
        chunks,
        by=by,
        headers=headers,
    )
    assert status == 200, created
    status, got = send(
        daemon,
        shared_server,
        "GET",
        f"/api/2.0/mlflow/experiments/get?experiment_id={created['experiment_id']}",
    )
    assert got["experiment"]["name"] == name
    assert got["experiment"]["tags"] == [{"key": "k", "value": "v" * 1000}]


# identity headers -------------------------------------------------------------------------------


def test_identity_headers_never_reach_mlflow(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    # MLflow without workspaces answers FEATURE_DISABLED to any request carrying the header.
    headers = {
        "X-MLflow-Workspace": "another-tenant",
        "X-MLflow-Authorization": "Basic YWRtaW46cGFzc3dvcmQxMjM0",
        "X-Forwarded-User": "admin",
        "Remote-User": "admin",
    }
    status, answer = send(
        daemon,
        shared_server,
        "POST",
        "/api/2.0/mlflow/experiments/search",
        {"max_results": 1},
        headers=headers,
    )
    assert status == 200, answer
    assert answer["experiments"]


# what the real MLflow client sends (3.17) keeps working --------------------------------------


@pytest.fixture
def tracking(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    mlflow.set_tracking_uri(shared_server["TrackingServerUrl"])
    yield shared_server["TrackingServerUrl"]
    mlflow.set_tracking_uri(None)


def test_mlflow_clients_register_models_and_prompts(tracking: str) -> None:
    from sklearn.linear_model import LinearRegression

    client = MlflowClient()
    tag = uuid.uuid4().hex[:8]
    experiment_id = client.create_experiment(f"registry-{tag}")
    model = LinearRegression().fit([[1.0], [2.0]], [1.0, 2.0])
    with mlflow.start_run(experiment_id=experiment_id) as active:
        logged = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=f"logged-{tag}"
        )
    run_id = active.info.run_id

    # log_model(registered_model_name=...) and register_model send models:/<model id>
    assert client.get_model_version(f"logged-{tag}", "1").source == logged.model_uri
    by_run = mlflow.register_model(f"runs:/{run_id}/model", f"by-run-{tag}")
    assert by_run.source.startswith("models:/m-")
    by_version = mlflow.register_model(f"models:/logged-{tag}/1", f"by-version-{tag}")
    assert by_version.source == f"models:/logged-{tag}/1"
    # the client's own create_model_version passes runs:/ and mlflow-artifacts:/ through
    artifact_uri = client.get_run(run_id).info.artifact_uri
    client.create_registered_model(f"direct-{tag}")
    for source in (f"runs:/{run_id}/model", f"{artifact_uri}/model"):
        assert client.create_model_version(f"direct-{tag}", source, run_id=run_id).source == source
    # prompts are model versions with a placeholder source
    prompt = mlflow.genai.register_prompt(f"prompt-{tag}", "Hello {{name}}")
    assert (
        mlflow.genai.load_prompt(f"prompts:/prompt-{tag}/{prompt.version}").template
        == "Hello {{name}}"
    )

    loaded = mlflow.sklearn.load_model(f"models:/logged-{tag}/1")
    assert loaded.predict([[3.0]])[0] == pytest.approx(3.0)
