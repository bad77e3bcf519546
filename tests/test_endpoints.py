"""Deployment: an MLflow model, registered as a model package, served behind an endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from support.aws import error_of, moto_s3, unique
from support.daemon import Daemon
from support.events import Receiver, route_to, wait_received
from support.iam import DATA_SCIENTIST, new_user
from support.serving import FEATURES, log_model, scoring_pids, train_and_log, wait_endpoint
from support.waiting import wait_for

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


@pytest.fixture(scope="module")
def approved(daemon: Daemon, serving_server: str) -> tuple[str, Any]:
    arn, model = log_model(daemon, serving_server, [0, 1, 0, 1, 1])
    daemon.client().update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    return arn, model


@pytest.fixture(scope="module")
def endpoint(daemon: Daemon, approved: tuple[str, Any]) -> Iterator[str]:
    """A two-variant endpoint, weights 3:1, of the approved package."""
    sm = daemon.client()
    model, config, name = unique("model"), unique("config"), unique("endpoint")
    sm.create_model(ModelName=model, PrimaryContainer={"ModelPackageName": approved[0]})
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {
                "VariantName": "blue",
                "ModelName": model,
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 3.0,
                "InstanceType": "ml.m5.large",
            },
            {
                "VariantName": "green",
                "ModelName": model,
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 1.0,
                "InstanceType": "ml.m5.large",
            },
        ],
    )
    arn = sm.create_endpoint(EndpointName=name, EndpointConfigName=config)["EndpointArn"]
    assert arn.endswith(f":endpoint/{name}")
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] in ("Creating", "InService")
    desc = wait_endpoint(daemon, name)
    assert desc["EndpointStatus"] == "InService", desc
    yield name
    sm.delete_endpoint(EndpointName=name)
    with pytest.raises(ClientError):
        wait_for(lambda: not sm.describe_endpoint(EndpointName=name), 60, what="deletion")


def invoke(daemon: Daemon, endpoint: str, payload: Any, **extra: str) -> dict[str, Any]:
    runtime = daemon.client("sagemaker-runtime")
    return runtime.invoke_endpoint(  # type: ignore[no-any-return]
        EndpointName=endpoint,
        ContentType="application/json",
        Body=json.dumps(payload).encode(),
        **extra,
    )


def test_an_approved_package_serves_the_models_predictions(
    daemon: Daemon, approved: tuple[str, Any], endpoint: str
) -> None:
    answer = invoke(daemon, endpoint, {"inputs": FEATURES.tolist()})
    predictions = json.loads(answer["Body"].read())["predictions"]
    assert predictions == approved[1].predict(FEATURES).tolist()
    assert answer["InvokedProductionVariant"] in ("blue", "green")
    desc = daemon.client().describe_endpoint(EndpointName=endpoint)
    assert {v["VariantName"]: v["CurrentInstanceCount"] for v in desc["ProductionVariants"]} == {
        "blue": 1,
        "green": 1,
    }
    listed = daemon.client().list_endpoints(NameContains=endpoint)["Endpoints"]
    assert [(e["EndpointName"], e["EndpointStatus"]) for e in listed] == [(endpoint, "InService")]


def test_traffic_is_split_by_variant_weight(daemon: Daemon, endpoint: str) -> None:
    counts = Counter(
        invoke(daemon, endpoint, {"inputs": FEATURES[:1].tolist()})["InvokedProductionVariant"]
        for _ in range(200)
    )
    # 3:1 is 150:50 on average; a fair split's share of blue stays far inside this band.
    assert set(counts) == {"blue", "green"}
    assert 110 <= counts["blue"] <= 185, counts
    targeted = invoke(daemon, endpoint, {"inputs": FEATURES[:1].tolist()}, TargetVariant="green")
    assert targeted["InvokedProductionVariant"] == "green"


def test_a_bad_payload_is_a_model_error(daemon: Daemon, endpoint: str) -> None:
    runtime = daemon.client("sagemaker-runtime")
    with pytest.raises(ClientError) as exc:
        runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=b'{"nonsense": 1}'
        )
    response = exc.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "nonsense" in response["OriginalMessage"] or "input" in response["OriginalMessage"]


def test_an_unknown_endpoint_is_a_validation_error(daemon: Daemon) -> None:
    missing = unique("missing")
    with pytest.raises(ClientError) as exc:
        invoke(daemon, missing, {"inputs": [[1, 2]]})
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as described:
        daemon.client().describe_endpoint(EndpointName=missing)
    code, message = error_of(described)
    assert code == "ValidationException"
    assert message.startswith("Could not find endpoint")


def test_a_rejected_package_does_not_deploy(daemon: Daemon, serving_server: str) -> None:
    sm = daemon.client()
    arn, _ = log_model(daemon, serving_server, [1, 0, 1, 0, 0])
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Rejected")
    with pytest.raises(ClientError) as exc:
        sm.create_model(ModelName=unique("rejected"), PrimaryContainer={"ModelPackageName": arn})
    code, message = error_of(exc)
    assert code == "ValidationException"
    assert "Rejected" in message and "only Approved packages deploy" in message
    # The documented override deploys it anyway.
    model = unique("override")
    sm.create_model(
        ModelName=model,
        PrimaryContainer={"ModelPackageName": arn},
        Tags=[{"Key": "mlfleet:allow-unapproved", "Value": "true"}],
    )
    assert sm.describe_model(ModelName=model)["PrimaryContainer"]["ModelPackageName"] == arn
    sm.delete_model(ModelName=model)
    with pytest.raises(ClientError) as gone:
        sm.describe_model(ModelName=model)
    assert error_of(gone)[1].startswith("Could not find model")


def test_a_model_that_cannot_be_fetched_fails_the_endpoint(
    daemon: Daemon, serving_server: str
) -> None:
    sm = daemon.client()
    model, config, name = unique("ghost"), unique("ghost"), unique("ghost")
    sm.create_model(
        ModelName=model,
        PrimaryContainer={
            "ModelDataUrl": "models:/no-such-model/1",
            "Environment": {"MLFLEET_TRACKING_SERVER": serving_server},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[{"VariantName": "only", "ModelName": model, "InitialInstanceCount": 1}],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    desc = wait_endpoint(daemon, name)
    assert desc["EndpointStatus"] == "Failed"
    assert "no-such-model" in desc["FailureReason"]
    sm.delete_endpoint(EndpointName=name)
    with pytest.raises(ClientError):
        wait_for(lambda: not sm.describe_endpoint(EndpointName=name), 60, what="deletion")


def test_a_crashed_instance_is_restarted(daemon: Daemon, endpoint: str) -> None:
    [pid] = scoring_pids(endpoint, "green")
    os.kill(pid, signal.SIGKILL)
    # The very next invocation is served: by the replacement, which it waits for (or, past
    # the wait, after a 503 that the SDK retries), never refused for the crash.
    payload = {"inputs": FEATURES[:1].tolist()}
    assert invoke(daemon, endpoint, payload, TargetVariant="green")["InvokedProductionVariant"] == (
        "green"
    )

    def green_answers() -> bool:
        try:
            payload = {"inputs": FEATURES[:1].tolist()}
            answer = invoke(daemon, endpoint, payload, TargetVariant="green")
        except ClientError:
            return False
        return answer["InvokedProductionVariant"] == "green"

    wait_for(green_answers, 60, 0.2, "the green instance to serve again")
    [restarted] = scoring_pids(endpoint, "green")
    assert restarted != pid


def mlfleet_deploy(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlfleet", "deploy", *args, "--data-dir", str(daemon.data_dir)],
        env=daemon.cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mlfleet_deploy_creates_then_updates_without_downtime(
    daemon: Daemon, serving_server: str, approved: tuple[str, Any]
) -> None:
    sm = daemon.client()
    name = unique("cli")
    created = mlfleet_deploy(daemon, approved[0], "--endpoint", name)
    assert created.returncode == 0, created.stderr
    first = sm.describe_endpoint(EndpointName=name)
    assert first["EndpointStatus"] == "InService"
    [old_pid] = scoring_pids(name, "AllTraffic")

    expected = approved[1].predict(FEATURES[:2]).tolist()
    failures: list[str] = []
    served: list[bool] = []
    stop = threading.Event()

    def keep_invoking() -> None:
        while not stop.is_set():
            try:
                answer = invoke(daemon, name, {"inputs": FEATURES[:2].tolist()})
                served.append(json.loads(answer["Body"].read())["predictions"] == expected)
            except ClientError as exc:
                failures.append(str(exc))

    caller = threading.Thread(target=keep_invoking)
    caller.start()
    try:
        # The same model by its MLflow URI (the extension), as a new config of the endpoint.
        uri = sm.describe_model_package(ModelPackageName=approved[0])["SourceUri"]
        updated = mlfleet_deploy(
            daemon, uri, "--tracking-server", serving_server, "--endpoint", name
        )
    finally:
        stop.set()
        caller.join()
    assert updated.returncode == 0, updated.stderr
    assert failures == []
    assert len(served) > 10 and all(served)
    second = sm.describe_endpoint(EndpointName=name)
    assert second["EndpointStatus"] == "InService"
    assert second["EndpointConfigName"] != first["EndpointConfigName"]
    assert old_pid not in scoring_pids(name, "AllTraffic")
    assert len(scoring_pids(name, "AllTraffic")) == 1
    with pytest.raises(ClientError) as again:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=second["EndpointConfigName"])
    assert error_of(again)[0] == "ValidationException"
    sm.delete_endpoint(EndpointName=name)


def test_mlfleet_deploy_refuses_an_unapproved_package(daemon: Daemon, serving_server: str) -> None:
    arn, _ = log_model(daemon, serving_server, [0, 0, 1, 1, 0])
    refused = mlfleet_deploy(daemon, arn, "--endpoint", unique("pending"))
    assert refused.returncode == 1
    assert "PendingManualApproval" in refused.stderr


def test_a_package_rejected_after_create_model_does_not_deploy(
    daemon: Daemon, serving_server: str
) -> None:
    sm = daemon.client()
    arn, _ = log_model(daemon, serving_server, [0, 1, 1, 0, 1])
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    model, config = unique("revoked"), unique("revoked")
    sm.create_model(ModelName=model, PrimaryContainer={"ModelPackageName": arn})
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[{"VariantName": "only", "ModelName": model, "InitialInstanceCount": 1}],
    )
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Rejected")
    name = unique("revoked")
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    assert "only Approved packages deploy" in error_of(exc)[1]
    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName=name)


def test_an_endpoint_serves_again_after_a_daemon_restart(tmp_path: Path) -> None:
    own = Daemon(tmp_path / "data").start()
    try:
        sm = own.client()
        sm.create_mlflow_tracking_server(
            TrackingServerName="restart",
            ArtifactStoreUri=f"file://{tmp_path / 'artifacts'}",
            RoleArn=ROLE,
            AutomaticModelRegistration=True,
        )
        own.wait_status("restart", "Created")
        arn, model = log_model(own, "restart", [1, 1, 0, 0, 1])
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
        deployed = mlfleet_deploy(own, arn, "--endpoint", "survivor")
        assert deployed.returncode == 0, deployed.stderr
        own.kill()
        own.start()

        def answers() -> list[int] | None:
            try:
                answer = invoke(own, "survivor", {"inputs": FEATURES.tolist()})
            except ClientError as exc:
                # While its instance starts again: a 503 (after a bounded wait) that the SDK
                # retries, never "not found or not in service".
                assert error_of(exc)[0] == "ServiceUnavailable", error_of(exc)
                return None
            return json.loads(answer["Body"].read())["predictions"]  # type: ignore[no-any-return]

        assert wait_for(answers, 120, 0.2, "the endpoint after the restart") == (
            model.predict(FEATURES).tolist()
        )
        assert own.client().describe_endpoint(EndpointName="survivor")["EndpointStatus"] == (
            "InService"
        )
    finally:
        own.stop()


def test_invoking_and_deploying_need_their_permissions(daemon: Daemon, endpoint: str) -> None:
    scientist = new_user(daemon, DATA_SCIENTIST)
    nobody = new_user(daemon)
    as_scientist = {"key": scientist["AccessKeyId"], "secret": scientist["SecretAccessKey"]}
    as_nobody = {"key": nobody["AccessKeyId"], "secret": nobody["SecretAccessKey"]}
    payload = json.dumps({"inputs": FEATURES[:1].tolist()}).encode()

    answer = daemon.client("sagemaker-runtime", **as_scientist).invoke_endpoint(
        EndpointName=endpoint, ContentType="application/json", Body=payload
    )
    assert answer["InvokedProductionVariant"] in ("blue", "green")
    sm = daemon.client(**as_scientist)
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    with pytest.raises(ClientError) as refused:
        sm.delete_endpoint(EndpointName=endpoint)
    assert error_of(refused)[0] == "AccessDeniedException"

    with pytest.raises(ClientError) as denied:
        daemon.client("sagemaker-runtime", **as_nobody).invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=payload
        )
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    code, message = error_of(denied)
    assert code == "AccessDeniedException"
    assert "sagemaker:InvokeEndpoint" in message and f"endpoint/{endpoint}" in message
    forger = daemon.client("sagemaker-runtime", key=scientist["AccessKeyId"], secret="x" * 40)
    with pytest.raises(ClientError) as forged:
        forger.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=payload)
    assert error_of(forged)[0] == "InvalidSignatureException"


def test_deployment_on_postgresql(pg_daemon: Daemon, tmp_path: Path) -> None:
    sm = pg_daemon.client()
    server = unique("pg-serving")
    sm.create_mlflow_tracking_server(
        TrackingServerName=server, ArtifactStoreUri=f"file://{tmp_path}", RoleArn=ROLE
    )
    assert pg_daemon.wait_status(server, "Created", "CreateFailed")["TrackingServerStatus"] == (
        "Created"
    )
    name, model = train_and_log(pg_daemon, server, [1, 0, 0, 1, 1])
    endpoint = unique("pg")
    for _ in range(2):  # created, then updated to a second config
        deployed = mlfleet_deploy(
            pg_daemon, f"models:/{name}/1", "--tracking-server", server, "--endpoint", endpoint
        )
        assert deployed.returncode == 0, deployed.stderr
        answer = invoke(pg_daemon, endpoint, {"inputs": FEATURES.tolist()})
        assert json.loads(answer["Body"].read())["predictions"] == model.predict(FEATURES).tolist()
    sm.delete_endpoint(EndpointName=endpoint)
    with pytest.raises(ClientError):
        wait_for(lambda: not sm.describe_endpoint(EndpointName=endpoint), 60, what="deletion")
    sm.delete_mlflow_tracking_server(TrackingServerName=server)


def test_a_model_in_an_s3_store_is_served(daemon: Daemon, s3_env: dict[str, str]) -> None:
    """The instance's model comes from S3 through a tracking-server worker: the fetch has no
    network, so it must not be sent to S3 itself by presigned URLs."""
    bucket, server, name = unique("models"), unique("on-s3"), unique("from-s3")
    s3 = moto_s3(s3_env)
    s3.create_bucket(Bucket=bucket)
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=server,
        ArtifactStoreUri=f"s3://{bucket}/mlflow",
        RoleArn=ROLE,
        AutomaticModelRegistration=True,
    )
    assert daemon.wait_status(server, "Created", "CreateFailed")["TrackingServerStatus"] == (
        "Created"
    )
    arn, model = log_model(daemon, server, [0, 1, 1, 0, 1])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("/MLmodel") for k in keys), keys
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    deployed = mlfleet_deploy(daemon, arn, "--endpoint", name, "--no-wait")
    assert deployed.returncode == 0, deployed.stderr
    desc = wait_endpoint(daemon, name)
    assert desc["EndpointStatus"] == "InService", desc
    answer = invoke(daemon, name, {"inputs": FEATURES.tolist()})
    assert json.loads(answer["Body"].read())["predictions"] == model.predict(FEATURES).tolist()
    sm.delete_endpoint(EndpointName=name)
    with pytest.raises(ClientError):
        wait_for(lambda: not sm.describe_endpoint(EndpointName=name), 60, what="deletion")
    sm.delete_mlflow_tracking_server(TrackingServerName=server)


def test_models_and_endpoint_configs_are_listed(daemon: Daemon, approved: tuple[str, Any]) -> None:
    sm = daemon.client()
    prefix = unique("listed")
    models = [f"{prefix}-{i}" for i in range(3)]
    for model in models:
        sm.create_model(ModelName=model, PrimaryContainer={"ModelPackageName": approved[0]})
        sm.create_endpoint_config(
            EndpointConfigName=model,
            ProductionVariants=[
                {"VariantName": "v", "ModelName": model, "InitialInstanceCount": 1}
            ],
        )
    listed = sm.list_models(NameContains=prefix, SortBy="Name", SortOrder="Ascending")
    assert [m["ModelName"] for m in listed["Models"]] == models
    newest_first = sm.list_endpoint_configs(NameContains=prefix)["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in newest_first] == models[::-1]
    first = sm.list_endpoint_configs(NameContains=prefix, MaxResults=2)
    rest = sm.list_endpoint_configs(NameContains=prefix, MaxResults=2, NextToken=first["NextToken"])
    assert len(first["EndpointConfigs"]) == 2 and len(rest["EndpointConfigs"]) == 1
    assert "NextToken" not in rest
    for model in models:
        sm.delete_endpoint_config(EndpointConfigName=model)
        sm.delete_model(ModelName=model)
    assert sm.list_models(NameContains=prefix)["Models"] == []


def test_endpoint_status_changes_are_events(daemon: Daemon, approved: tuple[str, Any]) -> None:
    sm = daemon.client()
    name = unique("evented")
    receiver = Receiver().start()
    try:
        route_to(
            daemon,
            receiver,
            {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Endpoint State Change"],
                "detail": {"EndpointName": [name]},
            },
        )
        sm.create_model(ModelName=name, PrimaryContainer={"ModelPackageName": approved[0]})
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": "v", "ModelName": name, "InitialInstanceCount": 1}],
        )
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        assert wait_endpoint(daemon, name)["EndpointStatus"] == "InService"
        sm.delete_endpoint(EndpointName=name)
        bodies = wait_received(receiver, 3)
    finally:
        receiver.stop()
    assert [b["detail"]["EndpointStatus"] for b in bodies] == ["Creating", "InService", "Deleting"]
    assert bodies[1]["resources"] == [
        sm.describe_model(ModelName=name)["ModelArn"].replace(":model/", ":endpoint/")
    ]
    assert bodies[1]["detail"]["ProductionVariants"][0]["CurrentInstanceCount"] == 1
