"""The events mlfleet emits, and what their ``detail`` holds (documented in README).

AWS documents the detail-types but not the details: lifecycle events carry the tracking server
as DescribeMlflowTrackingServer shows it, model package events the package as
DescribeModelPackage shows it (the members AWS's published examples show); MLflow events carry
the request's key fields and the answer's; API-call events carry the CloudTrail record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlfleet.events.bus import Event

SAGEMAKER = "aws.sagemaker"
API_CALL = "AWS API Call via CloudTrail"
MODEL_PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"
ENDPOINT_STATE_CHANGE = "SageMaker Endpoint State Change"
# The five MLflow actions SageMaker emits events for, by sagemaker-mlflow action.
MLFLOW_DETAIL_TYPES = {
    "CreateRun": "SageMaker MLFlow Tracking Server Creating Run",
    "CreateRegisteredModel": "SageMaker MLFlow Tracking Server Creating RegisteredModel",
    "CreateModelVersion": "SageMaker MLFlow Tracking Server Creating ModelVersion",
    "TransitionModelVersionStage": (
        "SageMaker MLFlow Tracking Server Transitioning ModelVersion Stage"
    ),
    "SetRegisteredModelAlias": "SageMaker MLFlow Tracking Server Setting Registered Model Alias",
}
_WORD = re.compile(r"(?<=[a-z])(?=[A-Z])")


def lifecycle_detail_type(status: str) -> str:
    """CreateFailed -> "SageMaker Tracking Server Create Failed" (one per status)."""
    return "SageMaker Tracking Server " + _WORD.sub(" ", status)


def lifecycle_event(description: Mapping[str, Any], status: str) -> Event:
    return Event(
        source=SAGEMAKER,
        detail_type=lifecycle_detail_type(status),
        detail=_jsonable(description),
        resources=[description["TrackingServerArn"]],
    )


def app_detail_type(status: str) -> str:
    """CreateFailed -> "SageMaker MLflow App Create Failed" (one per status)."""
    return "SageMaker MLflow App " + _WORD.sub(" ", status)


def app_event(description: Mapping[str, Any], status: str) -> Event:
    """An MLflow App's status changed: its DescribeMlflowApp answer."""
    return Event(
        source=SAGEMAKER,
        detail_type=app_detail_type(status),
        detail=_jsonable(description),
        resources=[description["Arn"]],
    )


def model_package_event(description: Mapping[str, Any]) -> Event:
    """A model package created or approved, rejected, ...: its DescribeModelPackage answer."""
    return Event(
        source=SAGEMAKER,
        detail_type=MODEL_PACKAGE_STATE_CHANGE,
        detail=_jsonable(description),
        resources=[description["ModelPackageArn"]],
    )


def endpoint_event(description: Mapping[str, Any]) -> Event:
    """An endpoint changed status (Creating, InService, Updating, Failed, Deleting): its
    DescribeEndpoint answer."""
    return Event(
        source=SAGEMAKER,
        detail_type=ENDPOINT_STATE_CHANGE,
        detail=_jsonable(description),
        resources=[description["EndpointArn"]],
    )


def mlflow_event(
    action: str,
    server_arn: str,
    server_name: str,
    principal_arn: str,
    request: Any,
    response: Any,
) -> Event | None:
    detail_type = MLFLOW_DETAIL_TYPES.get(action)
    if detail_type is None:
        return None
    return Event(
        source=SAGEMAKER,
        detail_type=detail_type,
        detail={
            "TrackingServerArn": server_arn,
            "TrackingServerName": server_name,
            "Action": action,
            "UserArn": principal_arn,
            "Request": request,
            "Response": response,
        },
        resources=[server_arn],
    )


def api_call_event(record: Mapping[str, Any]) -> Event | None:
    """Control-plane calls that change something, as EventBridge receives them from CloudTrail."""
    if record.get("readOnly"):
        return None
    service = str(record["eventSource"]).split(".", 1)[0]
    return Event(
        source=f"aws.{service}",
        detail_type=API_CALL,
        detail=dict(record),
        resources=[r["ARN"] for r in record.get("resources", []) if r.get("ARN")],
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
