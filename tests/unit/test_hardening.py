"""The gateway's input checks against MLflow's CVE classes (spec mlflow-server.md section 8)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from unittest import mock

import pytest
from aiohttp import StreamReader
from aiohttp.test_utils import make_mocked_request

from mlfleet.mlflow_api.actions import path_segments
from mlfleet.mlflow_api.hardening import (
    INVALID_PATH,
    MAX_DECODINGS,
    STRIPPED_REQUEST,
    Refusal,
    artifact_location_problem,
    artifact_path_problem,
    body_problem,
    decodings,
    is_artifact_transfer,
    screen,
    source_problem,
    url_problem,
)

# paths -----------------------------------------------------------------------------------------


def test_decodings_stop_when_stable() -> None:
    assert decodings("a/b") == ["a/b"]
    assert decodings("%252e") == ["%252e", "%2e", "."]
    assert decodings("100%.txt") == ["100%.txt"]  # not an escape: left alone
    nested = "%" + "25" * MAX_DECODINGS + "2e"
    assert decodings(nested) is None


@pytest.mark.parametrize(
    "path",
    [
        "model/MLmodel",
        "model/data/weights.bin",
        "",
        "with space/a+b.txt",
        "100%25.txt",  # an artifact named 100%.txt
        "metrics:summary.json",  # a colon, but no scheme
        "2024-01-01T10:00:00.json",
        "a..b/c..",
        ".hidden/file",
    ],
)
def test_ordinary_artifact_paths_pass(path: str) -> None:
    assert artifact_path_problem(path) is None


def mlflows_own_check(path: str) -> str | None:
    """What MLflow's server answers a path it takes relative to an artifact root: its message
    when it refuses it, None when it lets it through."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.uri import validate_path_is_safe

    try:
        validate_path_is_safe(path)
    except MlflowException as exc:
        return exc.message
    except ValueError:
        return "a 500"  # its decoding gives up: "Failed to decode url"
    return None


# The reason the gateway gives where MLflow's check would let the path through; None where
# MLflow refuses it too, so the gateway answers exactly as MLflow does.
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../secret", None),
        ("a/../../secret", None),
        ("..", None),
        ("%2e%2e/secret", None),
        ("%2E%2E%2Fsecret", None),
        ("%252e%252e/secret", None),  # CVE-2023-6831
        ("%252e%252e%252fsecret", None),
        ("%25252e%25252e/secret", None),
        ("..%2f..%2fetc", None),
        ("model#/../x", None),
        ("model%23x", None),
        ("/etc/passwd", None),
        ("%2Fetc%2Fpasswd", None),
        ("%252Fetc%252Fpasswd", None),
        ("C:/Windows/win.ini", None),
        ("file:///etc/passwd", None),
        ("file%3A%2F%2F%2Fetc%2Fpasswd", None),
        ("a\\..\\secret", "backslash"),
        ("a%5c..%5csecret", "backslash"),
        ("a%255csecret", "backslash"),
        ("model%00.txt", "NUL"),
        ("model%2500.txt", "NUL"),
        ("model%3Fx=1", "'#' or '?'"),
        ("model%253Fx", "'#' or '?'"),
        ("c:", "a drive or a URI"),
        ("s3://other-bucket/key", "a drive or a URI"),
        ("http://169.254.169.254/latest", "a drive or a URI"),
        ("%" + "25" * 12 + "2e%2e/x", "percent-encoded after"),  # MLflow answers 500
    ],
)
def test_unsafe_artifact_paths_are_refused_in_mlflows_words(path: str, reason: str | None) -> None:
    found = artifact_path_problem(path)
    if reason is None:
        assert found == INVALID_PATH == mlflows_own_check(path)
    else:
        assert found is not None and found.startswith(f"{INVALID_PATH}: the path ")
        assert reason in found
        assert mlflows_own_check(path) != INVALID_PATH


