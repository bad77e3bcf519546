"""The model registry (model package groups and packages) through the real boto3 client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from support.aws import ACCOUNT, error_of, unique
from support.daemon import Daemon
from support.events import Receiver, route_to, wait_received
from support.iam import READ_ONLY, as_key, new_user, policy
from support.registry import new_group, new_versions

PREFIX = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
SPEC = {
    "Containers": [
        {
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1",
            "ModelDataUrl": "s3://models/churn/model.tar.gz",
            "Environment": {"THREADS": "2"},
        }
    ],
    "SupportedContentTypes": ["text/csv"],
    "SupportedResponseMIMETypes": ["text/csv"],
}


def content(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without its ResponseMetadata, which differs from call to call."""
    return {key: value for key, value in answer.items() if key != "ResponseMetadata"}


def test_group_lifecycle(daemon: Daemon) -> None:
    sm = daemon.client()
    name = unique("Churn")
    tags = [{"Key": "team", "Value": "risk"}]
    arn = sm.create_model_package_group(
        ModelPackageGroupName=name, ModelPackageGroupDescription="churn models", Tags=tags
    )["ModelPackageGroupArn"]
    # SageMaker writes names lowercased in ARNs.
    assert arn == f"{PREFIX}:model-package-group/{name.lower()}"

    by_name = content(sm.describe_model_package_group(ModelPackageGroupName=name))
    assert by_name == content(sm.describe_model_package_group(ModelPackageGroupName=arn))
    assert by_name["ModelPackageGroupName"] == name
    assert by_name["ModelPackageGroupArn"] == arn
    assert by_name["ModelPackageGroupDescription"] == "churn models"
    assert by_name["ModelPackageGroupStatus"] == "Completed"
    assert by_name["CreatedBy"]["IamIdentity"]["Arn"].endswith(":user/admin")
    assert abs(by_name["CreationTime"].timestamp() - time.time()) < 60

    # Names are unique regardless of case, as their ARNs are.
    with pytest.raises(ClientError) as exc:
        sm.create_model_package_group(ModelPackageGroupName=name.upper())
    assert error_of(exc) == ("ValidationException", f"Model Package Group already exists: {arn}")

    sm.delete_model_package_group(ModelPackageGroupName=arn)
    with pytest.raises(ClientError) as exc:
        sm.describe_model_package_group(ModelPackageGroupName=name)
    assert error_of(exc) == ("ValidationException", f"ModelPackageGroup {arn} does not exist.")


def test_list_groups_filters_sorts_and_pages(daemon: Daemon) -> None:
    sm = daemon.client()
    marker = unique("lg")
    before = datetime.now(UTC) - timedelta(seconds=1)
    names = []
    for letter in "cab":
        names.append(f"{marker}-{letter}")
        sm.create_model_package_group(ModelPackageGroupName=names[-1])
        time.sleep(0.01)  # distinct creation times
    after = datetime.now(UTC) + timedelta(seconds=1)

    def listed(contains: str = marker, **kwargs: Any) -> list[str]:
        page = sm.list_model_package_groups(NameContains=contains, **kwargs)
        return [g["ModelPackageGroupName"] for g in page["ModelPackageGroupSummaryList"]]

    assert listed() == names  # by creation time, ascending
    assert listed(SortBy="Name") == sorted(names)
    assert listed(SortBy="Name", SortOrder="Descending") == sorted(names, reverse=True)
    assert listed(marker.upper()) == names  # NameContains ignores case
    assert listed(CreationTimeAfter=before, CreationTimeBefore=after) == names
    assert listed(CreationTimeAfter=after) == []

    first = sm.list_model_package_groups(NameContains=marker, MaxResults=2)
    assert len(first["ModelPackageGroupSummaryList"]) == 2
    rest = sm.list_model_package_groups(
        NameContains=marker, MaxResults=2, NextToken=first["NextToken"]
    )
    assert [g["ModelPackageGroupName"] for g in rest["ModelPackageGroupSummaryList"]] == [names[2]]
    assert "NextToken" not in rest
    summary = first["ModelPackageGroupSummaryList"][0]
    assert summary["ModelPackageGroupStatus"] == "Completed"
    assert summary["ModelPackageGroupArn"].endswith(f"/{names[0]}")
    paginated = sm.get_paginator("list_model_package_groups").paginate(
        NameContains=marker, PaginationConfig={"PageSize": 1}
    )
    assert [
        g["ModelPackageGroupName"] for g in paginated.search("ModelPackageGroupSummaryList")
    ] == names


