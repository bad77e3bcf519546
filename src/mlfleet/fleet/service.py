"""Tracking servers as records: the SageMaker operations, their status rules and their answers.

An accepted call records what should be (``desired_state`` and a transitional status) and hands
the work to the reconciler; nothing here starts or stops a process.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.common.paging import SAGEMAKER, page_by_offset, page_of_query
from mlfleet.common.tags import idle_timeout
from mlfleet.fleet.lifecycle import APP, SERVER, Lifecycle
from mlfleet.fleet.stores import ArtifactRoots, local_folder, resolve
from mlfleet.protocol.errors import ResourceNotFound, ValidationException
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.settings import Settings
from mlfleet.state.models import PresignedToken, TrackingServer
from mlfleet.versions.releases import Releases, VersionError, check_move

# Statuses from which each operation may start (the API model names the statuses, SageMaker's
# error messages show which ones refuse; the rest is mlfleet's choice, documented in README).
SERVING = {"Created", "Updated", "Started", "MaintenanceComplete", "MaintenanceFailed"}
TRANSITIONAL = {"Creating", "Updating", "Deleting", "Stopping", "Starting", "MaintenanceInProgress"}
STOPPABLE = SERVING | {"StopFailed", "UpdateFailed", "StartFailed"}
STARTABLE = {"Stopped", "StartFailed", "StopFailed"}
UPDATABLE = SERVING | {"UpdateFailed"}

# Members of UpdateMlflowTrackingServer and the columns they set.
UPDATABLE_MEMBERS = {
    "ArtifactStoreUri": "artifact_store_uri",
    "TrackingServerSize": "size",
    "AutomaticModelRegistration": "automatic_model_registration",
    "WeeklyMaintenanceWindowStart": "weekly_maintenance_window_start",
    "S3BucketOwnerAccountId": "s3_bucket_owner_account_id",
    "S3BucketOwnerVerification": "s3_bucket_owner_verification",
}
SORT_COLUMNS = {
    "Name": TrackingServer.name,
    "CreationTime": TrackingServer.created_at,
    "Status": TrackingServer.status,
}


def status_word(status: str) -> str:
    """SageMaker's messages spell statuses UPPER_SNAKE (``UpdateFailed`` -> ``UPDATE_FAILED``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()


def listed(
    kind: str, req: Mapping[str, Any], status_member: str, sort_columns: Mapping[str, Any]
) -> Select[TrackingServer]:
    """The servers (or Apps) of ``kind`` a List call asks for: its CreatedAfter, CreatedBefore,
    status (``status_member``) and MlflowVersion filters, in its SortBy and SortOrder."""
    query = select(TrackingServer).where(TrackingServer.kind == kind)
    if "CreatedAfter" in req:
        query = query.where(TrackingServer.created_at > req["CreatedAfter"].timestamp())
    if "CreatedBefore" in req:
        query = query.where(TrackingServer.created_at < req["CreatedBefore"].timestamp())
    if status_member in req:
        query = query.where(TrackingServer.status == req[status_member])
    if "MlflowVersion" in req:
        query = query.where(TrackingServer.mlflow_version == req["MlflowVersion"])
    column = sort_columns[req.get("SortBy", "CreationTime")]
    descending = req.get("SortOrder", "Descending") == "Descending"
    return query.order_by(column.desc() if descending else column.asc(), TrackingServer.id)


# SageMaker's limit on tags per resource; ListTags pages hold all of them by default.
MAX_TAGS = 50
TAG_PAGING = replace(SAGEMAKER, default_size=MAX_TAGS)