# model version sources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        # What MLflow 3.17.2 sends: log_model(registered_model_name=...) and register_model(...)
        "models:/m-ffd80a2e047445cf86cb06958729a181",
        "models:/my-model/3",  # register_model("models:/my-model/3", ...)
        "models:/my-model@champion",
        # MlflowClient.create_model_version passes these through
        "runs:/a6295901c4e643ebac52a59f369812af/model",
        "mlflow-artifacts:/1/a6295901c4e643ebac52a59f369812af/artifacts/model",
        "mlflow-artifacts:///1/run/artifacts/model",
        # mlflow.genai.register_prompt (client) and the store's own placeholder
        "dummy-source",
        "prompt-template",
    ],
)
def test_sources_of_mlflow_clients_pass(source: str) -> None:
    assert source_problem(source) is None


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("file:///etc/passwd", "scheme file:"),  # CVE-2023-1177
        ("file://localhost/etc/passwd", "scheme file:"),
        ("FILE:///etc/passwd", "scheme file:"),
        ("/etc/passwd", "plain path"),
        ("../../../etc", "'..' segment"),  # CVE-2023-2356
        ("mlflow-artifacts:/../../../etc/passwd", "'..' segment"),
        ("mlflow-artifacts:/1/r/artifacts/%2e%2e/%2e%2e", "'..' segment"),
        ("mlflow-artifacts:/1/r/artifacts/%252e%252e/x", "'..' segment"),
        ("runs:/abc/..%2f..%2f..%2fetc", "'..' segment"),
        ("mlflow-artifacts:/1\\..\\..\\etc", "backslash"),  # CVE-2023-2780
        ("mlflow-artifacts:/1/r/artifacts#/../../../etc", "'#' or '?'"),  # CVE-2024-1558
        ("mlflow-artifacts:/1/r/artifacts?/../../../etc", "'#' or '?'"),
        ("runs:/abc/model%00", "NUL"),
        ("http://169.254.169.254/latest/meta-data/", "scheme http:"),
        ("https://attacker.example/api/2.0/mlflow-artifacts/artifacts/x", "scheme https:"),
        ("s3://another-tenant/model", "scheme s3:"),
        ("dbfs:/databricks/model", "scheme dbfs:"),
        ("hdfs://namenode/model", "scheme hdfs:"),
        ("mlflow-artifacts://attacker.example/x", "name a host"),
        ("mlflow-artifacts:%2F%2Fattacker.example/x", "name a host"),
        ("models://profile@databricks/model/1", "name a host"),
        ("runs%3A/abc/model", "plain path"),
        ("", "plain path"),
        (42, "string"),
        (["runs:/a/b"], "string"),
    ],
)
def test_foreign_or_traversing_sources_are_refused(source: object, problem: str) -> None:
    found = source_problem(source)
    assert found is not None and problem in found


S3_STORE = "s3://bucket/tenant-a"


@pytest.mark.parametrize("location", [None, ""])
def test_absent_artifact_location_passes(location: object) -> None:
    assert artifact_location_problem(location, S3_STORE) is None


@pytest.mark.parametrize(
    "location",
    [
        "mlflow-artifacts:/team/exp",  # the artifact proxy's root is the server's store
        "mlflow-artifacts:/",
        "mlflow-artifacts:///team",
        "s3://bucket/tenant-a",
        "s3://bucket/tenant-a/",
        "s3://bucket/tenant-a/team/exp",
        "s3://bucket/tenant-a//team",
    ],
)
def test_locations_in_the_servers_own_store_pass(location: str) -> None:
    assert artifact_location_problem(location, S3_STORE) is None


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("http://169.254.169.254/latest", "must lie in this tracking server's artifact store"),
        ("file:///etc", "must lie in"),
        ("dbfs:/x", "must lie in"),  # CVE-2024-8859
        ("s3://bucket/tenant-b/x", "must lie in"),  # another tenant's store
        ("s3://bucket/tenant-ab", "must lie in"),  # a prefix, not a folder, in common
        ("s3://bucket", "must lie in"),
        ("s3://other/tenant-a", "must lie in"),
        ("S3://bucket/tenant-a/x", "must lie in"),
        ("s3://bucket/tenant-a/../tenant-b", "'..' segment"),
        ("s3://bucket/tenant-a/%2e%2e/tenant-b", "'..' segment"),
        ("s3://bucket/tenant-a/%252e%252e/tenant-b", "'..' segment"),
        ("mlflow-artifacts:/../../etc", "'..' segment"),
        ("mlflow-artifacts://attacker.example/x", "must lie in"),
        ("MLFLOW-ARTIFACTS:/x", "must lie in"),
        ("mlflow-artifacts:x", "must lie in"),
        ("relative/dir", "must lie in"),
        ("/abs/dir", "must lie in"),
        (["x"], "is not a string"),
    ],
)
def test_locations_outside_the_servers_store_are_refused(location: object, problem: str) -> None:
    found = artifact_location_problem(location, S3_STORE)
    assert found is not None and problem in found
    assert S3_STORE in found  # says what is allowed


