"""SageMaker's model registry: model package groups and the model packages (versions) in them.

Each public operation method takes the operation's validated request and returns its output
members, as ``mlfleet.registry.responses`` serializes them; refusals use SageMaker's error codes
and, where known, its wording. Creating a package and changing its approval status publish a
"SageMaker Model Package State Change" event in the transaction that makes the change.

ARNs hold names lowercased, as SageMaker writes package ARNs
(``model-package/abalonemodelpackagegroupname/2`` for group AbaloneModelPackageGroupName), so
names are unique regardless of case and every lookup goes through the ARN.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from mlfleet.auth.identity import Principal
from mlfleet.common.paging import SAGEMAKER, page_of_query
from mlfleet.common.time import when
from mlfleet.events.bus import Publish
from mlfleet.events.sources import model_package_event
from mlfleet.protocol.errors import ConflictException, ValidationException
from mlfleet.protocol.shapes import sagemaker as shapes
from mlfleet.settings import Settings
from mlfleet.state.models import ModelPackage, ModelPackageGroup

Output = dict[str, Any]
Summary = TypeVar("Summary")
GROUP = "model-package-group"
PACKAGE = "model-package"
# Nothing is validated or scanned asynchronously: a group or package is complete once created.
COMPLETED = "Completed"
DEFAULT_APPROVAL = "PendingManualApproval"
# SageMaker's words for a group that does not exist (a ValidationException, not a 404).
_NO_GROUP = "ModelPackageGroup {} does not exist."

# CreateModelPackage / UpdateModelPackage members kept in columns of their own.
PACKAGE_COLUMNS = {
    "ModelPackageDescription": "description",
    "ApprovalDescription": "approval_description",
    "ModelLifeCycle": "lifecycle",
    "InferenceSpecification": "inference_specification",
    "SourceUri": "source_uri",
    "ModelCard": "model_card",
    "ModelPackageRegistrationType": "registration_type",
}
# What UpdateModelPackage may replace (approval status and metadata have rules of their own).
UPDATABLE_COLUMNS = (
    "ApprovalDescription",
    "ModelLifeCycle",
    "InferenceSpecification",
    "SourceUri",
    "ModelCard",
    "ModelPackageRegistrationType",
)
# CreateModelPackage members mlfleet does not act on, kept as given for DescribeModelPackage.
DETAIL_MEMBERS = (
    "SourceAlgorithmSpecification",
    "ValidationSpecification",
    "CertifyForMarketplace",
    "MetadataProperties",
    "ModelMetrics",
    "Domain",
    "Task",
    "SamplePayloadUrl",
    "DriftCheckBaselines",
    "AdditionalInferenceSpecifications",
    "SkipModelValidation",
    "SecurityConfig",
    "ManagedStorageType",
)
GROUP_ORDER = {
    "Name": (ModelPackageGroup.name,),
    "CreationTime": (ModelPackageGroup.created_at, ModelPackageGroup.name),
}
PACKAGE_ORDER = {
    "Name": (ModelPackage.name, ModelPackage.version, ModelPackage.arn),
    "CreationTime": (ModelPackage.created_at, ModelPackage.arn),
}


def _now() -> float:
    """The time in milliseconds, SageMaker's precision: a CreationTime read back from an answer
    then filters exactly (CreationTimeAfter that time excludes the package it came from)."""
    return round(time.time(), 3)


def _without_none(members: Mapping[str, Any]) -> Output:
    return {name: value for name, value in members.items() if value is not None}


def _digest(req: Mapping[str, Any]) -> str:
    """What makes two CreateModelPackage calls with one ClientToken the same request."""
    same = {name: value for name, value in req.items() if name != "ClientToken"}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


class ModelRegistry:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], publish: Publish
    ) -> None:
        self._prefix = f"arn:aws:sagemaker:{settings.region}:{settings.account_id}:"
        self._sessions = sessions
        # State changes are events, stored in the transaction that makes the change.
        self._publish = publish

    # ARNs and the lookups authorization needs -----------------------------------------------

    def group_arn(self, ref: str) -> str:
        """The ARN of the group `ref` names (its name or ARN), whether or not it exists."""
        return self._arn(GROUP, ref)

    def package_arn(self, ref: str) -> str:
        """The ARN of the package `ref` names: an ARN, "group/version" or an unversioned name."""
        return self._arn(PACKAGE, ref)

    def _arn(self, kind: str, ref: str) -> str:
        if ref.startswith("arn:"):
            head, sep, resource = ref.rpartition(":")
            return f"{head}{sep}{resource.lower()}"
        return f"{self._prefix}{kind}/{ref.lower()}"

    def next_package_arn(self, group_ref: str) -> str:
        """The ARN the next version created in a group will have (what CreateModelPackage needs
        permission for); versions are numbered from 1 in a group that does not exist yet."""
        group_arn = self.group_arn(group_ref)
        with self._sessions() as session:
            latest = session.scalar(
                select(ModelPackageGroup.latest_version).where(ModelPackageGroup.arn == group_arn)
            )
        return f"{self._prefix}{PACKAGE}/{group_arn.rsplit('/', 1)[-1]}/{(latest or 0) + 1}"

    def group_tags(self, group_arn: str) -> list[dict[str, str]]:
        """A group's tags (aws:ResourceTag/...); none for a group that does not exist."""
        with self._sessions() as session:
            tags = session.scalar(
                select(ModelPackageGroup.tags).where(ModelPackageGroup.arn == group_arn)
            )
        return list(tags or [])

    def package_tags(self, package_arn: str) -> list[dict[str, str]]:
        """A package's tags (aws:ResourceTag/...); none for a package that does not exist."""
        with self._sessions() as session:
            tags = session.scalar(select(ModelPackage.tags).where(ModelPackage.arn == package_arn))
        return list(tags or [])

    def package(self, ref: str) -> shapes.DescribeModelPackageOutput:
        """A package as DescribeModelPackage shows it, by ARN or name (for deploying it)."""
        with self._sessions() as session:
            return self._description(self._package(session, ref))

    # model package groups --------------------------------------------------------------------

    def create_group(
        self, req: shapes.CreateModelPackageGroupInput, principal: Principal
    ) -> shapes.CreateModelPackageGroupOutput:
        name = req["ModelPackageGroupName"]
        arn = self.group_arn(name)
        try:
            with self._sessions.begin() as session:
                session.add(
                    ModelPackageGroup(
                        name=name,
                        arn=arn,
                        description=req.get("ModelPackageGroupDescription"),
                        status=COMPLETED,
                        latest_version=0,
                        created_at=_now(),
                        created_by=principal.user_context(),
                        tags=req.get("Tags", []),
                    )
                )
        except IntegrityError:
            # The unique ARN, not a prior read, decides: two concurrent creates cannot both win.
            raise ValidationException(f"Model Package Group already exists: {arn}") from None
        return {"ModelPackageGroupArn": arn}

    def describe_group(
        self, req: shapes.DescribeModelPackageGroupInput
    ) -> shapes.DescribeModelPackageGroupOutput:
        with self._sessions() as session:
            row = self._group(session, req["ModelPackageGroupName"])
            # The column holds the UserContext CreateModelPackageGroup stored.
            return {
                **self._group_summary(row),
                "CreatedBy": cast(shapes.UserContext, row.created_by),
            }

    def list_groups(
        self, req: shapes.ListModelPackageGroupsInput
    ) -> shapes.ListModelPackageGroupsOutput:
        query = _filtered(select(ModelPackageGroup), ModelPackageGroup, req)
        page, token = self._page(query, req, GROUP_ORDER, self._group_summary)
        if token is None:
            return {"ModelPackageGroupSummaryList": page}
        return {"ModelPackageGroupSummaryList": page, "NextToken": token}

    def delete_group(self, req: shapes.DeleteModelPackageGroupInput) -> Output:
        arn = self.group_arn(req["ModelPackageGroupName"])
        with self._sessions.begin() as session:
            if _claim_group(session, arn, step=0) is None:
                raise ValidationException(_NO_GROUP.format(arn))
            row = self._group(session, arn)
            held = session.scalar(select(func.count()).where(ModelPackage.group_name == row.name))
            if held:
                raise ConflictException(
                    f"Model Package Group {row.name} cannot be deleted while it holds model "
                    f"packages ({held}): delete them first (DeleteModelPackage)."
                )
            session.delete(row)
        return {}

    @staticmethod
    def _group_summary(row: ModelPackageGroup) -> shapes.ModelPackageGroupSummary:
        # Without its None members, the dict is the shape (so are _summary's and _description's).
        return cast(
            shapes.ModelPackageGroupSummary,
            _without_none(
                {
                    "ModelPackageGroupName": row.name,
                    "ModelPackageGroupArn": row.arn,
                    "ModelPackageGroupDescription": row.description,
                    "CreationTime": when(row.created_at),
                    "ModelPackageGroupStatus": row.status,
                }
            ),
        )

    def _group(self, session: Session, ref: str) -> ModelPackageGroup:
        arn = self.group_arn(ref)
        row = session.scalar(select(ModelPackageGroup).where(ModelPackageGroup.arn == arn))
        if row is None:
            raise ValidationException(_NO_GROUP.format(arn))
        return row

    # model packages ----------------------------------------------------------------------------

    def create_package(
        self, req: shapes.CreateModelPackageInput, principal: Principal
    ) -> shapes.CreateModelPackageOutput:
        _check_addressing(req)
        token = req.get("ClientToken")
        digest = _digest(req)
        if token is not None:
            earlier = self._by_token(token, digest)
            if earlier is not None:
                return {"ModelPackageArn": earlier}
        try:
            with self._sessions.begin() as session:
                row = self._new_package(session, req, principal)
                row.client_token, row.request_digest = token, digest
                session.add(row)
                self._announce(session, row)
                arn = row.arn
        except IntegrityError:
            # A concurrent call won the race: with the same ClientToken, answer what it created.
            earlier = self._by_token(token, digest) if token is not None else None
            if earlier is not None:
                return {"ModelPackageArn": earlier}
            if "ModelPackageName" not in req:
                raise
            arn = self.package_arn(req["ModelPackageName"])
            raise ValidationException(f"Model Package already exists: {arn}") from None
        return {"ModelPackageArn": arn}

    def _by_token(self, token: str, digest: str) -> str | None:
        """The package an earlier call with this ClientToken created, if it asked the same."""
        with self._sessions() as session:
            row = session.execute(
                select(ModelPackage.arn, ModelPackage.request_digest).where(
                    ModelPackage.client_token == token
                )
            ).first()
        if row is None:
            return None
        arn, request_digest = row
        if request_digest != digest:
            raise ConflictException(
                f"ClientToken {token} was already used by a different CreateModelPackage "
                f"request (which created {arn})."
            )
        return arn

    def _new_package(
        self, session: Session, req: Mapping[str, Any], principal: Principal
    ) -> ModelPackage:
        if "ModelPackageGroupName" in req:
            place = self._next_version(session, req["ModelPackageGroupName"])
            approval = req.get("ModelApprovalStatus", DEFAULT_APPROVAL)
        else:
            place, approval = self._unversioned(session, req["ModelPackageName"]), None
        now, who = _now(), principal.user_context()
        return ModelPackage(
            **place,
            approval_status=approval,
            customer_metadata=req.get("CustomerMetadataProperties"),
            details={m: req[m] for m in DETAIL_MEMBERS if m in req},
            status=COMPLETED,
            created_at=now,
            created_by=who,
            last_modified_at=now,
            last_modified_by=who,
            tags=req.get("Tags", []),
            **{column: req.get(member) for member, column in PACKAGE_COLUMNS.items()},
        )

    def _next_version(self, session: Session, group_ref: str) -> dict[str, Any]:
        """Where a new version goes: its group's next version number, claimed in `session`."""
        claimed = _claim_group(session, self.group_arn(group_ref), step=1)
        if claimed is None:
            raise ValidationException("Model Package Group does not exist.")
        group, version = claimed
        arn = f"{self._prefix}{PACKAGE}/{group.lower()}/{version}"
        return {"arn": arn, "name": group, "group_name": group, "version": version}

    def _unversioned(self, session: Session, name: str) -> dict[str, Any]:
        arn = self.package_arn(name)
        if session.get(ModelPackage, arn) is not None:
            raise ValidationException(f"Model Package already exists: {arn}")
        return {"arn": arn, "name": name, "group_name": None, "version": None}

    def describe_package(
        self, req: shapes.DescribeModelPackageInput
    ) -> shapes.DescribeModelPackageOutput:
        return self.package(req["ModelPackageName"])

    def list_packages(self, req: shapes.ListModelPackagesInput) -> shapes.ListModelPackagesOutput:
        query = _filtered(select(ModelPackage), ModelPackage, req)
        group_ref = req.get("ModelPackageGroupName")
        if group_ref is not None:
            group_name = select(ModelPackageGroup.name).where(
                ModelPackageGroup.arn == self.group_arn(group_ref)
            )
            query = query.where(ModelPackage.group_name == group_name.scalar_subquery())
        if "ModelApprovalStatus" in req:
            query = query.where(ModelPackage.approval_status == req["ModelApprovalStatus"])
        # SageMaker lists unversioned packages unless told otherwise; naming a group asks for
        # its versions, which is what every client that passes one expects.
        kind = req.get("ModelPackageType", "Versioned" if group_ref else "Unversioned")
        if kind == "Versioned":
            query = query.where(ModelPackage.version.is_not(None))
        elif kind == "Unversioned":
            query = query.where(ModelPackage.version.is_(None))
        page, token = self._page(query, req, PACKAGE_ORDER, self._summary)
        if token is None:
            return {"ModelPackageSummaryList": page}
        return {"ModelPackageSummaryList": page, "NextToken": token}

    def update_package(
        self, req: shapes.UpdateModelPackageInput, principal: Principal
    ) -> shapes.UpdateModelPackageOutput:
        with self._sessions.begin() as session:
            row = self._package(session, req["ModelPackageArn"], for_update=True)
            approval_changed = self._set_approval(row, req.get("ModelApprovalStatus"))
            members: Mapping[str, object] = req
            for member in UPDATABLE_COLUMNS:
                if member in members:
                    setattr(row, PACKAGE_COLUMNS[member], members[member])
            row.customer_metadata = _merged_metadata(
                row.customer_metadata,
                req.get("CustomerMetadataProperties", {}),
                req.get("CustomerMetadataPropertiesToRemove", []),
            )
            if "AdditionalInferenceSpecificationsToAdd" in req:
                added = req["AdditionalInferenceSpecificationsToAdd"]
                kept = row.details.get("AdditionalInferenceSpecifications", [])
                row.details = {**row.details, "AdditionalInferenceSpecifications": kept + added}
            row.last_modified_at = _now()
            row.last_modified_by = principal.user_context()
            if approval_changed:
                self._announce(session, row)
            arn = row.arn
        return {"ModelPackageArn": arn}

    @staticmethod
    def _set_approval(row: ModelPackage, status: str | None) -> bool:
        """Set the approval status; whether it changed. Any status may follow any other."""
        if status is None or status == row.approval_status:
            return False
        if row.version is None:
            raise ValidationException(
                "ModelApprovalStatus applies only to versioned model packages (created in a "
                f"model package group); {row.arn} is unversioned."
            )
        row.approval_status = status
        return True

    def delete_package(self, req: shapes.DeleteModelPackageInput) -> Output:
        with self._sessions.begin() as session:
            session.delete(self._package(session, req["ModelPackageName"]))
        return {}

    def _package(self, session: Session, ref: str, for_update: bool = False) -> ModelPackage:
        arn = self.package_arn(ref)
        query = select(ModelPackage).where(ModelPackage.arn == arn)
        # PostgreSQL: concurrent updates of one package apply one after the other.
        row = session.scalar(query.with_for_update() if for_update else query)
        if row is None:
            raise ValidationException(f"ModelPackage {arn} does not exist.")
        return row

    def _announce(self, session: Session, row: ModelPackage) -> None:
        self._publish([model_package_event(self._description(row))], session)

    def _description(self, row: ModelPackage) -> shapes.DescribeModelPackageOutput:
        # row.details holds CreateModelPackage's members (DETAIL_MEMBERS) as they were given.
        return cast(
            shapes.DescribeModelPackageOutput,
            _without_none(
                {
                    **self._summary(row),
                    **row.details,
                    "InferenceSpecification": row.inference_specification,
                    "ModelPackageStatusDetails": {"ValidationStatuses": []},
                    "CreatedBy": row.created_by,
                    "LastModifiedTime": when(row.last_modified_at),
                    "LastModifiedBy": row.last_modified_by,
                    "ApprovalDescription": row.approval_description,
                    "CustomerMetadataProperties": row.customer_metadata,
                    "SourceUri": row.source_uri,
                    "ModelCard": row.model_card,
                }
            ),
        )

    @staticmethod
    def _summary(row: ModelPackage) -> shapes.ModelPackageSummary:
        return cast(
            shapes.ModelPackageSummary,
            _without_none(
                {
                    # A version's name is "<group>/<version>", as SageMaker generates it.
                    "ModelPackageName": row.name
                    if row.version is None
                    else f"{row.name}/{row.version}",
                    "ModelPackageGroupName": row.group_name,
                    "ModelPackageVersion": row.version,
                    "ModelPackageArn": row.arn,
                    "ModelPackageDescription": row.description,
                    "CreationTime": when(row.created_at),
                    "ModelPackageStatus": row.status,
                    "ModelApprovalStatus": row.approval_status,
                    "ModelLifeCycle": row.lifecycle,
                    "ModelPackageRegistrationType": row.registration_type,
                }
            ),
        )

    # listing -------------------------------------------------------------------------------------

    def _page(
        self,
        query: Select[Any],
        req: Mapping[str, Any],
        orders: Mapping[str, Sequence[InstrumentedAttribute[Any]]],
        summarize: Callable[[Any], Summary],
    ) -> tuple[list[Summary], str | None]:
        """The page of summaries a List call asks for (SortBy, SortOrder, paging), and the
        NextToken of the next page (None on the last)."""
        descending = req.get("SortOrder", "Ascending") == "Descending"
        columns = orders[req.get("SortBy", "CreationTime")]
        query = query.order_by(*(c.desc() if descending else c.asc() for c in columns))
        return page_of_query(self._sessions, query, req, SAGEMAKER, summarize)


