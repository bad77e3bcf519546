"""SageMaker's tracking-server operations at ``POST /`` (AWS JSON 1.1).

Parsing and shaping come from botocore's service model (``mlfleet.protocol``), the common steps
from :mod:`mlfleet.api.endpoint`; what each operation does lives in ``FleetService``. Each is
authorized as ``sagemaker:<Operation>`` on the tracking server's ARN, with its tags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlfleet.api.endpoint import Check, JsonEndpoint, Operation, Recorder
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.auth.ui_sessions import new_token
from mlfleet.fleet.service import FleetService
from mlfleet.fleet.stores import local_folder
from mlfleet.policy.authorizer import Authorizer
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model

Handler = Callable[[dict[str, Any], Principal], dict[str, Any]]


def fleet_operations(fleet: FleetService) -> dict[str, Operation]:
    """The tracking-server operations of SageMaker's API, and their tags."""

    def presigned_url(req: dict[str, Any], principal: Principal) -> dict[str, Any]:
        token, token_hash = new_token()
        return fleet.create_presigned_url(req, principal, token, token_hash)

    handlers: dict[str, Handler] = {
        "CreateMlflowTrackingServer": fleet.create,
        "DescribeMlflowTrackingServer": lambda req, _p: fleet.describe(req),
        "UpdateMlflowTrackingServer": fleet.update,
        "DeleteMlflowTrackingServer": fleet.delete,
        "ListMlflowTrackingServers": lambda req, _p: fleet.list(req),
        "StartMlflowTrackingServer": fleet.start,
        "StopMlflowTrackingServer": fleet.stop,
        "CreatePresignedMlflowTrackingServerUrl": presigned_url,
        "AddTags": lambda req, _p: fleet.add_tags(req),
        "DeleteTags": lambda req, _p: fleet.delete_tags(req),
        "ListTags": lambda req, _p: fleet.list_tags(req),
    }

    def checks_for(operation: str) -> Callable[[dict[str, Any], Principal], list[Check]]:
        action = f"sagemaker:{operation}"

        def checks(req: dict[str, Any], _principal: Principal) -> list[Check]:
            if "ResourceArn" in req:  # the tag operations
                arn = req["ResourceArn"]
                tags = fleet.tags_of(fleet.name_of(arn))
                if "TagKeys" in req:
                    removed = {"aws:TagKeys": list(req["TagKeys"])}
                    return [Check(action, arn, resource_tags=tags, extra=removed)]
                return [Check(action, arn, resource_tags=tags, request_tags=req.get("Tags"))]
            name = req.get("TrackingServerName")
            if name is None:
                return [Check(action, "*")]
            arn = fleet.arn_for(name)
            if operation == "CreateMlflowTrackingServer":
                # A create also passes its role to the server, as in AWS.
                return [
                    Check(action, arn, request_tags=req.get("Tags", [])),
                    Check("iam:PassRole", req["RoleArn"]),
                ]
            return [Check(action, arn, resource_tags=fleet.tags_of(name))]

        return checks

    return {
        name: Operation(
            run=lambda req, principal, _facts, handler=handler: handler(req, principal),
            checks=checks_for(name),
        )
        for name, handler in handlers.items()
    }


def sagemaker_endpoint(
    operations: Mapping[str, Operation],
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
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
            },
        ),
        service_name="sagemaker",
        credentials=credentials,
        authorizer=authorizer,
        operations=operations,
        recorder=recorder,
        accepted_regions=(region,),
    )
