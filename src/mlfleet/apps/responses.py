"""SageMaker's MLflow App operations, served at SageMaker's endpoint (fleet.responses).

Each is authorized as ``sagemaker:<Operation>`` on the App's ARN (``...:mlflow-app/<id>``) with
its tags; a create also passes its role (``iam:PassRole``). What each does lives in ``Apps``.
"""

from __future__ import annotations

from typing import Any

from mlfleet.api.operations import (
    OPERATORS,
    READERS,
    Access,
    Call,
    OperationTable,
    Target,
    anywhere,
)
from mlfleet.apps.service import Apps
from mlfleet.audit.trail import MLFLOW_APP_TYPE
from mlfleet.auth.ui_sessions import new_token
from mlfleet.protocol.shapes import sagemaker as shapes

OPERATIONS: OperationTable[Apps] = OperationTable("sagemaker", MLFLOW_APP_TYPE)
declare = OPERATIONS.declare


def _app(apps: Apps, call: Call[Any]) -> Target:
    arn = call.params["Arn"]
    return Target(arn, apps.tags_of(arn))


def _new_app(apps: Apps, call: Call[Any]) -> Target:
    # The id is made by the create: the policy sees the App's ARN with a wildcard id.
    return Target(apps.arn_for("*"), request_tags=call.params.get("Tags", []))


@declare(Access.WRITE, OPERATORS, resource=_new_app, passes_roles=lambda p: [p["RoleArn"]])
def create_mlflow_app(
    apps: Apps, call: Call[shapes.CreateMlflowAppRequest]
) -> shapes.CreateMlflowAppResponse:
    return apps.create(call.params, call.principal)


@declare(Access.READ, READERS, resource=_app)
def describe_mlflow_app(
    apps: Apps, call: Call[shapes.DescribeMlflowAppRequest]
) -> shapes.DescribeMlflowAppResponse:
    return apps.describe(call.params)


@declare(Access.WRITE, OPERATORS, resource=_app)
def update_mlflow_app(
    apps: Apps, call: Call[shapes.UpdateMlflowAppRequest]
) -> shapes.UpdateMlflowAppResponse:
    return apps.update(call.params, call.principal)


@declare(Access.WRITE, OPERATORS, resource=_app)
def delete_mlflow_app(
    apps: Apps, call: Call[shapes.DeleteMlflowAppRequest]
) -> shapes.DeleteMlflowAppResponse:
    return apps.delete(call.params, call.principal)


@declare(Access.LIST, READERS, resource=anywhere)
def list_mlflow_apps(
    apps: Apps, call: Call[shapes.ListMlflowAppsRequest]
) -> shapes.ListMlflowAppsResponse:
    return apps.list(call.params)


@declare(Access.WRITE, READERS, resource=_app)
def create_presigned_mlflow_app_url(
    apps: Apps, call: Call[shapes.CreatePresignedMlflowAppUrlRequest]
) -> shapes.CreatePresignedMlflowAppUrlResponse:
    token, token_hash = new_token()
    return apps.create_presigned_url(call.params, call.principal, token, token_hash)
