"""Automatic registration: MLflow model versions become model packages, exactly once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from support.aws import unique
from support.daemon import Daemon
from support.disk import SmallDisk
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"
TAG = "sagemaker.model_package_arn"


@pytest.fixture(scope="module")
def registering_server(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("registering")
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp('registering')}",
        RoleArn=ROLE,
        AutomaticModelRegistration=True,
    )
    assert daemon.wait_status(name, "Created", "CreateFailed")["TrackingServerStatus"] == "Created"
    yield name
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


@pytest.fixture
def mlflow_client(
    daemon: Daemon, registering_server: str, monkeypatch: pytest.MonkeyPatch
) -> MlflowClient:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    return MlflowClient(tracking_uri=f"{daemon.url}/mlflow/{registering_server}")


def group_of(model: str, server: str) -> str:
    return f"{model}-{hashlib.sha256(server.encode()).hexdigest()[:6]}"


def packages(daemon: Daemon, group: str) -> list[dict[str, Any]]:
    return daemon.client().list_model_packages(ModelPackageGroupName=group)[
        "ModelPackageSummaryList"
    ]


def new_version(client: MlflowClient, model: str) -> Any:
    run = client.create_run(client.create_experiment(unique("exp")))
    return client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)


def test_a_registered_version_becomes_a_model_package(
    daemon: Daemon, registering_server: str, mlflow_client: MlflowClient
) -> None:
    model = unique("churn")
    mlflow_client.create_registered_model(model)
    first = new_version(mlflow_client, model)
    group = group_of(model, registering_server)

    described = daemon.client().describe_model_package_group(ModelPackageGroupName=group)
    assert described["ModelPackageGroupStatus"] == "Completed"
    [package] = packages(daemon, group)
    assert package["ModelPackageVersion"] == 1
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    tagged = mlflow_client.get_model_version(model, first.version).tags[TAG]
    assert tagged == package["ModelPackageArn"]
    full = daemon.client().describe_model_package(ModelPackageName=tagged)
    assert full["SourceUri"] == f"models:/{model}/1"
    assert full["CustomerMetadataProperties"]["mlflow.registered_model_name"] == model

    new_version(mlflow_client, model)
    assert [p["ModelPackageVersion"] for p in packages(daemon, group)] == [1, 2]


def test_lifecycle_aliases_set_the_package_lifecycle(
    daemon: Daemon, registering_server: str, mlflow_client: MlflowClient
) -> None:
    model = unique("fraud")
    mlflow_client.create_registered_model(model)
    version = new_version(mlflow_client, model)
    mlflow_client.set_registered_model_alias(
        model, "sagemakerlifecycle-staging-pending", version.version
    )
    arn = mlflow_client.get_model_version(model, version.version).tags[TAG]
    lifecycle = daemon.client().describe_model_package(ModelPackageName=arn)["ModelLifeCycle"]
    assert (lifecycle["Stage"], lifecycle["StageStatus"]) == ("staging", "pending")
    mlflow_client.set_registered_model_alias(model, "champion", version.version)  # not lifecycle
    mlflow_client.set_registered_model_alias(
        model, "sagemakerlifecycle-production-active", version.version
    )
    lifecycle = daemon.client().describe_model_package(ModelPackageName=arn)["ModelLifeCycle"]
    assert (lifecycle["Stage"], lifecycle["StageStatus"]) == ("production", "active")


def test_missed_versions_are_registered_once_when_the_server_serves_again(
    daemon: Daemon, registering_server: str, mlflow_client: MlflowClient
) -> None:
    sm = daemon.client()
    model = unique("missed")
    mlflow_client.create_registered_model(model)
    new_version(mlflow_client, model)  # registered as it is created
    # Versions created while registration is off stand for a registration cut short: MLflow
    # answered, no package was made, the version has no tag.
    sm.update_mlflow_tracking_server(
        TrackingServerName=registering_server, AutomaticModelRegistration=False
    )
    daemon.wait_status(registering_server, "Updated")
    missed = [new_version(mlflow_client, model) for _ in range(2)]
    group = group_of(model, registering_server)
    assert len(packages(daemon, group)) == 1
    assert all(TAG not in mlflow_client.get_model_version(model, v.version).tags for v in missed)

    for _ in range(2):  # catching up twice makes no duplicates
        sm.update_mlflow_tracking_server(
            TrackingServerName=registering_server, AutomaticModelRegistration=True
        )
        daemon.wait_status(registering_server, "Updated")
        wait_for(lambda: len(packages(daemon, group)) == 3, 60, what="the missed versions")
    assert [p["ModelPackageVersion"] for p in packages(daemon, group)] == [1, 2, 3]
    for version in missed:
        assert (
            mlflow_client.get_model_version(model, version.version)
            .tags[TAG]
            .startswith("arn:aws:sagemaker:us-east-1:123456789012:model-package/")
        )


def test_servers_without_automatic_registration_register_nothing(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    model = unique("plain")
    client.create_registered_model(model)
    version = new_version(client, model)
    assert TAG not in client.get_model_version(model, version.version).tags
    groups = daemon.client().list_model_package_groups(NameContains=model)
    assert groups["ModelPackageGroupSummaryList"] == []


def test_a_registration_that_fails_is_retried_once_the_database_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control plane's database (where packages live) on a small disk of its own, the
    server's metadata database beside the data dir: with that disk full, MLflow still makes
    versions but their packages cannot be stored. Once space is back, with nothing restarted,
    each of those versions gets exactly one package."""
    with SmallDisk(tmp_path / "disk", 32) as disk:
        daemon = Daemon(
            tmp_path / "data", "--database-url", f"sqlite:///{disk.path / 'mlfleet.db'}"
        ).start()
        try:
            name = "retrying"
            daemon.client().create_mlflow_tracking_server(
                TrackingServerName=name,
                ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
                RoleArn=ROLE,
                AutomaticModelRegistration=True,
            )
            url = daemon.wait_status(name, "Created")["TrackingServerUrl"]
            key, secret = daemon.credentials
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            client = MlflowClient(tracking_uri=url)
            model = unique("retried")
            client.create_registered_model(model)
            run = client.create_run("0").info.run_id

            def untagged() -> list[str]:
                versions = client.search_model_versions(f"name = '{model}'")
                return [v.version for v in versions if TAG not in v.tags]

            # A version whose answer is 507 (its record could not be stored) was made all the
            # same: the retry is after the call, so the call itself is never retried here.
            disk.fill()
            for _ in range(50):
                answer = requests.post(
                    f"{url}/api/2.0/mlflow/model-versions/create",
                    json={"name": model, "source": f"runs:/{run}/model", "run_id": run},
                    auth=(key, secret),
                    timeout=60,
                )
                assert answer.status_code in (200, 507), answer.text
                if untagged():
                    break
            missed = untagged()
            assert missed, "every version was registered on a full disk"

            disk.free()
            wait_for(lambda: not untagged(), 60, what=f"versions {missed} to be registered")
            versions = client.search_model_versions(f"name = '{model}'")
            arns = sorted(v.tags[TAG] for v in versions)
            group = group_of(model, name)
            assert sorted(p["ModelPackageArn"] for p in packages(daemon, group)) == arns
            assert len(set(arns)) == len(versions)
        finally:
            daemon.stop()