def test_where_the_store_is_not_known_every_location_is_refused() -> None:
    assert artifact_location_problem("mlflow-artifacts:/x", None) is None
    assert artifact_location_problem(f"{S3_STORE}/x", None) is not None


def test_a_local_folder_location_is_compared_with_links_followed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "exp").mkdir(parents=True)
    (tmp_path / "data-dir").mkdir()
    (store / "out").symlink_to(tmp_path / "data-dir")
    (tmp_path / "elsewhere").symlink_to(store / "exp")
    uri = f"file://{store}"
    for inside in (f"file://{store}/exp", f"file:{store}/exp/", f"file:{store}", f"{uri}/new"):
        assert artifact_location_problem(inside, uri) is None, inside
    # Through a link in the store, beside it, by a host, relative: outside.
    for outside in (
        f"file://{store}/out/x",
        f"file://{tmp_path}/store-b",
        f"file://{tmp_path}",
        f"file://{tmp_path}/elsewhere",  # a link to a folder in the store: the path is outside
        f"file://localhost{store}/exp",
        "file:store/exp",
        f"{store}/exp",
    ):
        assert artifact_location_problem(outside, uri) is not None, outside


# requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow-artifacts/artifacts/%252e%252e/%252e%252e/etc/passwd",
        "/ajax-api/2.0/mlflow-artifacts/artifacts/1/%252e%252e%252fx",
        "/api/2.0/mlflow-artifacts/artifacts/1/a%5c..%5cb",
        "/api/2.0/mlflow-artifacts/artifacts/%2Fetc%2Fpasswd",
        "/api/2.0/mlflow-artifacts/presigned/%252e%252e/x",
        "/api/2.0/mlflow-artifacts/mpu/create/%252e%252e/x",
        "/ajax-api/2.0/mlflow-artifacts/mpu/complete/1/%2523/x",
        "/api/2.0/mlflow-artifacts/artifacts?path=%252e%252e",
        "/api/2.0/mlflow/artifacts/list?run_id=r&path=..%252f..",
        "/ajax-api/2.0/mlflow/artifacts/list?run_uuid=r&path=%2Fetc",
        "/get-artifact?run_id=r&path=%252e%252e/%252e%252e/etc/passwd",
        "/get-artifact?path=model&run_id=r&path=../x",  # every occurrence counts
        "/model-versions/get-artifact?name=m&version=1&path=..%5cx",
        "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=r&path=%252e%252e/evil.py",
        "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=r&p%61th=../evil.py",
        "/api/2.0/mlflow/logged-models/m-1/artifacts/files?artifact_file_path=/etc/passwd",
        "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/directories?artifact_directory_path=..",
        "/ajax-api/2.0/mlflow/get-trace-artifact?request_id=t&path=file:///etc/passwd",
    ],
)
def test_urls_with_unsafe_artifact_paths_are_refused(path: str) -> None:
    refusal = url_problem(path)
    assert refusal is not None
    assert (refusal.status, refusal.code) == (400, "INVALID_PARAMETER_VALUE")
    assert refusal.message.startswith(INVALID_PATH)


@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model/MLmodel",
        "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/with%20space.txt",
        "/api/2.0/mlflow-artifacts/artifacts",
        "/api/2.0/mlflow-artifacts/artifacts?path=1/run/artifacts",
        "/api/2.0/mlflow-artifacts/mpu/create/1/run/artifacts/big.bin",
        "/api/2.0/mlflow/artifacts/list?run_id=r&path=model",
        "/api/2.0/mlflow/artifacts/list?run_id=r",
        "/get-artifact?path=model%2FMLmodel&run_uuid=r",
        "/model-versions/get-artifact?name=m&version=1&path=MLmodel",
        "/api/2.0/mlflow/runs/search",
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=..%2F..",  # not a path
        "/",
    ],
)
def test_urls_with_ordinary_paths_pass(path: str) -> None:
    assert url_problem(path) is None


