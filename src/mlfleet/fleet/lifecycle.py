"""A tracking server's record as others see it: its description (DescribeMlflowTrackingServer's
answer, also the detail of its lifecycle events), the event each status change publishes, and
the removal of a deleted server. Shared by the API (``FleetService``) and the reconciler, which
both change statuses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlfleet.events.bus import Publish
from mlfleet.events.sources import lifecycle_event
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.settings import Settings
from mlfleet.state.models import PresignedToken, TrackingServer, UiSession


class Description(shapes.DescribeMlflowTrackingServerResponse, total=False):
    """DescribeMlflowTrackingServer's answer, which is also the lifecycle event's detail."""

    # mlfleet extensions (ignored by boto3, shown by `mlfleet describe`): why the last
    # operation failed; what is being done now (installing its MLflow release); for a server
    # restored from a backup, what the restore found.
    FailureReason: str | None
    StatusMessage: str
    RestoreReport: dict[str, object]


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
        if row.status not in ("Creating", "Starting", "Updating"):
            return None
        return self._progress(row.mlflow_version)

    def announce(self, session: Session, row: TrackingServer, status: str | None = None) -> None:
        """Publish the server's status (or `status`) as its lifecycle event, in `session`."""
        description = self.describe(row)
        if status is not None:
            description.update({"TrackingServerStatus": status, "IsActive": "Inactive"})
        self._publish([lifecycle_event(description, status or row.status)], session)

    def announce_sleep(self, session: Session, row: TrackingServer, awake: bool) -> None:
        """Publish a server's falling asleep or waking (fleet.idle), its status unchanged:
        detail-types "SageMaker Tracking Server Asleep" and "... Awake"."""
        description = self.describe(row)
        description["IsActive"] = "Active" if awake else "Inactive"
        self._publish([lifecycle_event(description, "Awake" if awake else "Asleep")], session)

    def forget(self, session: Session, server_id: str) -> None:
        """Remove a deleted server's record and every UI link and session that pointed at it."""
        for model in (PresignedToken, UiSession):
            for stale in session.scalars(select(model).where(model.server_id == server_id)):
                session.delete(stale)
        row = session.get(TrackingServer, server_id)
        if row is not None:
            self.announce(session, row, "Deleted")
            session.delete(row)