def _check_addressing(req: Mapping[str, Any]) -> None:
    """A package is either a version in a group or an unversioned package, never both."""
    if "ModelPackageGroupName" in req and "ModelPackageName" in req:
        raise ValidationException(
            "Both ModelPackageName and ModelPackageGroupName are provided in the input. "
            "Cannot determine which one to use."
        )
    if "ModelPackageGroupName" not in req and "ModelPackageName" not in req:
        raise ValidationException(
            "Either ModelPackageGroupName (for a versioned model package) or ModelPackageName "
            "(for an unversioned one) is required."
        )
    if "ModelPackageName" in req and "ModelApprovalStatus" in req:
        raise ValidationException(
            "ModelApprovalStatus applies only to versioned model packages: pass "
            "ModelPackageGroupName instead of ModelPackageName."
        )


def _claim_group(session: Session, group_arn: str, step: int) -> tuple[str, int] | None:
    """Add `step` to a group's version counter: its name and new latest version, or None if
    there is no such group. The UPDATE write-locks the group (its row in PostgreSQL, the
    database in SQLite) until the transaction ends, which serializes version numbering and
    keeps a group from being deleted while a version is being added to it."""
    claimed = session.execute(
        update(ModelPackageGroup)
        .where(ModelPackageGroup.arn == group_arn)
        .values(latest_version=ModelPackageGroup.latest_version + step)
        .returning(ModelPackageGroup.name, ModelPackageGroup.latest_version)
    ).first()
    return None if claimed is None else (claimed[0], claimed[1])


def _filtered(
    query: Select[Any], model: type[ModelPackageGroup] | type[ModelPackage], req: Mapping[str, Any]
) -> Select[Any]:
    """The filters both List operations share: creation time window and NameContains."""
    conditions: list[ColumnElement[bool]] = []
    if "CreationTimeAfter" in req:
        conditions.append(model.created_at > req["CreationTimeAfter"].timestamp())
    if "CreationTimeBefore" in req:
        conditions.append(model.created_at < req["CreationTimeBefore"].timestamp())
    if "NameContains" in req:
        needle = req["NameContains"].lower()
        conditions.append(func.lower(model.name).contains(needle, autoescape=True))
    return query.where(*conditions)


def _merged_metadata(
    current: Mapping[str, str] | None, added: Mapping[str, str], removed: Iterable[str]
) -> dict[str, str] | None:
    merged = {**(current or {}), **added}
    for key in removed:
        merged.pop(key, None)
    # The map's minimum size is 1: no properties at all is no map.
    return merged or None