EXPERIMENT = "/mlflow/experiments/create"
VERSION = "/mlflow/model-versions/create"


PRESIGNED = "/mlflow/artifacts/presigned-"


@pytest.mark.parametrize("prefix", ["/api/2.0", "/ajax-api/2.0", "/api/3.0"])
@pytest.mark.parametrize(
    ("route", "body", "said"),
    [
        (EXPERIMENT, {"name": "e", "artifact_location": "file:///etc"}, "'artifact_location'"),
        (EXPERIMENT, {"name": "e", "artifactLocation": "http://10.0.0.1/"}, "'artifact_location'"),
        (VERSION, {"name": "m", "source": "file:///etc/passwd"}, "'source'"),
        (VERSION, {"name": "m", "source": "runs:/r/../../x"}, "'source'"),
        (PRESIGNED + "upload-url", {"run_id": "r", "path": "../x"}, INVALID_PATH),
        (PRESIGNED + "download-url", {"run_id": "r", "path": "/etc/x"}, INVALID_PATH),
    ],
)
def test_json_bodies_with_unsafe_values_are_refused(
    prefix: str, route: str, body: dict[str, object], said: str
) -> None:
    segments = path_segments(prefix + route)
    for encoded in (json.dumps(body), json.dumps(json.dumps(body))):  # MLflow decodes twice
        refusal = body_problem(segments, encoded.encode())
        assert refusal is not None and refusal.status == 400
        assert said in refusal.message


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (EXPERIMENT, {"name": "e"}),
        (EXPERIMENT, {"name": "e", "artifact_location": ""}),
        (EXPERIMENT, {"name": "e", "artifact_location": None}),
        (VERSION, {"name": "m", "source": "models:/m-1", "model_id": "m-1"}),
        (VERSION, {"name": "m", "source": "runs:/r/model", "run_id": "r"}),
        ("/mlflow/artifacts/presigned-upload-url", {"run_id": "r", "path": "model/x.bin"}),
        ("/mlflow/runs/create", {"experiment_id": "1", "run_name": "../x"}),  # not inspected
    ],
)
def test_json_bodies_of_ordinary_calls_pass(route: str, body: dict[str, object]) -> None:
    assert body_problem(path_segments("/api/2.0" + route), json.dumps(body).encode()) is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"just a string"', b"\xff"])
def test_inspected_bodies_must_be_json_objects(body: bytes) -> None:
    refusal = body_problem(path_segments("/api/2.0/mlflow/model-versions/create"), body)
    assert refusal is not None and "JSON object" in refusal.message


def test_only_the_artifact_proxy_is_uncapped() -> None:
    assert is_artifact_transfer(path_segments("/api/2.0/mlflow-artifacts/artifacts/1/x"))
    assert is_artifact_transfer(path_segments("/ajax-api/2.0/mlflow-artifacts/mpu/create/x"))
    assert not is_artifact_transfer(path_segments("/ajax-api/2.0/mlflow/upload-artifact"))
    assert not is_artifact_transfer(path_segments("/api/2.0/mlflow/runs/log-batch"))
    assert not is_artifact_transfer(path_segments("/mlflow-artifacts/artifacts/x"))


# screen: size cap and body reading -------------------------------------------------------------


def _screen(
    path: str,
    chunks: list[bytes],
    *,
    length: int | None,
    limit: int = 1000,
    body: bytes | None = None,
    payload_hash: str | None = None,
    client_max_size: int = 16 * 1024 * 1024,
) -> tuple[Refusal | None, bytes | None]:
    async def run() -> tuple[Refusal | None, bytes | None]:
        protocol = mock.Mock(_reading_paused=False)
        payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
        for chunk in chunks:
            payload.feed_data(chunk)
        payload.feed_eof()
        headers = (
            {"Content-Length": str(length)}
            if length is not None
            else {"Transfer-Encoding": "chunked"}
        )
        request = make_mocked_request(
            "POST", path, headers=headers, payload=payload, client_max_size=client_max_size
        )
        return await screen(request, path, body, payload_hash, limit, S3_STORE)

    return asyncio.run(run())


def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    refusal, body = _screen("/api/2.0/mlflow/runs/log-batch", [b"x" * 10], length=5000)
    assert refusal is not None and (refusal.status, refusal.code) == (
        413,
        "RESOURCE_LIMIT_EXCEEDED",
    )
    assert "1000 bytes" in refusal.message
    assert body is None


