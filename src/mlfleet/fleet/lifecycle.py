"""A tracking server's record as others see it: its description (DescribeMlflowTrackingServer's
answer, also the detail of its lifecycle events), the event each status change publishes, and
the removal of a deleted server. Shared by the API (``FleetService``) and the reconciler, which
both change statuses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlfleet.events.bus import Publish
from mlfleet.events.sources import app_event, lifecycle_event
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.settings import Settings
from mlfleet.state.models import PresignedToken, TrackingServer, UiSession

# TrackingServer.kind of a tracking server and of an MLflow App (apps), which share the table,
# the reconciler and the gateway.
SERVER, APP = "server", "app"


class Description(shapes.DescribeMlflowTrackingServerResponse, total=False):
    """DescribeMlflowTrackingServer's answer, which is also the lifecycle event's detail."""

    # mlfleet extensions (ignored by boto3, shown by `mlfleet describe`): why the last
    # operation failed; what is being done now (installing its MLflow release); for a server
    # restored from a backup, what the restore found.
    FailureReason: str | None
    StatusMessage: str
    RestoreReport: dict[str, object]


class AppDescription(shapes.DescribeMlflowAppResponse, total=False):
    """DescribeMlflowApp's answer, also the App's lifecycle event's detail; mlfleet extensions
    (ignored by boto3): whether it runs now, the URL the MLflow client takes, why the last
    operation failed, and what is being done now."""

    IsActive: str
    AppUrl: str
    FailureReason: str
    StatusMessage: str


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        is_serving: Callable[[str], bool],
        publish: Publish,
        progress: Callable[[str], str | None],
    ) -> None:
        self._settings = settings
        self._is_serving = is_serving
        # What is being done for an MLflow release (versions.environments), said while the
        # server waits for it.
        self._progress = progress
        # Status changes are events, stored in the transaction that makes the change.
        self._publish = publish

    def url_for(self, name: str) -> str:
        return f"{self._settings.endpoint_url}/mlflow/{name}"

    def is_active(self, server_id: str) -> str:
        """SageMaker's IsActive: whether the server's processes serve now."""
        return "Active" if self._is_serving(server_id) else "Inactive"

    def describe_any(self, row: TrackingServer) -> Mapping[str, Any]:
        """A server's description, or an App's (apps.service): its lifecycle event's detail."""
        return self._describe_app(row) if row.kind == APP else self.describe(row)

    def describe(self, row: TrackingServer) -> Description:
        # A member the server lacks is None: the answer leaves it out, its audit record and the
        # lifecycle event show it as null (hence the ignores: the shape has no None).
        return {
            "TrackingServerArn": row.arn,
            "TrackingServerName": row.name,
            "ArtifactStoreUri": row.artifact_store_uri,
            "TrackingServerSize": row.size,
            "MlflowVersion": row.mlflow_version,
            "RoleArn": row.role_arn,
            "TrackingServerStatus": row.status,
            "IsActive": self.is_active(row.id),
            "TrackingServerUrl": self.url_for(row.name),
            "WeeklyMaintenanceWindowStart": row.weekly_maintenance_window_start,  # type: ignore[typeddict-item]
            "AutomaticModelRegistration": row.automatic_model_registration,
            "TrackingServerMaintenanceStatus": row.maintenance_status,  # type: ignore[typeddict-item]
            "CreationTime": datetime.fromtimestamp(row.created_at).astimezone(),
            "CreatedBy": cast(shapes.UserContext, row.created_by),
            "LastModifiedTime": datetime.fromtimestamp(row.last_modified_at).astimezone(),
            "LastModifiedBy": cast(shapes.UserContext, row.last_modified_by),
            "S3BucketOwnerAccountId": row.s3_bucket_owner_account_id,  # type: ignore[typeddict-item]
            "S3BucketOwnerVerification": row.s3_bucket_owner_verification,
            "FailureReason": row.failure_reason,
            **({"StatusMessage": message} if (message := self._status_message(row)) else {}),
            **({"RestoreReport": row.restore_report} if row.restore_report else {}),
        }

    def _status_message(self, row: TrackingServer) -> str | None:
        """What is being done for the server's MLflow release while it waits (installing)."""
        if row.status not in ("Creating", "Starting", "Updating"):
            return None
        return self._progress(row.mlflow_version)

    def announce(self, session: Session, row: TrackingServer, status: str | None = None) -> None:
        """Publish the server's status (or `status`) as its lifecycle event, in `session`."""
        if row.kind == APP:
            detail = dict(self._describe_app(row))
            if status is not None:
                detail.update({"Status": status, "IsActive": "Inactive"})
            self._publish([app_event(detail, status or row.status)], session)
            return
        description = self.describe(row)
        if status is not None:
            description.update({"TrackingServerStatus": status, "IsActive": "Inactive"})
        self._publish([lifecycle_event(description, status or row.status)], session)

    def announce_sleep(self, session: Session, row: TrackingServer, awake: bool) -> None:
        """Publish a server's (or an App's) falling asleep or waking (fleet.idle), its status
        unchanged: detail-types "SageMaker Tracking Server Asleep" and "... Awake"."""
        detail = dict(self.describe_any(row))
        detail["IsActive"] = "Active" if awake else "Inactive"
        state = "Awake" if awake else "Asleep"
        event = app_event(detail, state) if row.kind == APP else lifecycle_event(detail, state)
        self._publish([event], session)

    def _describe_app(self, row: TrackingServer) -> AppDescription:
        registration = "Enabled" if row.automatic_model_registration else "Disabled"
        return {
            "Arn": row.arn,
            "Name": row.display_name or row.name,
            "ArtifactStoreUri": row.declared_store_uri or row.artifact_store_uri,
            "MlflowVersion": row.mlflow_version,
            "RoleArn": row.role_arn,
            **({"KmsKeyId": row.kms_key_id} if row.kms_key_id else {}),
            "Status": row.status,
            "ModelRegistrationMode": f"AutoModelRegistration{registration}",
            "AccountDefaultStatus": "ENABLED" if row.account_default else "DISABLED",
            "DefaultDomainIdList": list(row.default_domain_ids or []),
            "CreationTime": datetime.fromtimestamp(row.created_at).astimezone(),
            "CreatedBy": cast(shapes.UserContext, row.created_by),
            "LastModifiedTime": datetime.fromtimestamp(row.last_modified_at).astimezone(),
            "LastModifiedBy": cast(shapes.UserContext, row.last_modified_by),
            **(
                {"WeeklyMaintenanceWindowStart": row.weekly_maintenance_window_start}
                if row.weekly_maintenance_window_start
                else {}
            ),
            **({"MaintenanceStatus": row.maintenance_status} if row.maintenance_status else {}),
            "IsActive": self.is_active(row.id),
            "AppUrl": self.url_for(row.name),
            **({"FailureReason": row.failure_reason} if row.failure_reason else {}),
            **({"StatusMessage": message} if (message := self._status_message(row)) else {}),
        }

    def forget(self, session: Session, server_id: str) -> None:
        """Remove a deleted server's record and every UI link and session that pointed at it."""
        for model in (PresignedToken, UiSession):
            for stale in session.scalars(select(model).where(model.server_id == server_id)):
                session.delete(stale)
        row = session.get(TrackingServer, server_id)
        if row is not None:
            self.announce(session, row, "Deleted")
            session.delete(row)
