"""mlfleet's own operations (backups, restores, maintenance, MLflow upgrades) at ``POST /``
(AWS JSON 1.1, service ``mlfleet``).

The service model is mlfleet's (``protocol/models/mlfleet``), in botocore's format, so boto3 and
the AWS CLI call it as any AWS service once ``AWS_DATA_PATH`` names that folder. Each operation
is authorized as ``mlfleet:<Operation>``: a backup is taken, a maintenance started and an
upgrade begun on a tracking server's ARN; a backup is described, restored and deleted by its own
ARN,
and a restore hands the new server its role.
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
from mlfleet.audit.trail import TRACKING_SERVER_TYPE
from mlfleet.auth.credentials import Credentials
from mlfleet.backups.service import Backups
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.shapes import mlfleet as shapes

BACKUP_TYPE = "mlfleet::TrackingServerBackup"
OPERATIONS: OperationTable[Backups] = OperationTable("mlfleet", BACKUP_TYPE)
declare = OPERATIONS.declare


def _server(backups: Backups, call: Call[Any]) -> Target:
    name = call.params["TrackingServerName"]
    return Target(backups.server_arn(name), backups.server_tags(name), type=TRACKING_SERVER_TYPE)


def _backup(backups: Backups, call: Call[Any]) -> Target:
    return Target(backups.arn_for(call.params["BackupId"]))


@declare(Access.WRITE, OPERATORS, resource=_server)
def create_tracking_server_backup(
    backups: Backups, call: Call[shapes.CreateTrackingServerBackupRequest]
) -> shapes.CreateTrackingServerBackupResponse:
    return backups.create(call.params["TrackingServerName"])  # type: ignore[return-value]


@declare(Access.READ, READERS, resource=_backup)
def describe_tracking_server_backup(
    backups: Backups, call: Call[shapes.DescribeTrackingServerBackupRequest]
) -> shapes.TrackingServerBackup:
    return backups.describe(call.params["BackupId"])  # type: ignore[return-value]


@declare(Access.LIST, READERS, resource=anywhere)
def list_tracking_server_backups(
    backups: Backups, call: Call[shapes.ListTrackingServerBackupsRequest]
) -> shapes.ListTrackingServerBackupsResponse:
    return backups.list(dict(call.params))  # type: ignore[return-value]


@declare(Access.WRITE, OPERATORS, resource=_backup, passes_roles=lambda p: [p.get("RoleArn")])
def restore_tracking_server_backup(
    backups: Backups, call: Call[shapes.RestoreTrackingServerBackupRequest]
) -> shapes.RestoreTrackingServerBackupResponse:
    return backups.restore(dict(call.params), call.principal)  # type: ignore[return-value]


@declare(Access.WRITE, OPERATORS, resource=_backup)
def delete_tracking_server_backup(
    backups: Backups, call: Call[shapes.DeleteTrackingServerBackupRequest]
) -> shapes.DeleteTrackingServerBackupResponse:
    return backups.delete(call.params["BackupId"])  # type: ignore[return-value]


@declare(Access.WRITE, OPERATORS, resource=_server)
def start_tracking_server_maintenance(
    backups: Backups, call: Call[shapes.StartTrackingServerMaintenanceRequest]
) -> shapes.StartTrackingServerMaintenanceResponse:
    return backups.start_maintenance(  # type: ignore[return-value]
        call.params["TrackingServerName"], call.principal
    )


@declare(Access.WRITE, OPERATORS, resource=_server)
def update_tracking_server_mlflow_version(
    backups: Backups, call: Call[shapes.UpdateTrackingServerMlflowVersionRequest]
) -> shapes.UpdateTrackingServerMlflowVersionResponse:
    return backups.update_mlflow_version(  # type: ignore[return-value]
        call.params["TrackingServerName"], call.params["MlflowVersion"], call.principal
    )


def mlfleet_endpoint(
    operations: Mapping[str, Bound], credentials: Credentials, pipeline: Pipeline, region: str
) -> JsonEndpoint:
    return JsonEndpoint(
        JsonProtocol(
            load_service_model("mlfleet"),
            pattern_overrides={"S3Uri": lambda value: value.startswith(("file://", "s3://"))},
        ),
        service_name="mlfleet",
        credentials=credentials,
        pipeline=pipeline,
        operations=operations,
        accepted_regions=(region,),
    )
