"""MLflow Apps: SageMaker's six App operations through boto3, an App used through the
sagemaker-mlflow plugin with its ARN (metrics, params, artifacts, a registered model), through
the plain MLflow client at its URL, and opened in the UI by presigned URL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from support.aws import ACCOUNT, moto_s3, unique
from support.chaos import live_workers, trail_records
from support.console import launch, needs_chromium, screenshot, sign_in_page
from support.daemon import Daemon
from support.iam import READ_ONLY, as_key, new_user
from support.plugin import as_notebook
from support.waiting import wait_for

ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlfleet"


def app_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


BUCKET = "mlfleet-apps"


@pytest.fixture(scope="module")
def bucket(s3_env: dict[str, str]) -> Any:
    """The shared daemon's S3 endpoint (moto) has the bucket of the Apps' stores."""
    s3 = moto_s3(s3_env)
    s3.create_bucket(Bucket=BUCKET)
    return s3


def create_app(daemon: Daemon, **members: Any) -> str:
    answer = daemon.client().create_mlflow_app(
        Name=members.pop("Name", unique("app")),
        ArtifactStoreUri=members.pop("ArtifactStoreUri", f"s3://{BUCKET}/{unique('apps')}"),
        RoleArn=ROLE,
        **members,
    )
    return str(answer["Arn"])


def wait_app(daemon: Daemon, arn: str, *statuses: str) -> dict[str, Any]:
    sm = daemon.client()

    def settled() -> dict[str, Any] | None:
        found = sm.describe_mlflow_app(Arn=arn)
        return found if found["Status"] in statuses else None

    return wait_for(settled, 120, what=f"{arn} to reach {statuses}")


def workers_of(daemon: Daemon, arn: str) -> list[int]:
    marker = app_id(arn).removeprefix("app-").encode()
    return [
        pid
        for pid in live_workers(daemon.data_dir)
        if marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_an_app_is_used_through_the_plugin_with_its_arn(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: Any
) -> None:
    name = unique("team")
    store = f"s3://{BUCKET}/{name}"
    arn = create_app(
        daemon,
        Name=name,
        ArtifactStoreUri=store,
        ModelRegistrationMode="AutoModelRegistrationEnabled",
    )
    assert arn.startswith(f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-app/app-")
    described = wait_app(daemon, arn, "Created", "CreateFailed")
    assert described["Status"] == "Created", described
    assert described["Name"] == name
    assert described["ArtifactStoreUri"] == store
    assert described["ModelRegistrationMode"] == "AutoModelRegistrationEnabled"
    assert described["AccountDefaultStatus"] == "DISABLED"
    # Created, it holds no process until its first request.
    assert workers_of(daemon, arn) == []

    client = as_notebook(daemon, monkeypatch, arn)
    experiment = client.create_experiment("app experiment")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    client.log_param(run.info.run_id, "lr", "0.01")
    (tmp_path / "notes.txt").write_text("kept by the App")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    fetched = client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path / "back"))
    assert Path(fetched).read_text() == "kept by the App"
    got = client.get_run(run.info.run_id)
    assert got.data.metrics == {"loss": 0.5} and got.data.params == {"lr": "0.01"}
    # With an S3 endpoint configured, its artifacts go there.
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix=name)["Contents"]]
    assert [k for k in keys if k.endswith("/notes.txt")], keys

    model = f"{name}-model"
    client.create_registered_model(model)
    source = f"{got.info.artifact_uri}/notes.txt"
    version = client.create_model_version(model, source, run.info.run_id)
    assert client.get_model_version(model, version.version).name == model
    assert len(workers_of(daemon, arn)) == 1

    # ModelRegistrationMode: the version is registered in SageMaker's Model Registry too.
    sm = daemon.client()

    def registered() -> list[Any] | None:
        groups = sm.list_model_package_groups(NameContains=model)["ModelPackageGroupSummaryList"]
        return groups or None

    wait_for(registered, 60, what=f"a model package group for {model}")

    # The plugin's own presigned UI URL opens the MLflow UI.
    from sagemaker_mlflow.presigned_url import get_presigned_url

    monkeypatch.setenv("SAGEMAKER_ENDPOINT_URL", daemon.url)
    page = requests.get(get_presigned_url(), timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()

    records = trail_records(daemon, "CreateMlflowApp")
    assert any(r["responseElements"] == {"arn": arn} for r in records), records[-1:]


def test_without_s3_an_apps_s3_store_is_kept_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Daemon(tmp_path / "data").start()
    try:
        arn = own.client().create_mlflow_app(
            Name="local", ArtifactStoreUri="s3://any-bucket/prefix", RoleArn=ROLE
        )["Arn"]
        assert wait_app(own, arn, "Created")["ArtifactStoreUri"] == "s3://any-bucket/prefix"
        client = as_notebook(own, monkeypatch, arn)
        run = client.create_run(client.create_experiment("local"))
        (tmp_path / "weights.txt").write_text("0.1 0.2")
        client.log_artifact(run.info.run_id, str(tmp_path / "weights.txt"))
        listed = client.list_artifacts(run.info.run_id)
        assert [f.path for f in listed] == ["weights.txt"]
        stored = list((tmp_path / "artifacts" / "mlflow-apps").rglob("weights.txt"))
        assert [p.read_text() for p in stored] == ["0.1 0.2"]
    finally:
        own.stop()


def test_an_app_url_works_with_the_plain_mlflow_client(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, bucket: Any
) -> None:
    arn = create_app(daemon)
    wait_app(daemon, arn, "Created")
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(tracking_uri=f"{daemon.url}/mlflow/{app_id(arn)}")
    experiment = client.create_experiment("plain client")
    assert client.get_experiment(experiment).name == "plain client"
    # The same URL under a tracking server's ARN is no tracking server.
    server_arn = arn.replace("mlflow-app/", "mlflow-tracking-server/")
    answer = requests.get(
        f"{daemon.url}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"x-mlflow-sm-tracking-server-arn": server_arn},
        auth=daemon.credentials,
        timeout=30,
    )
    assert answer.status_code == 404


def test_app_operations_list_update_default_and_delete(daemon: Daemon, bucket: Any) -> None:
    sm = daemon.client()
    first = create_app(daemon, AccountDefaultStatus="ENABLED", DefaultDomainIdList=["d-abc123"])
    second = create_app(daemon)
    for arn in (first, second):
        wait_app(daemon, arn, "Created")
    assert sm.describe_mlflow_app(Arn=first)["AccountDefaultStatus"] == "ENABLED"

    # One default App at a time: enabling the second disables the first.
    sm.update_mlflow_app(Arn=second, AccountDefaultStatus="ENABLED", Name="renamed")
    described = wait_app(daemon, second, "Updated", "UpdateFailed")
    assert described["Name"] == "renamed" and described["AccountDefaultStatus"] == "ENABLED"
    assert sm.describe_mlflow_app(Arn=first)["AccountDefaultStatus"] == "DISABLED"

    listed = sm.list_mlflow_apps(AccountDefaultStatus="ENABLED")["Summaries"]
    assert [s["Arn"] for s in listed] == [second]
    by_domain = sm.list_mlflow_apps(DefaultForDomainId="d-abc123")["Summaries"]
    assert [s["Arn"] for s in by_domain] == [first]
    pages = sm.get_paginator("list_mlflow_apps").paginate(PaginationConfig={"PageSize": 1})
    every = [s["Arn"] for page in pages for s in page["Summaries"]]
    assert {first, second} <= set(every) and len(every) == len(set(every))
    # Apps are not tracking servers, and the other way round.
    servers = sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
    assert app_id(first) not in {s["TrackingServerName"] for s in servers}
    with pytest.raises(ClientError) as missing:
        sm.describe_mlflow_tracking_server(TrackingServerName=app_id(first))
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"

    sm.add_tags(ResourceArn=first, Tags=[{"Key": "team", "Value": "vision"}])
    assert sm.list_tags(ResourceArn=first)["Tags"] == [{"Key": "team", "Value": "vision"}]

    sm.delete_mlflow_app(Arn=first)

    def gone() -> bool:
        try:
            sm.describe_mlflow_app(Arn=first)
        except sm.exceptions.ResourceNotFound:
            return True
        return False

    wait_for(gone, 60, what=f"{first} deleted")
    with pytest.raises(ClientError) as refused:
        sm.delete_mlflow_app(Arn=first)
    assert refused.value.response["Error"]["Code"] == "ResourceNotFound"


def test_app_requests_are_validated_and_authorized(daemon: Daemon, bucket: Any) -> None:
    for members, says in (
        ({"Name": "no_underscores"}, "Name"),
        ({"ArtifactStoreUri": "ftp://bucket/x"}, "ArtifactStoreUri"),
        ({"ModelRegistrationMode": "Sometimes"}, "ModelRegistrationMode"),
        ({"ArtifactStoreUri": "https://bucket.example/x"}, "s3://bucket/prefix"),
    ):
        with pytest.raises(ClientError) as refused:
            create_app(daemon, **members)
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException", error
        assert says.lower() in error["Message"].lower(), error

    arn = create_app(daemon)
    reader = as_key(daemon, "sagemaker", new_user(daemon, READ_ONLY))
    assert reader.describe_mlflow_app(Arn=arn)["Arn"] == arn
    for call, kwargs in (
        (reader.create_mlflow_app, {"Name": "x", "ArtifactStoreUri": "s3://b/p", "RoleArn": ROLE}),
        (reader.delete_mlflow_app, {"Arn": arn}),
    ):
        with pytest.raises(ClientError) as denied:
            call(**kwargs)
        error = denied.value.response["Error"]
        assert error["Code"] == "AccessDeniedException"
        assert "sagemaker:" in error["Message"] and "mlflow-app/" in error["Message"]


def test_an_app_opens_in_the_ui_by_presigned_url(daemon: Daemon, bucket: Any) -> None:
    arn = create_app(daemon)
    wait_app(daemon, arn, "Created")
    url = daemon.client().create_presigned_mlflow_app_url(Arn=arn, ExpiresInSeconds=60)
    assert f"/mlflow/{app_id(arn)}/auth?authToken=" in url["AuthorizedUrl"]
    session = requests.Session()
    page = session.get(url["AuthorizedUrl"], timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()
    # The UI's own calls are answered in the session the link opened.
    answer = session.get(
        f"{daemon.url}/mlflow/{app_id(arn)}/ajax-api/2.0/mlflow/experiments/search?max_results=5",
        timeout=30,
    )
    assert answer.status_code == 200 and "experiments" in answer.json()
    # The link is used up.
    assert requests.get(url["AuthorizedUrl"], timeout=30).status_code in (401, 403)


@needs_chromium
def test_an_app_is_created_opened_and_deleted_in_the_console(daemon: Daemon, bucket: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    name = unique("console-app")
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            sign_in_page(page, daemon)
            page.goto(f"{daemon.url}/console/apps")
            page.get_by_role("link", name="Create MLflow App").click()
            page.locator("#f-Name").fill(name)
            page.get_by_label("Artifact store URI").fill(f"s3://{BUCKET}/{name}")
            page.get_by_role("button", name="Create").click()
            expect(page.get_by_text(f"Creating MLflow App {name}.")).to_be_visible()
            expect(page.get_by_role("heading", name=name)).to_be_visible()

            def created() -> bool:
                page.reload()
                html = page.content()
                return ">Created<" in html and "asleep: its next request starts it" in html

            wait_for(created, 60, what="the App created, asleep")
            screenshot(page, "app-detail")
            # Open MLflow UI: a new tab on the App's UI, which wakes it.
            with context.expect_page() as opened:
                page.get_by_role("button", name="Open MLflow UI").click()
            ui = opened.value
            ui.wait_for_load_state()
            expect(ui).to_have_title(re.compile("MLflow"))
            ui.close()

            page.get_by_role("link", name="Delete…").click()
            page.get_by_label(re.compile("Type")).fill(page.url.rsplit("/", 2)[1])
            page.get_by_role("button", name=re.compile("Delete")).click()
            expect(page.get_by_text(re.compile("Deleting app-"))).to_be_visible()
        finally:
            browser.close()