def test_versions_number_from_one_and_describe_shows_the_package(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    lifecycle = {"Stage": "staging", "StageStatus": "pending", "StageDescription": "first"}
    arns = new_versions(
        sm,
        group,
        3,
        ModelPackageDescription="gradient boosting",
        InferenceSpecification=SPEC,
        ModelLifeCycle=lifecycle,
        CustomerMetadataProperties={"run_id": "abc123"},
        SourceUri="models:/churn/1",
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "json", "S3Uri": "s3://m/q"}}},
        Domain="MACHINE_LEARNING",
        Tags=[{"Key": "owner", "Value": "me"}],
    )
    assert arns == [f"{PREFIX}:model-package/{group.lower()}/{v}" for v in (1, 2, 3)]

    desc = content(sm.describe_model_package(ModelPackageName=arns[1]))
    assert desc == content(sm.describe_model_package(ModelPackageName=f"{group}/2"))
    assert desc["ModelPackageName"] == f"{group}/2"
    assert desc["ModelPackageGroupName"] == group
    assert desc["ModelPackageVersion"] == 2
    assert desc["ModelPackageArn"] == arns[1]
    assert desc["ModelPackageDescription"] == "gradient boosting"
    assert desc["ModelPackageStatus"] == "Completed"
    assert desc["ModelPackageStatusDetails"] == {"ValidationStatuses": []}
    assert desc["ModelApprovalStatus"] == "PendingManualApproval"
    assert desc["InferenceSpecification"] == SPEC
    assert desc["ModelLifeCycle"] == lifecycle
    assert desc["CustomerMetadataProperties"] == {"run_id": "abc123"}
    assert desc["SourceUri"] == "models:/churn/1"
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == "s3://m/q"
    assert desc["Domain"] == "MACHINE_LEARNING"
    assert desc["CreatedBy"]["IamIdentity"]["Arn"].endswith(":user/admin")
    assert desc["LastModifiedTime"] == desc["CreationTime"]


def test_concurrent_creates_get_distinct_versions(any_daemon: Daemon) -> None:
    # On both databases: version numbering relies on each one's write locks.
    group = new_group(any_daemon.client())

    def create(_: int) -> str:
        # One client per thread: boto3 clients are not meant to be shared across threads.
        sm = any_daemon.client()
        return sm.create_model_package(ModelPackageGroupName=group)["ModelPackageArn"]

    with ThreadPoolExecutor(6) as pool:
        arns = list(pool.map(create, range(12)))
    versions = sorted(int(arn.rsplit("/", 1)[1]) for arn in arns)
    assert versions == list(range(1, 13))


def test_update_approval_lifecycle_and_metadata(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    (arn,) = new_versions(
        sm, group, 1, CustomerMetadataProperties={"keep": "1", "drop": "2", "change": "old"}
    )
    created = sm.describe_model_package(ModelPackageName=arn)
    time.sleep(0.01)

    assert (
        sm.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus="Approved",
            ApprovalDescription="passed review",
            ModelLifeCycle={"Stage": "production", "StageStatus": "active"},
            CustomerMetadataProperties={"change": "new", "added": "3"},
            CustomerMetadataPropertiesToRemove=["drop", "never-there"],
            SourceUri="models:/churn/7",
            InferenceSpecification=SPEC,
        )["ModelPackageArn"]
        == arn
    )

    desc = sm.describe_model_package(ModelPackageName=arn)
    assert desc["ModelApprovalStatus"] == "Approved"
    assert desc["ApprovalDescription"] == "passed review"
    assert desc["ModelLifeCycle"] == {"Stage": "production", "StageStatus": "active"}
    assert desc["CustomerMetadataProperties"] == {"keep": "1", "change": "new", "added": "3"}
    assert desc["SourceUri"] == "models:/churn/7"
    assert desc["InferenceSpecification"] == SPEC
    assert desc["LastModifiedTime"] > created["LastModifiedTime"]
    assert desc["CreationTime"] == created["CreationTime"]

    # Any status may follow any other: rejected, then back to pending.
    for status in ("Rejected", "PendingManualApproval"):
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)
        assert sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == status

    # Removing every property leaves none.
    sm.update_model_package(
        ModelPackageArn=arn, CustomerMetadataPropertiesToRemove=["keep", "change", "added"]
    )
    assert "CustomerMetadataProperties" not in sm.describe_model_package(ModelPackageName=arn)