class FleetService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        releases: Releases,
        stores: ArtifactRoots,
        lifecycle: Lifecycle,
        kick: Callable[[str], None],
        server_changed: Callable[[str], None],
        idle_timeout: float | None = None,
    ) -> None:
        self._settings = settings
        # The idle timeout of a server not tagged with its own (fleet.idle).
        self._idle_timeout = idle_timeout
        self._sessions = sessions
        self.stores = stores
        self._lifecycle = lifecycle
        self._releases = releases
        self._kick = kick
        # Whoever caches a server's record (the gateway authorizes on its tags and registers
        # models by its settings) must hear of changes.
        self._server_changed = server_changed

    # helpers -----------------------------------------------------------------------------

    def arn_for(self, name: str) -> str:
        s = self._settings
        return f"arn:aws:sagemaker:{s.region}:{s.account_id}:mlflow-tracking-server/{name}"

    def tags_of(self, name: str) -> list[dict[str, Any]]:
        """A server's tags (aws:ResourceTag/...), or none for a server that does not exist."""
        with self._sessions() as session:
            tags = session.scalar(
                select(TrackingServer.tags).where(
                    TrackingServer.name == name, TrackingServer.kind == SERVER
                )
            )
        return list(tags or [])

    def _kind_and_name(self, arn: str) -> tuple[str, str]:
        for kind, resource in ((SERVER, "mlflow-tracking-server/"), (APP, "mlflow-app/")):
            prefix = f"arn:aws:sagemaker:{self._settings.region}:{self._settings.account_id}:"
            prefix += resource
            if arn.startswith(prefix) and len(arn) > len(prefix):
                return kind, arn[len(prefix) :]
        raise ResourceNotFound(
            f"Resource {arn} not found: tags are kept for tracking servers and MLflow Apps."
        )

    def tags_of_arn(self, arn: str) -> list[dict[str, Any]]:
        """The tags of the server or App an ARN names, none if there is none."""
        try:
            kind, name = self._kind_and_name(arn)
        except ResourceNotFound:
            return []
        with self._sessions() as session:
            tags = session.scalar(
                select(TrackingServer.tags).where(
                    TrackingServer.name == name, TrackingServer.kind == kind
                )
            )
        return list(tags or [])

    @staticmethod
    def server_named(
        session: Session, name: str, kinds: tuple[str, ...] = (SERVER,)
    ) -> TrackingServer:
        """The tracking server called ``name`` (or, with ``kinds``, the App of that id)."""
        row = session.scalars(
            select(TrackingServer).where(
                TrackingServer.name == name, TrackingServer.kind.in_(kinds)
            )
        ).first()
        if row is None:
            raise ResourceNotFound(f"Tracking Server with name {name} does not exist.")
        return row

    @staticmethod
    def status_forbids(row: TrackingServer, verb: str) -> str:
        return (
            f"Tracking Server with ARN {row.arn} is currently in status "
            f"{status_word(row.status)}, can't be {verb}."
        )

    def touch(self, row: TrackingServer, principal: Principal, status: str) -> None:
        row.status = status
        row.failure_reason = None
        row.rolled_back_from = None
        row.generation += 1
        row.last_modified_at = time.time()
        row.last_modified_by = principal.user_context()
        session = Session.object_session(row)
        assert session is not None, "a status changes inside the transaction that loaded it"
        self._lifecycle.announce(session, row)

    def checked_idle_timeout(
        self, tags: Sequence[Mapping[str, object]], default: float | None
    ) -> float | None:
        """A server's idle timeout (its tag, else ``default``); ValidationException for a tag
        that is no duration."""
        try:
            return idle_timeout(tags, default)
        except ValueError as exc:
            raise ValidationException(str(exc)) from None

    def check_version(self, requested: str | None) -> str:
        try:
            return self._releases.resolve(requested)
        except VersionError as exc:
            raise ValidationException(str(exc)) from None

    # operations ----------------------------------------------------------------------------

    def create(
        self,
        req: shapes.CreateMlflowTrackingServerRequest,
        principal: Principal,
        restored_from: str | None = None,
    ) -> shapes.CreateMlflowTrackingServerResponse:
        """Record a new server; ``restored_from``, a backup its data comes from (backups)."""
        name = req["TrackingServerName"]
        self.stores.check(req["ArtifactStoreUri"])
        version = self.check_version(req.get("MlflowVersion"))
        server_id = uuid.uuid4().hex[:16]
        with self._sessions.begin() as session:
            taken = session.scalars(select(TrackingServer.id).where(TrackingServer.name == name))
            if taken.first() is not None:
                raise ValidationException(
                    f"Cannot create tracking server {name}: a tracking server with this name "
                    "already exists."
                )
            row = self.add(
                session,
                principal,
                id=server_id,
                name=name,
                arn=self.arn_for(name),
                artifact_store_uri=req["ArtifactStoreUri"],
                size=req.get("TrackingServerSize", "Small"),
                mlflow_version=version,
                role_arn=req["RoleArn"],
                automatic_model_registration=req.get("AutomaticModelRegistration", False),
                weekly_maintenance_window_start=req.get("WeeklyMaintenanceWindowStart"),
                s3_bucket_owner_account_id=req.get(
                    "S3BucketOwnerAccountId", self._settings.account_id
                ),
                s3_bucket_owner_verification=req.get("S3BucketOwnerVerification", True),
                tags=req.get("Tags", []),
                restored_from=restored_from,
            )
            arn = row.arn
        self._kick(server_id)
        return {"TrackingServerArn": arn}

    def add(
        self,
        session: Session,
        principal: Principal,
        idle_default: float | None = None,
        **columns: Any,
    ) -> TrackingServer:
        """Record a new server (or App) made of ``columns`` in ``session``: Creating, towards
        Running, asleep if it would sleep when idle (its tags, else ``idle_default``, else the
        daemon's default): nothing runs until it is used. The caller kicks the reconciler once
        the transaction is committed."""
        self.check_own_folder(session, columns["artifact_store_uri"], columns["id"])
        default = self._idle_timeout if idle_default is None else idle_default
        asleep = self.checked_idle_timeout(columns.get("tags", []), default) is not None
        now = time.time()
        row = TrackingServer(
            status="Creating",
            desired_state="Running",
            generation=1,
            metadata_db_uri="",
            created_at=now,
            created_by=principal.user_context(),
            last_modified_at=now,
            last_modified_by=principal.user_context(),
            asleep=asleep,
            **columns,
        )
        session.add(row)
        self._lifecycle.announce(session, row)
        return row

    def describe(
        self, req: shapes.DescribeMlflowTrackingServerRequest
    ) -> shapes.DescribeMlflowTrackingServerResponse:
        with self._sessions() as session:
            row = self.server_named(session, req["TrackingServerName"])
            return self._lifecycle.describe(row)

    @staticmethod
    def check_own_folder(session: Session, uri: str, server_id: str) -> None:
        """A local folder store is its server's own: MLflow serves all of it to that server's
        users, so a folder that holds, or lies in, another server's store would hand them the
        other server's artifacts. (The other server is not named: it may be none of the
        caller's business.)"""
        folder = local_folder(uri)
        if folder is None:
            return
        mine = resolve(folder)
        others = session.scalars(
            select(TrackingServer.artifact_store_uri).where(TrackingServer.id != server_id)
        )
        for other in filter(None, map(local_folder, others)):
            theirs = resolve(other)
            if mine == theirs or mine in theirs.parents or theirs in mine.parents:
                raise ValidationException(
                    f"ArtifactStoreUri '{uri}' overlaps the artifact store of another tracking "
                    "server: a local folder store must not hold, or lie in, another server's."
                )

    def update(
        self, req: shapes.UpdateMlflowTrackingServerRequest, principal: Principal
    ) -> shapes.UpdateMlflowTrackingServerResponse:
        if "ArtifactStoreUri" in req:
            self.stores.check(req["ArtifactStoreUri"])
        with self._sessions.begin() as session:
            row = self.server_named(session, req["TrackingServerName"])
            if row.status not in UPDATABLE:
                raise ValidationException(self.status_forbids(row, "updated"))
            if "ArtifactStoreUri" in req:
                self.check_own_folder(session, req["ArtifactStoreUri"], row.id)
            members: Mapping[str, object] = req
            for member, column in UPDATABLE_MEMBERS.items():
                if member in members:
                    setattr(row, column, members[member])
            self.touch(row, principal, "Updating")
            server_id, arn = row.id, row.arn
        self._server_changed(req["TrackingServerName"])
        self._kick(server_id)
        return {"TrackingServerArn": arn}

    def _transition(
        self,
        name: str,
        principal: Principal,
        allowed: set[str],
        verb: str,
        status: str,
        desired: str,
    ) -> str:
        """Move the server to `status`, towards `desired`; its ARN."""
        with self._sessions.begin() as session:
            row = self.server_named(session, name)
            if row.status not in allowed:
                raise ValidationException(self.status_forbids(row, verb))
            self.touch(row, principal, status)
            row.desired_state = desired
            server_id, arn = row.id, row.arn
        self._kick(server_id)
        return arn

    def stop(
        self, req: shapes.StopMlflowTrackingServerRequest, principal: Principal
    ) -> shapes.StopMlflowTrackingServerResponse:
        arn = self._transition(
            req["TrackingServerName"], principal, STOPPABLE, "stopped", "Stopping", "Stopped"
        )
        return {"TrackingServerArn": arn}

    def start(
        self, req: shapes.StartMlflowTrackingServerRequest, principal: Principal
    ) -> shapes.StartMlflowTrackingServerResponse:
        arn = self._transition(
            req["TrackingServerName"], principal, STARTABLE, "started", "Starting", "Running"
        )
        return {"TrackingServerArn": arn}

    def start_maintenance(self, name: str, principal: Principal) -> str:
        """Begin the maintenance window's work now (fleet.maintenance); the server's ARN."""
        with self._sessions.begin() as session:
            row = self.server_named(session, name, (SERVER, APP))
            if row.status not in SERVING:
                raise ValidationException(self.status_forbids(row, "maintained"))
            row.maintenance_status = "MaintenanceInProgress"
            row.last_maintenance_at = time.time()
            self.touch(row, principal, "MaintenanceInProgress")
            server_id, arn = row.id, row.arn
        self._kick(server_id)
        return arn

    def update_mlflow_version(self, name: str, requested: str, principal: Principal) -> str:
        """Begin moving a serving server to another MLflow release (the reconciler's upgrade);
        its ARN."""
        version = self.check_version(requested)
        with self._sessions.begin() as session:
            row = self.server_named(session, name)
            if row.status not in UPDATABLE:
                raise ValidationException(self.status_forbids(row, "updated"))
            try:
                check_move(row.mlflow_version, version)
            except VersionError as exc:
                raise ValidationException(f"Cannot update {name}: {exc}") from None
            row.upgrading_to = version
            self.touch(row, principal, "Updating")
            server_id, arn = row.id, row.arn
        self._kick(server_id)
        return arn

    def delete(
        self, req: shapes.DeleteMlflowTrackingServerRequest, principal: Principal
    ) -> shapes.DeleteMlflowTrackingServerResponse:
        with self._sessions.begin() as session:
            row = self.server_named(session, req["TrackingServerName"])
            if row.status in TRANSITIONAL:
                raise ValidationException(
                    f"Tracking Server is in un-deletable state ({status_word(row.status)}), "
                    "so it cannot be deleted."
                )
            self.touch(row, principal, "Deleting")
            row.desired_state = "Deleted"
            server_id, arn = row.id, row.arn
        self._kick(server_id)
        return {"TrackingServerArn": arn}

    def list(
        self, req: shapes.ListMlflowTrackingServersRequest
    ) -> shapes.ListMlflowTrackingServersResponse:
        query = listed(SERVER, req, "TrackingServerStatus", SORT_COLUMNS)
        page, token = page_of_query(self._sessions, query, req, SAGEMAKER, self._summary)
        if token is None:
            return {"TrackingServerSummaries": page}
        return {"TrackingServerSummaries": page, "NextToken": token}

    def _summary(self, row: TrackingServer) -> shapes.TrackingServerSummary:
        return {
            "TrackingServerArn": row.arn,
            "TrackingServerName": row.name,
            "CreationTime": datetime.fromtimestamp(row.created_at).astimezone(),
            "LastModifiedTime": datetime.fromtimestamp(row.last_modified_at).astimezone(),
            "TrackingServerStatus": row.status,
            "IsActive": self._lifecycle.is_active(row.id),
            "MlflowVersion": row.mlflow_version,
        }

    # tags (AddTags, DeleteTags, ListTags on a tracking server's ARN) -------------------------

    def _tagged(self, session: Session, arn: str) -> TrackingServer:
        kind, name = self._kind_and_name(arn)
        try:
            return self.server_named(session, name, (kind,))
        except ResourceNotFound:
            raise ResourceNotFound(f"Resource {arn} not found.") from None

    def add_tags(self, req: shapes.AddTagsInput) -> shapes.AddTagsOutput:
        with self._sessions.begin() as session:
            row = self._tagged(session, req["ResourceArn"])
            merged = {t["Key"]: t for t in row.tags}
            merged.update({t["Key"]: dict(t) for t in req["Tags"]})
            if len(merged) > MAX_TAGS:
                raise ValidationException(f"A resource can have at most {MAX_TAGS} tags.")
            self.checked_idle_timeout(list(merged.values()), None)
            row.tags = list(merged.values())
            name = row.name
        self._server_changed(name)
        return {"Tags": req["Tags"]}

    def delete_tags(self, req: shapes.DeleteTagsInput) -> shapes.DeleteTagsOutput:
        with self._sessions.begin() as session:
            row = self._tagged(session, req["ResourceArn"])
            row.tags = [t for t in row.tags if t["Key"] not in set(req["TagKeys"])]
            name = row.name
        self._server_changed(name)
        return {}

    def list_tags(self, req: shapes.ListTagsInput) -> shapes.ListTagsOutput:
        with self._sessions() as session:
            # The column holds the Tag list AddTags and the create stored.
            tags = cast(list[shapes.Tag], list(self._tagged(session, req["ResourceArn"]).tags))
        page, token = page_by_offset(tags, req, TAG_PAGING)
        return {"Tags": page} if token is None else {"Tags": page, "NextToken": token}

    def create_presigned_url(
        self,
        req: shapes.CreatePresignedMlflowTrackingServerUrlRequest,
        principal: Principal,
        token: str,
        token_hash: str,
    ) -> shapes.CreatePresignedMlflowTrackingServerUrlResponse:
        with self._sessions.begin() as session:
            row = self.server_named(session, req["TrackingServerName"])
            url = self.presign(session, row, principal, token, token_hash, req)
        return {"AuthorizedUrl": url}

    def presign(
        self,
        session: Session,
        row: TrackingServer,
        principal: Principal,
        token: str,
        token_hash: str,
        req: Mapping[str, Any],
    ) -> str:
        """A one-time link to the MLflow UI of a server (or an App), in ``session``; ``req``'s
        ExpiresInSeconds and SessionExpirationDurationInSeconds, by default 300 and 43200."""
        session.add(
            PresignedToken(
                token_hash=token_hash,
                server_id=row.id,
                principal_arn=principal.arn,
                principal_id=principal.user_id,
                expires_at=time.time() + req.get("ExpiresInSeconds", 300),
                session_seconds=req.get("SessionExpirationDurationInSeconds", 43200),
                used=False,
            )
        )
        return f"{self._lifecycle.url_for(row.name)}/auth?authToken={token}"