def test_a_chunked_body_over_the_cap_is_refused() -> None:
    refusal, _ = _screen("/api/2.0/mlflow/runs/log-batch", [b"x" * 600, b"y" * 600], length=None)
    assert refusal is not None and refusal.status == 413


def test_a_chunked_body_over_aiohttps_limit_is_refused() -> None:
    refusal, _ = _screen(
        "/api/2.0/mlflow/runs/log-batch",
        [b"x" * 600, b"y" * 600],
        length=None,
        limit=10_000,
        client_max_size=1000,
    )
    assert refusal is not None and refusal.status == 413 and "1000 bytes" in refusal.message


def test_a_chunked_api_body_is_read_and_handed_on() -> None:
    refusal, body = _screen("/api/2.0/mlflow/runs/log-batch", [b'{"a":', b"1}"], length=None)
    assert refusal is None and body == b'{"a":1}'


def test_artifact_uploads_are_not_capped_nor_read() -> None:
    path = "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/big.bin"
    refusal, body = _screen(path, [b"x" * 5000], length=5000)
    assert refusal is None and body is None  # left to stream
    refusal, body = _screen(path, [b"x" * 5000], length=None)
    assert refusal is None and body is None


def test_an_inspected_body_is_read_and_checked() -> None:
    path = "/api/2.0/mlflow/model-versions/create"
    good = json.dumps({"name": "m", "source": "runs:/r/model"}).encode()
    refusal, body = _screen(path, [good], length=len(good))
    assert refusal is None and body == good
    bad = json.dumps({"name": "m", "source": "file:///etc/passwd"}).encode()
    refusal, _ = _screen(path, [bad], length=len(bad))
    assert refusal is not None and refusal.status == 400 and "'source'" in refusal.message


def test_a_body_read_here_must_match_its_signed_hash() -> None:
    path = "/api/2.0/mlflow/experiments/create"
    signed = json.dumps({"name": "e"}).encode()
    swapped = json.dumps({"name": "e", "x": 1}).encode()
    digest = hashlib.sha256(signed).hexdigest()
    refusal, body = _screen(path, [signed], length=len(signed), payload_hash=digest)
    assert refusal is None and body == signed
    refusal, _ = _screen(path, [swapped], length=len(swapped), payload_hash=digest)
    assert refusal is not None and "X-Amz-Content-SHA256" in refusal.message


def test_a_body_already_read_is_checked_as_is() -> None:
    path = "/api/2.0/mlflow/experiments/create"
    read = json.dumps({"name": "e", "artifact_location": "dbfs:/x"}).encode()
    refusal, _ = _screen(path, [], length=len(read), body=read)
    assert refusal is not None and "'artifact_location'" in refusal.message
    big = b"x" * 2000
    refusal, _ = _screen("/api/2.0/mlflow/runs/log-batch", [], length=None, body=big)
    assert refusal is not None and refusal.status == 413


# headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "X-MLflow-Authorization",
        "X-MLFLOW-WORKSPACE",
        "X_MLflow_Workspace",  # the same header to MLflow's WSGI layer
        "Remote-User",
        "X-Remote-User",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Groups",
        "X-Forwarded-For",
        "Forwarded",
        "X-Real-IP",
        "X-Auth-Request-User",
        "X-Auth-Token",
        "X-Amzn-Oidc-Identity",
        "X-Goog-Authenticated-User-Email",
        "X-MS-Client-Principal-Name",
        "Cf-Access-Jwt-Assertion",
        "X-User",
        "Cookie",
        "Proxy-Authorization",
        "x-amz-security-token",
        "X-Mlflow-Sm-Tracking-Server-Arn",
    ],
)
def test_identity_headers_are_stripped(name: str) -> None:
    assert name.lower() in STRIPPED_REQUEST


@pytest.mark.parametrize(
    "name",
    [
        "User-Agent",
        "Content-Type",
        "Content-Encoding",
        "Accept",
        "Accept-Encoding",
        "X-Mlflow-Experiment-Id",  # OTLP trace export
        "X-Mlflow-Run-Id",
        "traceparent",
        "X-Request-Id",
    ],
)
def test_ordinary_headers_are_kept(name: str) -> None:
    assert name.lower() not in STRIPPED_REQUEST
