"""SageMaker's tracking-server operations at ``POST /`` (AWS JSON 1.1).

Parsing and shaping come from botocore's service model (``mlfleet.protocol``), the common steps
from :mod:`mlfleet.api.endpoint`; what each operation does lives in ``FleetService``. Each is
authorized as ``sagemaker:<Operation>`` on the tracking server's ARN, with its tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlfleet.api.endpoint import JsonEndpoint
from mlfleet.api.operations import (
    OPERATORS,
    READERS,
    Access,
    Bound,
    Call,
    OperationTable,
    Target,
    anywhere,
)
from mlfleet.api.pipeline import Pipeline
from mlfleet.audit.trail import MLFLOW_APP_TYPE, TRACKING_SERVER_TYPE
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.ui_sessions import new_token
from mlfleet.fleet.service import FleetService
from mlfleet.fleet.stores import local_folder
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.shapes import sagemaker as shapes

OPERATIONS: OperationTable[FleetService] = OperationTable("sagemaker", TRACKING_SERVER_TYPE)
declare = OPERATIONS.declare


def _server(fleet: FleetService, call: Call[Any]) -> Target:
    name = call.params["TrackingServerName"]
    return Target(fleet.arn_for(name), fleet.tags_of(name))


def _new_server(fleet: FleetService, call: Call[Any]) -> Target:
    name = call.params["TrackingServerName"]
    return Target(fleet.arn_for(name), request_tags=call.params.get("Tags", []))


def _tagged(fleet: FleetService, call: Call[Any]) -> Target:
    arn = call.params["ResourceArn"]
    tags = fleet.tags_of_arn(arn)
    return Target(arn, tags, request_tags=call.params.get("Tags"), type=_type_of(arn))


def _untagged(fleet: FleetService, call: Call[Any]) -> Target:
    arn = call.params["ResourceArn"]
    removed = {"aws:TagKeys": list(call.params["TagKeys"])}
    return Target(arn, fleet.tags_of_arn(arn), keys=removed, type=_type_of(arn))


def _type_of(arn: str) -> str:
    """Tags are kept for tracking servers and MLflow Apps: the audit record says which."""
    return MLFLOW_APP_TYPE if ":mlflow-app/" in arn else TRACKING_SERVER_TYPE


# A create also passes its role to the server, as in AWS.
@declare(Access.WRITE, OPERATORS, resource=_new_server, passes_roles=lambda p: [p["RoleArn"]])
def create_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.CreateMlflowTrackingServerRequest]
) -> shapes.CreateMlflowTrackingServerResponse:
    return fleet.create(call.params, call.principal)


@declare(Access.READ, READERS, resource=_server)
def describe_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.DescribeMlflowTrackingServerRequest]
) -> shapes.DescribeMlflowTrackingServerResponse:
    return fleet.describe(call.params)


@declare(Access.WRITE, OPERATORS, resource=_server)
def update_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.UpdateMlflowTrackingServerRequest]
) -> shapes.UpdateMlflowTrackingServerResponse:
    return fleet.update(call.params, call.principal)


@declare(Access.WRITE, OPERATORS, resource=_server)
def delete_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.DeleteMlflowTrackingServerRequest]
) -> shapes.DeleteMlflowTrackingServerResponse:
    return fleet.delete(call.params, call.principal)


@declare(Access.LIST, READERS, resource=anywhere)
def list_mlflow_tracking_servers(
    fleet: FleetService, call: Call[shapes.ListMlflowTrackingServersRequest]
) -> shapes.ListMlflowTrackingServersResponse:
    return fleet.list(call.params)


@declare(Access.WRITE, OPERATORS, resource=_server)
def start_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.StartMlflowTrackingServerRequest]
) -> shapes.StartMlflowTrackingServerResponse:
    return fleet.start(call.params, call.principal)


@declare(Access.WRITE, OPERATORS, resource=_server)
def stop_mlflow_tracking_server(
    fleet: FleetService, call: Call[shapes.StopMlflowTrackingServerRequest]
) -> shapes.StopMlflowTrackingServerResponse:
    return fleet.stop(call.params, call.principal)


@declare(Access.WRITE, READERS, resource=_server)
def create_presigned_mlflow_tracking_server_url(
    fleet: FleetService, call: Call[shapes.CreatePresignedMlflowTrackingServerUrlRequest]
) -> shapes.CreatePresignedMlflowTrackingServerUrlResponse:
    token, token_hash = new_token()
    return fleet.create_presigned_url(call.params, call.principal, token, token_hash)


@declare(Access.TAGGING, OPERATORS, resource=_tagged)
def add_tags(fleet: FleetService, call: Call[shapes.AddTagsInput]) -> shapes.AddTagsOutput:
    return fleet.add_tags(call.params)


@declare(Access.TAGGING, OPERATORS, resource=_untagged)
def delete_tags(fleet: FleetService, call: Call[shapes.DeleteTagsInput]) -> shapes.DeleteTagsOutput:
    return fleet.delete_tags(call.params)


@declare(Access.READ, READERS, resource=_tagged)
def list_tags(fleet: FleetService, call: Call[shapes.ListTagsInput]) -> shapes.ListTagsOutput:
    return fleet.list_tags(call.params)


def sagemaker_endpoint(
    operations: Mapping[str, Bound],
    credentials: Credentials,
    pipeline: Pipeline,
    region: str,
) -> JsonEndpoint:
    """SageMaker's one endpoint, for the operations of every part that serves some of them."""
    return JsonEndpoint(
        JsonProtocol(
            load_service_model("sagemaker"),
            pattern_overrides={
                "S3Uri": lambda value: local_folder(value) is not None,
                # CreateModel's ModelDataUrl may name an MLflow model (mlfleet.deploy).
                "Url": lambda value: value.startswith("models:/"),
                # A major line alone ("3") names its newest release (versions.releases).
                "MlflowVersion": lambda value: value.isdigit(),
            },
        ),
        service_name="sagemaker",
        credentials=credentials,
        pipeline=pipeline,
        operations=operations,
        accepted_regions=(region,),
    )
