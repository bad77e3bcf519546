"""MLflow Apps (SageMaker's serverless tracking servers) as records: their six operations.

An App is a tracking server of another kind (``TrackingServer.kind == "app"``): the reconciler,
the runtime, the gateway and scale to zero (fleet.idle) treat both alike. What differs:

- Its ARN ends in a generated id (``app-`` and 16 hex digits), not its name; the id is its
  name in the gateway, so ``<endpoint>/mlflow/<id>`` is its URL for the plain MLflow client
  (``AppUrl``, an mlfleet extension of DescribeMlflowApp), and the sagemaker-mlflow plugin
  reaches it with its ARN in the ``x-sm-mlflow-app-arn`` header.
- It has no size (one worker) and sleeps when idle by default: after ``APP_IDLE_SECONDS``
  unless its tag ``mlfleet:idle-timeout`` or the daemon's ``idle_timeout`` says otherwise. It is
  created asleep: no process runs until its first request.
- Its store is ``s3://`` (or a local folder, as mlfleet allows servers). With no S3 endpoint
  configured, an ``s3://`` store is kept under the first artifact root
  (``mlflow-apps/<id>``); callers through the ARN see its artifacts as S3 objects of mlfleet's
  own S3 endpoint (mlflow_api.s3_view), so ``s3://any-bucket/prefix`` works out of the box.
  DescribeMlflowApp shows the URI as given.
- ``AccountDefaultStatus=ENABLED`` makes it the account's default App: one at a time, so
  enabling one disables the one before.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, select, update
from sqlalchemy import cast as cast_to
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.common.paging import SAGEMAKER, page_of_query
from mlfleet.fleet.lifecycle import APP, Lifecycle
from mlfleet.fleet.service import UPDATABLE, FleetService, listed
from mlfleet.protocol.errors import ConflictException, ResourceNotFound, ValidationException
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.settings import Settings
from mlfleet.state.models import TrackingServer

APP_IDLE_SECONDS = 900.0
# What a DefaultDomainIdList entry may be (botocore's DomainId shape).
DOMAIN_ID = re.compile(r"d-(-*[a-z0-9]){1,61}")
ENABLED = "AutoModelRegistrationEnabled"
SORT_COLUMNS = {
    "Name": TrackingServer.display_name,
    "CreationTime": TrackingServer.created_at,
    "Status": TrackingServer.status,
}


class Apps:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        fleet: FleetService,
        lifecycle: Lifecycle,
        kick: Callable[[str], None],
        server_changed: Callable[[str], None],
        idle_timeout: float | None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._fleet = fleet
        self._lifecycle = lifecycle
        self._kick = kick
        self._server_changed = server_changed
        # An App sleeps when idle unless told otherwise (the daemon's default applies to both).
        self.idle_timeout = APP_IDLE_SECONDS if idle_timeout is None else idle_timeout

    def arn_for(self, app_id: str) -> str:
        s = self._settings
        return f"arn:aws:sagemaker:{s.region}:{s.account_id}:mlflow-app/{app_id}"

    def tags_of(self, arn: str) -> list[dict[str, Any]]:
        return self._fleet.tags_of_arn(arn)

    def _app(self, session: Session, arn: str) -> TrackingServer:
        row = session.scalars(
            select(TrackingServer).where(TrackingServer.arn == arn, TrackingServer.kind == APP)
        ).first()
        if row is None:
            raise ResourceNotFound(f"MLflow App with ARN {arn} does not exist.")
        return row

    def _store(self, uri: str, app_id: str) -> str:
        """Where an App's artifacts go: an s3:// store with no S3 endpoint configured stays on
        this machine, under the first artifact root."""
        if uri.startswith("https://"):
            raise ValidationException(
                f"ArtifactStoreUri '{uri}': mlfleet keeps App artifacts in s3:// stores (or a "
                "local folder); give the bucket as s3://bucket/prefix."
            )
        if uri.startswith("s3://") and not self._settings.s3_endpoint_url:
            folder = self._settings.allowed_artifact_roots[0] / "mlflow-apps" / app_id
            return f"file://{folder}"
        self._fleet.stores.check(uri)
        return uri

    def _account_default(self, session: Session, status: str | None, app_id: str) -> bool | None:
        """The App's AccountDefaultStatus as a column (None: unchanged); enabling it disables
        the account's default App before it."""
        if status is None:
            return None
        if status == "ENABLED":
            session.execute(
                update(TrackingServer)
                .where(TrackingServer.kind == APP, TrackingServer.id != app_id)
                .values(account_default=False)
            )
        return status == "ENABLED"

    # operations ----------------------------------------------------------------------------

    def create(
        self, req: shapes.CreateMlflowAppRequest, principal: Principal
    ) -> shapes.CreateMlflowAppResponse:
        server_id = uuid.uuid4().hex[:16]
        app_id = f"app-{server_id}"
        store = self._store(req["ArtifactStoreUri"], app_id)
        version = self._fleet.check_version(None)
        with self._sessions.begin() as session:
            row = self._fleet.add(
                session,
                principal,
                idle_default=self.idle_timeout,
                id=server_id,
                name=app_id,
                arn=self.arn_for(app_id),
                kind=APP,
                display_name=req["Name"],
                artifact_store_uri=store,
                declared_store_uri=req["ArtifactStoreUri"],
                size="Small",
                mlflow_version=version,
                role_arn=req["RoleArn"],
                kms_key_id=req.get("KmsKeyId"),
                automatic_model_registration=req.get("ModelRegistrationMode") == ENABLED,
                weekly_maintenance_window_start=req.get("WeeklyMaintenanceWindowStart"),
                account_default=bool(
                    self._account_default(session, req.get("AccountDefaultStatus"), server_id)
                ),
                default_domain_ids=list(req.get("DefaultDomainIdList", [])),
                tags=req.get("Tags", []),
            )
            arn = row.arn
        self._kick(server_id)
        return {"Arn": arn}

    def describe(self, req: shapes.DescribeMlflowAppRequest) -> shapes.DescribeMlflowAppResponse:
        with self._sessions() as session:
            row = self._app(session, req["Arn"])
            return cast(shapes.DescribeMlflowAppResponse, self._lifecycle.describe_any(row))

    def update(
        self, req: shapes.UpdateMlflowAppRequest, principal: Principal
    ) -> shapes.UpdateMlflowAppResponse:
        with self._sessions.begin() as session:
            row = self._app(session, req["Arn"])
            if row.status not in UPDATABLE:
                raise ConflictException(
                    f"MLflow App {row.arn} is {row.status}: it can be updated once it is "
                    "Created or Updated."
                )
            if "ArtifactStoreUri" in req:
                row.artifact_store_uri = self._store(req["ArtifactStoreUri"], row.name)
                row.declared_store_uri = req["ArtifactStoreUri"]
                self._fleet.check_own_folder(session, row.artifact_store_uri, row.id)
            members: Mapping[str, Any] = req
            if "Name" in members:
                row.display_name = members["Name"]
            if "ModelRegistrationMode" in members:
                row.automatic_model_registration = members["ModelRegistrationMode"] == ENABLED
            if "WeeklyMaintenanceWindowStart" in members:
                row.weekly_maintenance_window_start = members["WeeklyMaintenanceWindowStart"]
            if "DefaultDomainIdList" in members:
                row.default_domain_ids = list(members["DefaultDomainIdList"])
            default = self._account_default(session, req.get("AccountDefaultStatus"), row.id)
            if default is not None:
                row.account_default = default
            self._fleet.touch(row, principal, "Updating")
            server_id, name, arn = row.id, row.name, row.arn
        self._server_changed(name)
        self._kick(server_id)
        return {"Arn": arn}

    def delete(
        self, req: shapes.DeleteMlflowAppRequest, principal: Principal
    ) -> shapes.DeleteMlflowAppResponse:
        with self._sessions.begin() as session:
            row = self._app(session, req["Arn"])
            if row.status == "Deleting":
                raise ConflictException(f"MLflow App {row.arn} is being deleted.")
            self._fleet.touch(row, principal, "Deleting")
            row.desired_state = "Deleted"
            server_id, arn = row.id, row.arn
        self._kick(server_id)
        return {"Arn": arn}

    def list(self, req: shapes.ListMlflowAppsRequest) -> shapes.ListMlflowAppsResponse:
        query = listed(APP, req, "Status", SORT_COLUMNS)
        if "AccountDefaultStatus" in req:
            query = query.where(
                TrackingServer.account_default.is_(req["AccountDefaultStatus"] == "ENABLED")
            )
        domain = req.get("DefaultForDomainId")
        if domain is not None:
            if not DOMAIN_ID.fullmatch(domain):  # no App can have it (the model leaves it free)
                return {"Summaries": []}
            # The ids are a JSON list; as text, alike in SQLite and PostgreSQL, each is quoted.
            as_text = cast_to(TrackingServer.default_domain_ids, String)
            query = query.where(as_text.contains(f'"{domain}"'))

        def summary(row: TrackingServer) -> shapes.MlflowAppSummary:
            return {
                "Arn": row.arn,
                "Name": row.display_name or row.name,
                "Status": row.status,
                "CreationTime": datetime.fromtimestamp(row.created_at).astimezone(),
                "LastModifiedTime": datetime.fromtimestamp(row.last_modified_at).astimezone(),
                "MlflowVersion": row.mlflow_version,
            }

        page, token = page_of_query(self._sessions, query, req, SAGEMAKER, summary)
        return {"Summaries": page, **({"NextToken": token} if token else {})}

    def create_presigned_url(
        self,
        req: shapes.CreatePresignedMlflowAppUrlRequest,
        principal: Principal,
        token: str,
        token_hash: str,
    ) -> shapes.CreatePresignedMlflowAppUrlResponse:
        with self._sessions.begin() as session:
            row = self._app(session, req["Arn"])
            url = self._fleet.presign(session, row, principal, token, token_hash, req)
        return {"AuthorizedUrl": url}
