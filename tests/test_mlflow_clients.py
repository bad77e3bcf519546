"""Real MLflow clients against a tracking server through the gateway."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from support.daemon import Daemon
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


@pytest.fixture
def basic_auth(monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)


def test_tracking_through_server_url(
    daemon: Daemon, shared_server: dict[str, Any], basic_auth: None, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    exp_id = client.create_experiment(f"exp-{uuid.uuid4().hex[:6]}", tags={"team": "a"})
    assert client.get_experiment(exp_id).tags["team"] == "a"

    run = client.create_run(exp_id, run_name="first")
    run_id = run.info.run_id
    client.log_param(run_id, "lr", "0.01")
    client.log_batch(
        run_id,
        metrics=[Metric("acc", 0.1 * i, 0, i) for i in range(10)],
        params=[Param("layers", "3")],
        tags=[RunTag("stage", "dev")],
    )
    for step in range(5):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    client.set_terminated(run_id)

    got = client.get_run(run_id)
    assert got.data.params == {"lr": "0.01", "layers": "3"}
    assert got.data.tags["stage"] == "dev"
    assert got.data.metrics["loss"] == pytest.approx(0.2)
    assert len(client.get_metric_history(run_id, "acc")) == 10
    assert got.info.status == "FINISHED"

    found = client.search_runs([exp_id], filter_string="params.lr = '0.01' and metrics.loss < 0.5")
    assert [r.info.run_id for r in found] == [run_id]
    assert client.get_experiment_by_name(client.get_experiment(exp_id).name).experiment_id == exp_id

    # Artifacts: a file and a folder, up and down through MLflow's artifact proxy.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(os.urandom(200_000))
    (tmp_path / "config.json").write_text('{"a": 1}')
    client.log_artifact(run_id, str(tmp_path / "config.json"))
    client.log_artifacts(run_id, str(tmp_path / "model"), artifact_path="model")
    listed = {f.path for f in client.list_artifacts(run_id)}
    assert listed == {"config.json", "model"}
    down = Path(client.download_artifacts(run_id, "model", str(tmp_path / "down")))
    assert (down / "weights.bin").read_bytes() == (tmp_path / "model" / "weights.bin").read_bytes()
    on_disk = list(Path(shared_server["artifacts"]).rglob("weights.bin"))
    assert len(on_disk) >= 1

    # Model registry.
    model_name = f"model-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(model_name, description="through the gateway")
    version = client.create_model_version(model_name, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(model_name, "champion", version.version)
    assert client.get_model_version_by_alias(model_name, "champion").version == version.version
    assert model_name in [m.name for m in client.search_registered_models()]


def test_unauthenticated_requests_are_not_forwarded(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    url = shared_server["TrackingServerUrl"] + "/api/2.0/mlflow/experiments/search"
    anonymous = requests.post(url, json={"max_results": 1}, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
    key, _ = daemon.credentials
    wrong = requests.post(url, json={"max_results": 1}, auth=(key, "wrong"), timeout=10)
    assert wrong.status_code == 401
    right = requests.post(url, json={"max_results": 1}, auth=daemon.credentials, timeout=10)
    assert right.status_code == 200
    assert right.json()["experiments"]


def test_unknown_server_url(daemon: Daemon) -> None:
    response = requests.get(
        f"{daemon.url}/mlflow/nope/api/2.0/mlflow/experiments/get?experiment_id=0",
        auth=daemon.credentials,
        timeout=10,
    )
    assert response.status_code == 404
    assert "nope" in response.json()["message"]
    stranger = requests.get(
        f"{daemon.url}/mlflow/nope/api/2.0/mlflow/experiments/get?experiment_id=0", timeout=10
    )
    assert stranger.status_code == 401  # existence is not revealed before authentication


def test_sagemaker_mlflow_plugin_with_arn(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", daemon.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    arn = shared_server["TrackingServerArn"]
    # The plugin's header and auth providers read the global tracking URI, as users set it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", arn)

    client = MlflowClient()
    name = f"plugin-{uuid.uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "m", 3.0)
    client.log_param(run.info.run_id, "p", "with space + plus")
    assert client.get_run(run.info.run_id).data.params["p"] == "with space + plus"
    assert client.get_experiment_by_name(name).experiment_id == exp_id
    client.create_registered_model(f"{name}-model")
    assert client.search_registered_models(filter_string=f"name = '{name}-model'")

    # A wrong secret is refused by signature verification, not forwarded.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception, match=r"InvalidSignatureException|signature"):
        MlflowClient().get_experiment(exp_id)


def test_presigned_url_opens_the_ui_once(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    sm = daemon.client()
    url = sm.create_presigned_mlflow_tracking_server_url(
        TrackingServerName="shared", ExpiresInSeconds=60, SessionExpirationDurationInSeconds=1800
    )["AuthorizedUrl"]
    assert url.startswith(shared_server["TrackingServerUrl"] + "/auth?authToken=")

    browser = requests.Session()
    page = browser.get(url, timeout=10)
    assert page.status_code == 200
    assert "<html" in page.text.lower() and "mlflow" in page.text.lower()
    cookie = next(c for c in browser.cookies if c.name == "mlfleet_session")
    assert cookie.path == "/mlflow/shared/"
    assert cookie.has_nonstandard_attr("HttpOnly")
    # The UI's own API calls ride on the session cookie.
    ajax = browser.post(
        shared_server["TrackingServerUrl"] + "/ajax-api/2.0/mlflow/experiments/search",
        json={"max_results": 5},
        timeout=10,
    )
    assert ajax.status_code == 200 and "experiments" in ajax.json()
    # Cross-site writes with the cookie are refused.
    forged = browser.post(
        shared_server["TrackingServerUrl"] + "/ajax-api/2.0/mlflow/experiments/create",
        json={"name": "forged"},
        headers={"Origin": "https://evil.example"},
        timeout=10,
    )
    assert forged.status_code == 403

    # Single use: a second browser cannot reuse the link.
    again = requests.get(url, timeout=10, allow_redirects=False)
    assert again.status_code == 403
    # And the cookie is bound to its server.
    other = browser.get(f"{daemon.url}/mlflow/other/", timeout=10)
    assert other.status_code in (401, 404)


def test_presigned_url_expires(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    url = daemon.client().create_presigned_mlflow_tracking_server_url(
        TrackingServerName="shared", ExpiresInSeconds=5
    )["AuthorizedUrl"]
    time.sleep(6)
    assert requests.get(url, timeout=10, allow_redirects=False).status_code == 403


def test_s3_artifact_store(daemon: Daemon, moto_s3: str, basic_auth: None, tmp_path: Path) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        region_name="us-east-1",
        aws_access_key_id="moto",
        aws_secret_access_key="moto",
    )
    s3.create_bucket(Bucket="team-bucket")
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName="on-s3", ArtifactStoreUri="s3://team-bucket/mlflow", RoleArn=ROLE
    )
    desc = daemon.wait_status("on-s3", "Created", "CreateFailed")
    assert desc["TrackingServerStatus"] == "Created", desc

    client = MlflowClient(tracking_uri=desc["TrackingServerUrl"])
    run = client.create_run("0")
    (tmp_path / "hello.txt").write_text("hello s3")
    client.log_artifact(run.info.run_id, str(tmp_path / "hello.txt"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="team-bucket")["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith("hello.txt") for k in keys), keys
    back = client.download_artifacts(run.info.run_id, "hello.txt", str(tmp_path / "d"))
    assert Path(back).read_text() == "hello s3"

    # The same store as a bucket of mlfleet's S3 endpoint, which the worker serves from S3.
    endpoint = daemon.client("s3")
    prefix = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    got = endpoint.get_object(Bucket="on-s3", Key=f"{prefix}/hello.txt")
    assert got["Body"].read() == b"hello s3"
    endpoint.put_object(Bucket="on-s3", Key=f"{prefix}/from-endpoint.txt", Body=b"via mlfleet")
    stored = s3.get_object(Bucket="team-bucket", Key=f"mlflow/{prefix}/from-endpoint.txt")
    assert stored["Body"].read() == b"via mlfleet"
    listed = endpoint.list_objects_v2(Bucket="on-s3", Prefix=f"{prefix}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"{prefix}/from-endpoint.txt",
        f"{prefix}/hello.txt",
    ]

    sm.delete_mlflow_tracking_server(TrackingServerName="on-s3")

    def gone() -> bool:
        return "on-s3" not in [
            s["TrackingServerName"]
            for s in sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
        ]

    wait_for(gone, 60, what="on-s3 to be deleted")
    # SageMaker leaves artifacts in the store on delete; so does mlfleet.
    assert s3.list_objects_v2(Bucket="team-bucket")["KeyCount"] >= 1


def test_large_artifact_is_streamed(
    daemon: Daemon, shared_server: dict[str, Any], basic_auth: None, tmp_path: Path
) -> None:
    """A 300 MB artifact goes up and down without the daemon holding it in memory."""
    size = 300 * 1024 * 1024
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(size)
    rss_before = _rss_kib(daemon)
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    run = client.create_run("0")
    client.log_artifact(run.info.run_id, str(big))
    down = Path(client.download_artifacts(run.info.run_id, "big.bin", str(tmp_path / "d")))
    assert down.stat().st_size == size
    grown_mib = (_rss_kib(daemon) - rss_before) / 1024
    assert grown_mib < 100, f"daemon RSS grew by {grown_mib:.0f} MiB for a 300 MiB artifact"


def _rss_kib(daemon: Daemon) -> int:
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