def test_client_token_makes_create_idempotent(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    token = unique("token")
    request = {"ModelPackageGroupName": group, "ClientToken": token, "SourceUri": "models:/m/1"}
    first = sm.create_model_package(**request)["ModelPackageArn"]
    assert sm.create_model_package(**request)["ModelPackageArn"] == first
    listed = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in listed] == [first]

    with pytest.raises(ClientError) as exc:
        sm.create_model_package(**{**request, "SourceUri": "models:/m/2"})
    code, message = error_of(exc)
    assert code == "ConflictException"
    assert token in message and first in message
    # Without the token the same request is a new version.
    assert sm.create_model_package(ModelPackageGroupName=group)["ModelPackageArn"].endswith("/2")


def test_list_packages_filters_sorts_and_pages(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    other = new_group(sm)
    arns = []
    for _ in range(3):
        arns += new_versions(sm, group, 1)
        time.sleep(0.01)
    new_versions(sm, other, 1)
    sm.update_model_package(ModelPackageArn=arns[1], ModelApprovalStatus="Approved")
    unversioned = unique("Solo")
    solo_arn = sm.create_model_package(ModelPackageName=unversioned, InferenceSpecification=SPEC)[
        "ModelPackageArn"
    ]
    assert solo_arn == f"{PREFIX}:model-package/{unversioned.lower()}"

    def listed(**kwargs: Any) -> list[str]:
        page = sm.list_model_packages(**kwargs)
        return [p["ModelPackageArn"] for p in page["ModelPackageSummaryList"]]

    assert listed(ModelPackageGroupName=group) == arns
    assert listed(ModelPackageGroupName=f"{PREFIX}:model-package-group/{group}") == arns
    assert listed(ModelPackageGroupName=group, SortOrder="Descending") == arns[::-1]
    assert (
        listed(ModelPackageGroupName=group, SortBy="Name", SortOrder="Descending") == (arns[::-1])
    )
    assert listed(ModelPackageGroupName=group, ModelApprovalStatus="Approved") == [arns[1]]
    assert listed(ModelPackageGroupName=group, ModelPackageType="Unversioned") == []
    assert listed(ModelPackageGroupName=unique("nothing")) == []
    # Without a group SageMaker lists unversioned packages unless told otherwise.
    assert listed(NameContains=unversioned) == [solo_arn]
    assert listed(NameContains=group) == []
    assert listed(NameContains=group, ModelPackageType="Versioned") == arns
    assert set(listed(NameContains=group[:-1], ModelPackageType="Both")) >= {*arns}
    created = sm.describe_model_package(ModelPackageName=arns[1])["CreationTime"]
    assert listed(ModelPackageGroupName=group, CreationTimeAfter=created) == [arns[2]]
    assert listed(ModelPackageGroupName=group, CreationTimeBefore=created) == [arns[0]]

    first = sm.list_model_packages(ModelPackageGroupName=group, MaxResults=2)
    summary = first["ModelPackageSummaryList"][1]
    assert summary["ModelPackageName"] == f"{group}/2"
    assert summary["ModelPackageGroupName"] == group
    assert summary["ModelPackageVersion"] == 2
    assert summary["ModelPackageStatus"] == "Completed"
    assert summary["ModelApprovalStatus"] == "Approved"
    rest = sm.list_model_packages(
        ModelPackageGroupName=group, MaxResults=2, NextToken=first["NextToken"]
    )
    assert [p["ModelPackageArn"] for p in rest["ModelPackageSummaryList"]] == [arns[2]]
    assert "NextToken" not in rest


def test_deleting_packages_and_groups(any_daemon: Daemon) -> None:
    sm = any_daemon.client()
    group = new_group(sm)
    arns = new_versions(sm, group, 2)
    with pytest.raises(ClientError) as exc:
        sm.delete_model_package_group(ModelPackageGroupName=group)
    code, message = error_of(exc)
    assert code == "ConflictException"
    assert group in message and "DeleteModelPackage" in message

    sm.delete_model_package(ModelPackageName=arns[0])
    sm.delete_model_package(ModelPackageName=f"{group}/2")
    with pytest.raises(ClientError) as exc:
        sm.describe_model_package(ModelPackageName=arns[0])
    assert error_of(exc) == ("ValidationException", f"ModelPackage {arns[0]} does not exist.")
    sm.delete_model_package_group(ModelPackageGroupName=group)
    assert sm.list_model_package_groups(NameContains=group)["ModelPackageGroupSummaryList"] == []


def test_refusals(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    (arn,) = new_versions(sm, group, 1)
    missing = unique("missing")

    def refused(call: Any, **kwargs: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as exc:
            call(**kwargs)
        return error_of(exc)

    assert refused(sm.create_model_package, ModelPackageGroupName=missing) == (
        "ValidationException",
        "Model Package Group does not exist.",
    )
    unknown = f"{PREFIX}:model-package/{missing}/1"
    assert refused(sm.describe_model_package, ModelPackageName=unknown) == (
        "ValidationException",
        f"ModelPackage {unknown} does not exist.",
    )
    assert refused(sm.update_model_package, ModelPackageArn=unknown, SourceUri="x")[0] == (
        "ValidationException"
    )
    assert refused(sm.delete_model_package_group, ModelPackageGroupName=missing)[0] == (
        "ValidationException"
    )
    code, message = refused(sm.update_model_package, ModelPackageArn=arn, ModelApprovalStatus="Ok")
    assert code == "ValidationException"
    assert (
        "'modelApprovalStatus'" in message
        and "Approved, Rejected, PendingManualApproval" in message
    )
    code, message = refused(
        sm.create_model_package, ModelPackageGroupName=group, ModelApprovalStatus="Maybe"
    )
    assert code == "ValidationException" and "'modelApprovalStatus'" in message
    code, message = refused(sm.list_model_packages, ModelPackageGroupName=group, SortBy="Version")
    assert code == "ValidationException" and "'sortBy'" in message
    assert refused(
        sm.create_model_package, ModelPackageGroupName=group, ModelPackageName=missing
    ) == (
        "ValidationException",
        "Both ModelPackageName and ModelPackageGroupName are provided in the input. "
        "Cannot determine which one to use.",
    )
    assert "ModelPackageGroupName" in refused(sm.create_model_package)[1]
    assert (
        "versioned"
        in refused(
            sm.create_model_package, ModelPackageName=missing, ModelApprovalStatus="Approved"
        )[1]
    )
    assert (
        refused(sm.list_model_package_groups, NextToken="not-a-token")[0] == "ValidationException"
    )


def test_creation_and_approval_changes_are_events(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    receiver = Receiver().start()
    try:
        route_to(
            daemon,
            receiver,
            {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Model Package State Change"],
                "detail": {"ModelPackageGroupName": [group]},
            },
        )
        (arn,) = new_versions(sm, group, 1, SourceUri="models:/m/1")
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
        # Neither a lifecycle change nor setting the status it already has is an approval change.
        sm.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus="Approved",
            ModelLifeCycle={"Stage": "production", "StageStatus": "active"},
        )
        sm.update_model_package(
            ModelPackageArn=arn, ModelApprovalStatus="Rejected", ApprovalDescription="drift"
        )
        bodies = wait_received(receiver, 3)
    finally:
        receiver.stop()
    assert [b["detail"]["ModelApprovalStatus"] for b in bodies] == [
        "PendingManualApproval",
        "Approved",
        "Rejected",
    ]
    event = bodies[1]
    assert event["source"] == "aws.sagemaker"
    assert event["detail-type"] == "SageMaker Model Package State Change"
    assert event["resources"] == [arn]
    detail = event["detail"]
    assert detail["ModelPackageArn"] == arn
    assert detail["ModelPackageGroupName"] == group
    assert detail["ModelPackageVersion"] == 1
    assert detail["ModelPackageStatus"] == "Completed"
    assert detail["SourceUri"] == "models:/m/1"
    assert datetime.fromisoformat(detail["CreationTime"]).tzinfo is not None
    assert bodies[2]["detail"]["ApprovalDescription"] == "drift"
    assert bodies[2]["detail"]["ModelLifeCycle"]["Stage"] == "production"


def test_read_only_user_cannot_update_a_package(daemon: Daemon) -> None:
    sm = daemon.client()
    group = new_group(sm)
    (arn,) = new_versions(sm, group, 1)
    reader = new_user(daemon, READ_ONLY)
    with pytest.raises(ClientError) as exc:
        as_key(daemon, "sagemaker", reader).update_model_package(
            ModelPackageArn=arn, ModelApprovalStatus="Approved"
        )
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_of(exc) == (
        "AccessDeniedException",
        f"User: {reader['Arn']} is not authorized to perform: sagemaker:UpdateModelPackage on "
        f"resource: {arn} because no identity-based policy allows the "
        "sagemaker:UpdateModelPackage action",
    )
    assert sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == (
        "PendingManualApproval"
    )


def test_policies_see_package_arns_and_group_tags(daemon: Daemon) -> None:
    sm = daemon.client()
    open_group = new_group(sm)
    locked = new_group(sm, Tags=[{"Key": "lock", "Value": "yes"}])
    allowed = new_group(sm)
    (other_arn,) = new_versions(sm, open_group, 1)
    (allowed_arn,) = new_versions(sm, allowed, 1)
    registrar = new_user(
        daemon,
        inline=policy(
            {
                "Effect": "Allow",
                "Action": ["sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage"],
                "Resource": [f"{PREFIX}:model-package/*"],
            },
            {
                "Effect": "Deny",
                "Action": "sagemaker:CreateModelPackage",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:ResourceTag/lock": "yes"}},
            },
            {
                "Effect": "Deny",
                "Action": "sagemaker:UpdateModelPackage",
                "Resource": f"{PREFIX}:model-package/{open_group.lower()}/*",
            },
            {
                "Effect": "Deny",
                "Action": "sagemaker:UpdateModelPackage",
                "Resource": "*",
                "Condition": {"StringEquals": {"sagemaker:ModelLifeCycle/stage": "production"}},
            },
        ),
    )
    as_registrar = as_key(daemon, "sagemaker", registrar)
    created = as_registrar.create_model_package(ModelPackageGroupName=open_group)
    assert created["ModelPackageArn"].endswith(f"/{open_group.lower()}/2")
    with pytest.raises(ClientError) as exc:
        as_registrar.create_model_package(ModelPackageGroupName=locked)
    assert error_of(exc)[0] == "AccessDeniedException"
    assert f"model-package/{locked.lower()}/1" in error_of(exc)[1]

    as_registrar.update_model_package(
        ModelPackageArn=allowed_arn, ModelLifeCycle={"Stage": "staging", "StageStatus": "active"}
    )
    for arn, lifecycle in (
        (other_arn, {"Stage": "staging", "StageStatus": "active"}),
        (allowed_arn, {"Stage": "production", "StageStatus": "active"}),
    ):
        with pytest.raises(ClientError) as exc:
            as_registrar.update_model_package(ModelPackageArn=arn, ModelLifeCycle=lifecycle)
        assert "explicit deny" in error_of(exc)[1]
    # The refused update changed nothing.
    lifecycle = sm.describe_model_package(ModelPackageName=allowed_arn)["ModelLifeCycle"]
    assert lifecycle == {"Stage": "staging", "StageStatus": "active"}
    with pytest.raises(ClientError) as exc:
        as_registrar.describe_model_package(ModelPackageName=allowed_arn)
    assert "sagemaker:DescribeModelPackage" in error_of(exc)[1]
