"""The AWS JSON protocol against real botocore models, with requests built by botocore itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.errors import AwsError

MLFLOW_OPERATIONS = [
    "CreateMlflowTrackingServer",
    "DescribeMlflowTrackingServer",
    "UpdateMlflowTrackingServer",
    "DeleteMlflowTrackingServer",
    "ListMlflowTrackingServers",
    "StartMlflowTrackingServer",
    "StopMlflowTrackingServer",
    "CreatePresignedMlflowTrackingServerUrl",
]
ROLE = "arn:aws:iam::123456789012:role/mlflow"
NAME_PATTERN = "[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}"


@pytest.fixture(scope="module")
def sagemaker() -> JsonProtocol:
    return JsonProtocol(load_service_model("sagemaker"))


def client_request(protocol: JsonProtocol, operation: str, params: dict[str, Any]) -> dict:
    """The request botocore would send for `params` (without its client-side validation)."""
    model = protocol.service_model.operation_model(operation)
    return create_serializer("json", include_validation=False).serialize_to_request(params, model)


def parse(protocol: JsonProtocol, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    request = client_request(protocol, operation, params)
    target = protocol.operation_for_target(request["headers"]["X-Amz-Target"])
    return protocol.parse_input(target, request["body"])


def parse_raw(protocol: JsonProtocol, operation: str, body: bytes) -> dict[str, Any]:
    return protocol.parse_input(protocol.service_model.operation_model(operation), body)


def rejection(protocol: JsonProtocol, operation: str, params: dict[str, Any]) -> AwsError:
    with pytest.raises(AwsError) as caught:
        parse(protocol, operation, params)
    return caught.value


def create_params(**overrides: Any) -> dict[str, Any]:
    params = {"TrackingServerName": "ts-1", "ArtifactStoreUri": "s3://bucket/p", "RoleArn": ROLE}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_load_service_model_is_cached() -> None:
    assert load_service_model("sagemaker") is load_service_model("sagemaker")
    assert load_service_model("sagemaker").metadata["targetPrefix"] == "SageMaker"


@pytest.mark.parametrize("operation", MLFLOW_OPERATIONS)
def test_botocore_targets_resolve_to_their_operation(
    sagemaker: JsonProtocol, operation: str
) -> None:
    target = client_request(sagemaker, operation, {})["headers"]["X-Amz-Target"]
    assert sagemaker.operation_for_target(target).name == operation


@pytest.mark.parametrize(
    "target",
    [None, "", "SageMaker.NoSuchOperation", "AWSEvents.CreateMlflowTrackingServer", "SageMaker"],
)
def test_unknown_target_is_unknown_operation(sagemaker: JsonProtocol, target: str | None) -> None:
    with pytest.raises(AwsError) as caught:
        sagemaker.operation_for_target(target)
    assert (caught.value.code, caught.value.status) == ("UnknownOperationException", 400)


def test_valid_create_round_trips(sagemaker: JsonProtocol) -> None:
    params = create_params(
        TrackingServerSize="Medium",
        MlflowVersion="3.0.0",
        AutomaticModelRegistration=True,
        WeeklyMaintenanceWindowStart="Tue:03:30",
        Tags=[{"Key": "café team", "Value": "ü-1"}, {"Key": "env", "Value": ""}],
    )
    assert parse(sagemaker, "CreateMlflowTrackingServer", params) == params


def test_exact_aws_wording_for_one_violation(sagemaker: JsonProtocol) -> None:
    error = rejection(
        sagemaker, "CreateMlflowTrackingServer", create_params(TrackingServerName="bad_name!")
    )
    assert (error.code, error.status) == ("ValidationException", 400)
    assert error.message == (
        "1 validation error detected: Value 'bad_name!' at 'trackingServerName' failed to "
        f"satisfy constraint: Member must satisfy regular expression pattern: {NAME_PATTERN}"
    )
    assert json.loads(error.body()) == {"__type": "ValidationException", "Message": error.message}


def test_too_long_name_reports_length_and_pattern_with_truncated_value(
    sagemaker: JsonProtocol,
) -> None:
    error = rejection(
        sagemaker, "CreateMlflowTrackingServer", create_params(TrackingServerName="a" * 257)
    )
    shown = "a" * 100 + "..."
    assert error.message == (
        "2 validation errors detected: "
        f"Value '{shown}' at 'trackingServerName' failed to satisfy constraint: "
        "Member must have length less than or equal to 256; "
        f"Value '{shown}' at 'trackingServerName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {NAME_PATTERN}"
    )


def test_all_violations_are_collected(sagemaker: JsonProtocol) -> None:
    params = create_params(TrackingServerSize="Huge", RoleArn=None, TrackingServerName="-x")
    error = rejection(sagemaker, "CreateMlflowTrackingServer", params)
    assert error.message.startswith("3 validation errors detected: ")
    assert error.message.split(": ", 1)[1].split("; ") == [
        "Value '-x' at 'trackingServerName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {NAME_PATTERN}",
        "Value 'Huge' at 'trackingServerSize' failed to satisfy constraint: "
        "Member must satisfy enum value set: [Small, Medium, Large]",
        "Value null at 'roleArn' failed to satisfy constraint: Member must not be null",
    ]


def test_tags_are_validated_per_item(sagemaker: JsonProtocol) -> None:
    tags = [{"Key": "ok", "Value": "v"}, {"Key": "bad<key", "Value": "v"}, {"Key": "k"}]
    error = rejection(sagemaker, "CreateMlflowTrackingServer", create_params(Tags=tags))
    assert error.message == (
        "2 validation errors detected: "
        "Value 'bad<key' at 'tags.2.member.key' failed to satisfy constraint: "
        r"Member must satisfy regular expression pattern: ([\p{L}\p{Z}\p{N}_.:/=+\-@]*); "
        "Value null at 'tags.3.member.value' failed to satisfy constraint: "
        "Member must not be null"
    )


def test_too_many_tags(sagemaker: JsonProtocol) -> None:
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    error = rejection(sagemaker, "CreateMlflowTrackingServer", create_params(Tags=tags))
    assert error.message.startswith(
        "1 validation error detected: Value '[{Key=k0, Value=v}, {Key=k1, Value=v}, "
    )
    assert error.message.endswith(
        "...' at 'tags' failed to satisfy constraint: "
        "Member must have length less than or equal to 50"
    )
    assert parse(sagemaker, "CreateMlflowTrackingServer", create_params(Tags=tags[:50]))


@pytest.mark.parametrize(
    ("seconds", "constraint"),
    [
        (999, "Member must have value less than or equal to 300"),
        (1, "Member must have value greater than or equal to 5"),
    ],
)
def test_presigned_url_expiry_range(sagemaker: JsonProtocol, seconds: int, constraint: str) -> None:
    params = {"TrackingServerName": "ts", "ExpiresInSeconds": seconds}
    error = rejection(sagemaker, "CreatePresignedMlflowTrackingServerUrl", params)
    assert error.message == (
        f"1 validation error detected: Value '{seconds}' at 'expiresInSeconds' "
        f"failed to satisfy constraint: {constraint}"
    )
    params["ExpiresInSeconds"] = 300
    assert parse(sagemaker, "CreatePresignedMlflowTrackingServerUrl", params) == params


@pytest.mark.parametrize(
    ("max_results", "constraint"),
    [(0, "greater than or equal to 1"), (101, "less than or equal to 100")],
)
def test_list_max_results_range(sagemaker: JsonProtocol, max_results: int, constraint: str) -> None:
    error = rejection(sagemaker, "ListMlflowTrackingServers", {"MaxResults": max_results})
    assert error.message.endswith(
        f"at 'maxResults' failed to satisfy constraint: Member must have value {constraint}"
    )


def test_botocore_timestamps_become_utc_datetimes(sagemaker: JsonProtocol) -> None:
    after = datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
    before = datetime(2026, 11, 27, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    parsed = parse(
        sagemaker, "ListMlflowTrackingServers", {"CreatedAfter": after, "CreatedBefore": before}
    )
    assert parsed == {"CreatedAfter": after, "CreatedBefore": before}
    assert parsed["CreatedBefore"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (1764145800, datetime(2025, 11, 26, 8, 30, tzinfo=UTC)),
        (1764145800.25, datetime(2025, 11, 26, 8, 30, 0, 250000, tzinfo=UTC)),
        ("2025-11-26T08:30:00Z", datetime(2025, 11, 26, 8, 30, tzinfo=UTC)),
        ("2025-11-26T10:30:00+02:00", datetime(2025, 11, 26, 8, 30, tzinfo=UTC)),
        ("2025-11-26T08:30:00", datetime(2025, 11, 26, 8, 30, tzinfo=UTC)),
    ],
)
def test_timestamp_wire_forms(sagemaker: JsonProtocol, wire: Any, expected: datetime) -> None:
    body = json.dumps({"CreatedAfter": wire}).encode()
    value = parse_raw(sagemaker, "ListMlflowTrackingServers", body)["CreatedAfter"]
    assert value == expected
    assert value.tzinfo is UTC


@pytest.mark.parametrize(
    ("operation", "body", "member"),
    [
        ("ListMlflowTrackingServers", {"MaxResults": "10"}, "maxResults"),
        ("ListMlflowTrackingServers", {"MaxResults": True}, "maxResults"),
        ("ListMlflowTrackingServers", {"MaxResults": 2.5}, "maxResults"),
        ("ListMlflowTrackingServers", {"MaxResults": 2**31}, "maxResults"),
        ("ListMlflowTrackingServers", {"CreatedAfter": "yesterday"}, "createdAfter"),
        ("ListMlflowTrackingServers", {"CreatedAfter": True}, "createdAfter"),
        ("DescribeMlflowTrackingServer", {"TrackingServerName": 5}, "trackingServerName"),
        (
            "UpdateMlflowTrackingServer",
            {"TrackingServerName": "a", "AutomaticModelRegistration": "true"},
            "automaticModelRegistration",
        ),
        ("CreateMlflowTrackingServer", {**create_params(), "Tags": {"Key": "k"}}, "tags"),
        ("CreateMlflowTrackingServer", {**create_params(), "Tags": ["k"]}, "tags.1.member"),
    ],
)
def test_wrong_json_type_is_serialization_exception(
    sagemaker: JsonProtocol, operation: str, body: dict[str, Any], member: str
) -> None:
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, operation, json.dumps(body).encode())
    assert (caught.value.code, caught.value.status) == ("SerializationException", 400)
    assert caught.value.message.endswith(f" at '{member}'")


def test_type_error_message_wording(sagemaker: JsonProtocol) -> None:
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, "ListMlflowTrackingServers", b'{"MaxResults": "10"}')
    assert caught.value.message == "STRING_VALUE can not be converted to an Integer at 'maxResults'"


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'"text"', b"\xff\xfe"])
def test_unparseable_body_is_serialization_exception(sagemaker: JsonProtocol, body: bytes) -> None:
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, "ListMlflowTrackingServers", body)
    assert caught.value.code == "SerializationException"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # Past Python's recursion limit, and deep enough to break the walks after parsing.
        (b'{"TrackingServerName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"Tags": [' + b"[" * 900 + b"]" * 900 + b"]}", "nested too deeply"),
        (b'{"TrackingServerName": "ts\\ud800"}', "unpaired surrogate"),
    ],
)
def test_hostile_json_is_serialization_exception(
    sagemaker: JsonProtocol, body: bytes, fragment: str
) -> None:
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, "DescribeMlflowTrackingServer", body)
    assert (caught.value.code, caught.value.status) == ("SerializationException", 400)
    assert fragment in caught.value.message


def test_escaped_surrogate_pairs_are_characters(sagemaker: JsonProtocol) -> None:
    body = b'{"NextToken": "\\ud83d\\ude00"}'
    assert parse_raw(sagemaker, "ListMlflowTrackingServers", body) == {"NextToken": "\U0001f600"}


def test_a_number_past_any_float_is_serialization_exception(sagemaker: JsonProtocol) -> None:
    body = b'{"EndpointConfigName": "c", "ProductionVariants": [{"VariantName": "v", '
    body += b'"InitialVariantWeight": 1' + b"0" * 400 + b"}]}"
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, "CreateEndpointConfig", body)
    assert caught.value.code == "SerializationException"
    assert "productionVariants.1.member.initialVariantWeight" in caught.value.message


def test_empty_body_is_an_empty_request(sagemaker: JsonProtocol) -> None:
    assert parse_raw(sagemaker, "ListMlflowTrackingServers", b"") == {}
    with pytest.raises(AwsError) as caught:
        parse_raw(sagemaker, "DescribeMlflowTrackingServer", b"")
    assert caught.value.message == (
        "1 validation error detected: Value null at 'trackingServerName' failed to satisfy "
        "constraint: Member must not be null"
    )


def test_unknown_members_are_ignored(sagemaker: JsonProtocol) -> None:
    body = b'{"TrackingServerName": "ts", "Bogus": [1, 2], "trackingServerName": 5}'
    parsed = parse_raw(sagemaker, "DescribeMlflowTrackingServer", body)
    assert parsed == {"TrackingServerName": "ts"}


def test_pattern_override_accepts_only_what_it_allows() -> None:
    model = load_service_model("sagemaker")
    strict = JsonProtocol(model)
    lenient = JsonProtocol(model, pattern_overrides={"S3Uri": lambda v: v.startswith("file:///")})
    params = create_params(ArtifactStoreUri="file:///srv/art")

    error = rejection(strict, "CreateMlflowTrackingServer", params)
    assert "at 'artifactStoreUri' failed to satisfy constraint: Member must satisfy regular " in (
        error.message
    )
    assert parse(lenient, "CreateMlflowTrackingServer", params) == params
    error = rejection(
        lenient, "CreateMlflowTrackingServer", create_params(ArtifactStoreUri="ftp://x")
    )
    assert "'ftp://x' at 'artifactStoreUri'" in error.message


def test_java_surrogate_ranges_in_patterns(sagemaker: JsonProtocol) -> None:
    """[...\\uD800\\uDC00-\\uDBFF\\uDFFF] is Java for "any supplementary code point"."""
    base = {
        "FeatureGroupName": "fg",
        "RecordIdentifierFeatureName": "id",
        "EventTimeFeatureName": "t",
        "FeatureDefinitions": [{"FeatureName": "id", "FeatureType": "String"}],
    }

    def with_table(table: str) -> dict[str, Any]:
        catalog = {"TableName": table, "Catalog": "c", "Database": "d"}
        store = {"S3StorageConfig": {"S3Uri": "s3://b/p"}, "DataCatalogConfig": catalog}
        return {**base, "OfflineStoreConfig": store}

    assert parse(sagemaker, "CreateFeatureGroup", with_table("tbl 😀 é"))
    error = rejection(sagemaker, "CreateFeatureGroup", with_table("tbl\x01"))
    assert "at 'offlineStoreConfig.dataCatalogConfig.tableName'" in error.message


def test_list_of_scalars_is_reported_against_the_list() -> None:
    events = JsonProtocol(load_service_model("events"))
    error = rejection(events, "RemoveTargets", {"Rule": "r", "Ids": ["ok", "bad id!", "x" * 65]})
    assert error.message == (
        "1 validation error detected: "
        f"Value '[ok, bad id!, {'x' * 65}]' at 'ids' failed to satisfy constraint: "
        r"Member must satisfy constraint: [Member must satisfy regular expression pattern: "
        r"[\.\-_A-Za-z0-9]+, Member must have length less than or equal to 64]"
    )


def test_map_keys_and_values_are_reported_against_the_map() -> None:
    logs = JsonProtocol(load_service_model("logs"))
    assert parse(logs, "TagLogGroup", {"logGroupName": "g", "tags": {"team": "ml"}})
    error = rejection(logs, "TagLogGroup", {"logGroupName": "g", "tags": {"bad<": "v" * 257}})
    assert error.message.split("; ") == [
        f"2 validation errors detected: Value '{{bad<={'v' * 94}...' at 'tags' failed to satisfy "
        "constraint: Map keys must satisfy constraint: [Member must satisfy regular expression "
        r"pattern: ^([\p{L}\p{Z}\p{N}_.:/=+\-@]+)$]",
        f"Value '{{bad<={'v' * 94}...' at 'tags' failed to satisfy constraint: Map value must "
        "satisfy constraint: [Member must have length less than or equal to 256]",
    ]


def test_blobs_are_decoded_and_length_checked() -> None:
    kms = JsonProtocol(load_service_model("kms"))
    assert parse(kms, "Encrypt", {"KeyId": "k", "Plaintext": b"\x00secret"})["Plaintext"] == (
        b"\x00secret"
    )
    error = rejection(kms, "Encrypt", {"KeyId": "k", "Plaintext": b""})
    assert error.message.endswith(
        "at 'plaintext' failed to satisfy constraint: Member must have length greater than or "
        "equal to 1"
    )
    with pytest.raises(AwsError) as caught:
        parse_raw(kms, "Encrypt", b'{"KeyId": "k", "Plaintext": "not base64!"}')
    assert caught.value.code == "SerializationException"


def test_other_json_services_route_by_their_own_prefix() -> None:
    cloudtrail = JsonProtocol(load_service_model("cloudtrail"))
    target = client_request(cloudtrail, "LookupEvents", {})["headers"]["X-Amz-Target"]
    assert target.count(".") > 1  # a dotted prefix: only the last dot separates the operation
    assert cloudtrail.operation_for_target(target).name == "LookupEvents"
    start = datetime(2026, 1, 2, tzinfo=UTC)
    assert parse(cloudtrail, "LookupEvents", {"StartTime": start, "MaxResults": 50}) == {
        "StartTime": start,
        "MaxResults": 50,
    }


def test_non_json_services_are_refused() -> None:
    with pytest.raises(ValueError, match="iam"):
        JsonProtocol(load_service_model("iam"))


def test_describe_output_parses_back_with_botocore(sagemaker: JsonProtocol) -> None:
    operation = sagemaker.service_model.operation_model("DescribeMlflowTrackingServer")
    created = datetime(2026, 11, 26, 8, 30, 15, 123000, tzinfo=UTC)
    modified = datetime(2026, 11, 26, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    data = {
        "TrackingServerArn": "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/ts",
        "TrackingServerName": "ts",
        "ArtifactStoreUri": "s3://bucket/p",
        "TrackingServerSize": "Small",
        "TrackingServerStatus": "Created",
        "IsActive": "Active",
        "AutomaticModelRegistration": False,
        "CreationTime": created,
        "LastModifiedTime": modified,
        "CreatedBy": {
            "UserProfileName": "admin",
            "IamIdentity": {"Arn": ROLE, "SourceIdentity": None},
        },
        "TrackingServerMaintenanceStatus": None,
        "FailureReason": "disk full",
    }
    body = sagemaker.serialize_output(operation, data)

    raw = json.loads(body)
    assert raw["CreationTime"] == created.timestamp()
    assert "TrackingServerMaintenanceStatus" not in raw
    assert raw["CreatedBy"]["IamIdentity"] == {"Arn": ROLE}
    assert raw["FailureReason"] == "disk full"

    parsed = create_parser("json").parse(
        {"body": body, "headers": {}, "status_code": 200}, operation.output_shape
    )
    parsed.pop("ResponseMetadata", None)
    expected = {k: v for k, v in data.items() if v is not None and k != "FailureReason"}
    expected["CreatedBy"] = {"UserProfileName": "admin", "IamIdentity": {"Arn": ROLE}}
    assert parsed == expected
    assert parsed["CreationTime"] == created
    assert parsed["LastModifiedTime"] == modified


def test_output_extension_keys_keep_datetimes_and_lists(sagemaker: JsonProtocol) -> None:
    operation = sagemaker.service_model.operation_model("ListMlflowTrackingServers")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    body = sagemaker.serialize_output(
        operation,
        {
            "TrackingServerSummaries": [{"TrackingServerName": "a", "CreationTime": when}],
            "NextToken": None,
            "Extra": {"At": when, "Skip": None},
        },
    )
    assert json.loads(body) == {
        "TrackingServerSummaries": [{"TrackingServerName": "a", "CreationTime": when.timestamp()}],
        "Extra": {"At": when.timestamp()},
    }
