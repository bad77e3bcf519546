"""The AWS query protocol against real botocore models, through botocore's serializer and parser."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from botocore.model import ServiceModel
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from mlfleet.protocol.awsjson import load_service_model
from mlfleet.protocol.awsquery import QueryProtocol, parse_form
from mlfleet.protocol.errors import AwsError

ACCOUNT = "123456789012"
USER_ARN = f"arn:aws:iam::{ACCOUNT}:user/team/bob"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/mlflow"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/read-only"
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/a+b&c=d"}
        ],
    },
    indent=2,
)
CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
REQUEST_ID = "5f0e2b4c-1d8a-4c6e-9b1f-0a2b3c4d5e6f"


@pytest.fixture(scope="module")
def iam() -> QueryProtocol:
    return QueryProtocol(load_service_model("iam"))


@pytest.fixture(scope="module")
def sts() -> QueryProtocol:
    return QueryProtocol(load_service_model("sts"))


@pytest.fixture(scope="module")
def protocols(iam: QueryProtocol, sts: QueryProtocol) -> dict[str, QueryProtocol]:
    return {"iam": iam, "sts": sts}


def client_form(protocol: QueryProtocol, operation: str, params: dict[str, Any]) -> dict[str, str]:
    """The form botocore would send for `params` (without its client-side validation)."""
    model = protocol.service_model.operation_model(operation)
    request = create_serializer("query", include_validation=False).serialize_to_request(
        params, model
    )
    return parse_form(urlencode(request["body"]).encode())


def parse(protocol: QueryProtocol, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    form = client_form(protocol, operation, params)
    return protocol.parse_input(protocol.operation_for(form), form)


def rejection(protocol: QueryProtocol, operation: str, params: dict[str, Any]) -> AwsError:
    with pytest.raises(AwsError) as caught:
        parse(protocol, operation, params)
    return caught.value


def client_output(protocol: QueryProtocol, operation: str, data: dict[str, Any]) -> dict[str, Any]:
    """What botocore makes of the answer for `data`, minus the request id it must carry."""
    model = protocol.service_model.operation_model(operation)
    body = protocol.serialize_output(model, data, REQUEST_ID)
    response = {"body": body, "headers": {}, "status_code": 200}
    parsed = create_parser("query").parse(response, model.output_shape)
    assert parsed.pop("ResponseMetadata")["RequestId"] == REQUEST_ID
    return parsed


def client_error(protocol: QueryProtocol, error: AwsError) -> tuple[int, dict[str, Any]]:
    status = protocol.error_status(error)
    body = protocol.error_body(error, REQUEST_ID)
    parsed = create_parser("query").parse(
        {"body": body, "headers": {}, "status_code": status}, None
    )
    assert parsed["ResponseMetadata"]["RequestId"] == REQUEST_ID
    return status, parsed["Error"]


def types(value: Any) -> Any:
    """`value` with every leaf replaced by its type, so equal values of other types differ."""
    if isinstance(value, dict):
        return {key: types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [types(item) for item in value]
    return type(value)


def assert_same(actual: Any, expected: Any) -> None:
    assert actual == expected
    assert types(actual) == types(expected)


TAGS = [{"Key": "team", "Value": "ml platform"}, {"Key": "cost-center", "Value": ""}]

REQUESTS = {
    "CreateUser": (
        "iam",
        {"Path": "/team/", "UserName": "bob", "PermissionsBoundary": POLICY_ARN, "Tags": TAGS},
    ),
    "PutUserPolicy": (
        "iam",
        {"UserName": "bob", "PolicyName": "inline-1", "PolicyDocument": POLICY},
    ),
    "CreatePolicy": (
        "iam",
        {
            "PolicyName": "read-only",
            "Path": "/",
            "PolicyDocument": POLICY,
            "Description": "Reads, never writes",
            "Tags": TAGS[:1],
        },
    ),
    "ListUsers": ("iam", {"PathPrefix": "/team/", "Marker": "opaque+token/==", "MaxItems": 25}),
    "AttachUserPolicy": ("iam", {"UserName": "bob", "PolicyArn": POLICY_ARN}),
    "UpdateAccessKey": (
        "iam",
        {"UserName": "bob", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "Status": "Inactive"},
    ),
    "SimulatePrincipalPolicy": (
        "iam",
        {
            "PolicySourceArn": USER_ARN,
            "PolicyInputList": [POLICY],
            "ActionNames": [
                "s3:GetObject",
                "iam:ListUsers",
                "sagemaker:CreateMlflowTrackingServer",
            ],
            "ResourceArns": ["arn:aws:s3:::b/k", "*"],
            "ContextEntries": [
                {
                    "ContextKeyName": "aws:SourceIp",
                    "ContextKeyValues": ["10.0.0.1", "10.0.0.2"],
                    "ContextKeyType": "ipList",
                },
                {
                    "ContextKeyName": "aws:MultiFactorAuthPresent",
                    "ContextKeyValues": ["true"],
                    "ContextKeyType": "boolean",
                },
            ],
            "MaxItems": 1000,
        },
    ),
    "CreatePolicyVersion": (
        "iam",
        {"PolicyArn": POLICY_ARN, "PolicyDocument": POLICY, "SetAsDefault": False},
    ),
    "PutAccountProperties": ("iam", {"Properties": {"Feature-A": "on", "b/c": "x=y&z"}}),
    "AssumeRole": (
        "sts",
        {
            "RoleArn": ROLE_ARN,
            "RoleSessionName": "bob@example.com",
            "PolicyArns": [{"arn": POLICY_ARN}, {"arn": f"arn:aws:iam::{ACCOUNT}:policy/other"}],
            "DurationSeconds": 3600,
            "Tags": TAGS[:1],
            "TransitiveTagKeys": ["team"],
            "ExternalId": "ext-id",
        },
    ),
}


@pytest.mark.parametrize("operation", REQUESTS)
def test_botocore_requests_parse_back_to_their_params(
    protocols: dict[str, QueryProtocol], operation: str
) -> None:
    service, params = REQUESTS[operation]
    assert_same(parse(protocols[service], operation, params), params)


def test_botocore_routes_to_the_operation_it_serialized(iam: QueryProtocol) -> None:
    for operation in ("CreateUser", "ListUsers", "SimulatePrincipalPolicy"):
        assert iam.operation_for(client_form(iam, operation, {})).name == operation


def test_boolean_true_and_empty_lists_parse(iam: QueryProtocol) -> None:
    version = {"PolicyArn": POLICY_ARN, "PolicyDocument": POLICY, "SetAsDefault": True}
    assert_same(parse(iam, "CreatePolicyVersion", version), version)
    untagged = {"UserName": "bob", "Tags": []}
    assert_same(parse(iam, "CreateUser", untagged), untagged)


def test_operation_without_input_parses_to_nothing(iam: QueryProtocol) -> None:
    form = {"Action": "GetAccountSummary", "Version": "2010-05-08", "Stray": "ignored"}
    assert iam.parse_input(iam.operation_for(form), form) == {}


def test_unknown_parameters_are_ignored(iam: QueryProtocol) -> None:
    form = client_form(iam, "GetUser", {"UserName": "bob"}) | {"Unknown.member.1": "x"}
    assert iam.parse_input(iam.operation_for(form), form) == {"UserName": "bob"}


def test_a_name_of_many_dots_costs_no_more_than_its_length(iam: QueryProtocol) -> None:
    # Every prefix of such a name kept in a set cost the square of its length (1 s at 30,000).
    form = client_form(iam, "GetUser", {"UserName": "bob"}) | {"." * 1_000_000: "x"}
    started = time.monotonic()
    assert iam.parse_input(iam.operation_for(form), form) == {"UserName": "bob"}
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            {"Action": "NoSuchAction", "Version": "2010-05-08"},
            "NoSuchAction for version 2010-05-08",
        ),
        ({"Version": "2010-05-08"}, " for version 2010-05-08"),
        ({"Action": "", "Version": "2010-05-08"}, " for version 2010-05-08"),
        ({"Action": "ListUsers"}, "ListUsers for version NO_VERSION_SPECIFIED"),
        ({"Action": "ListUsers", "Version": ""}, "ListUsers for version "),
        ({"Action": "ListUsers", "Version": "2011-06-15"}, "ListUsers for version 2011-06-15"),
        ({"Action": "AssumeRole", "Version": "2010-05-08"}, "AssumeRole for version 2010-05-08"),
    ],
)
def test_unknown_action_or_version_is_invalid_action(
    iam: QueryProtocol, form: dict[str, str], message: str
) -> None:
    with pytest.raises(AwsError) as caught:
        iam.operation_for(form)
    assert caught.value.code == "InvalidAction"
    assert caught.value.message == f"Could not find operation {message}"
    assert iam.error_status(caught.value) == 400


def test_parse_form_keeps_the_first_of_repeated_names_and_blank_values() -> None:
    body = b"Action=ListUsers&Action=DeleteUser&Version=2010-05-08&Tags=&Marker=a+b%2Bc%26d"
    assert parse_form(body) == {
        "Action": "ListUsers",
        "Version": "2010-05-08",
        "Tags": "",
        "Marker": "a b+c&d",
    }


def test_only_query_services_are_accepted() -> None:
    with pytest.raises(ValueError, match="query protocol"):
        QueryProtocol(load_service_model("sagemaker"))


# --- validation --------------------------------------------------------------------------------


def validation_error(protocol: QueryProtocol, operation: str, params: dict[str, Any]) -> str:
    error = rejection(protocol, operation, params)
    assert error.code == "ValidationError"
    assert protocol.error_status(error) == 400
    return error.message


def test_user_name_too_long(iam: QueryProtocol) -> None:
    name = "b" * 65
    assert validation_error(iam, "CreateUser", {"UserName": name}) == (
        f"1 validation error detected: Value '{name}' at 'userName' failed to satisfy "
        "constraint: Member must have length less than or equal to 64"
    )


def test_user_name_pattern(iam: QueryProtocol) -> None:
    assert validation_error(iam, "GetUser", {"UserName": "bob smith"}) == (
        "1 validation error detected: Value 'bob smith' at 'userName' failed to satisfy "
        r"constraint: Member must satisfy regular expression pattern: [\w+=,.@-]+"
    )


@pytest.mark.parametrize(
    ("max_items", "constraint"),
    [(0, "greater than or equal to 1"), (1001, "less than or equal to 1000")],
)
def test_max_items_range(iam: QueryProtocol, max_items: int, constraint: str) -> None:
    assert validation_error(iam, "ListUsers", {"MaxItems": max_items}) == (
        f"1 validation error detected: Value '{max_items}' at 'maxItems' failed to satisfy "
        f"constraint: Member must have value {constraint}"
    )


def test_missing_required_members(iam: QueryProtocol, sts: QueryProtocol) -> None:
    assert validation_error(iam, "CreateUser", {}) == (
        "1 validation error detected: Value null at 'userName' failed to satisfy constraint: "
        "Member must not be null"
    )
    assert validation_error(sts, "AssumeRole", {"RoleSessionName": "session"}) == (
        "1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: "
        "Member must not be null"
    )
    assert validation_error(sts, "AssumeRole", {}).startswith("2 validation errors detected: ")


def test_nested_violations_name_the_item(iam: QueryProtocol) -> None:
    tags = [{"Key": "ok", "Value": "v"}, {"Key": "k" * 129, "Value": "v"}]
    assert "at 'tags.2.member.key' failed" in validation_error(
        iam, "CreateUser", {"UserName": "bob", "Tags": tags}
    )


def test_sts_duration_range(sts: QueryProtocol) -> None:
    params = {"RoleArn": ROLE_ARN, "RoleSessionName": "session", "DurationSeconds": 10}
    assert validation_error(sts, "AssumeRole", params) == (
        "1 validation error detected: Value '10' at 'durationSeconds' failed to satisfy "
        "constraint: Member must have value greater than or equal to 900"
    )


@pytest.mark.parametrize(
    ("operation", "form", "message"),
    [
        ("ListUsers", {"MaxItems": "ten"}, "STRING_VALUE can not be converted to an Integer"),
        ("ListUsers", {"MaxItems": "2.5"}, "STRING_VALUE can not be converted to an Integer"),
        (
            "ListUsers",
            {"MaxItems": "4294967296"},
            "NUMBER_VALUE can not be converted to an Integer",
        ),
        (
            "CreatePolicyVersion",
            {"PolicyArn": POLICY_ARN, "PolicyDocument": "{}", "SetAsDefault": "yes"},
            "STRING_VALUE can not be converted to a Boolean",
        ),
    ],
)
def test_values_that_are_not_their_type_are_rejected(
    iam: QueryProtocol, operation: str, form: dict[str, str], message: str
) -> None:
    form = {"Action": operation, "Version": "2010-05-08", **form}
    with pytest.raises(AwsError) as caught:
        iam.parse_input(iam.operation_for(form), form)
    assert caught.value.code == "SerializationException"
    assert caught.value.message.startswith(message)
    assert iam.error_status(caught.value) == 400


# --- answers -----------------------------------------------------------------------------------


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "Path": "/team/",
        "UserName": name,
        "UserId": f"AIDA{name.upper():0<17}",
        "Arn": f"arn:aws:iam::{ACCOUNT}:user/team/{name}",
        "CreateDate": CREATED,
        **extra,
    }


STATEMENT = {
    "SourcePolicyId": "inline-1",
    "SourcePolicyType": "user",
    "StartPosition": {"Line": 3, "Column": 5},
    "EndPosition": {"Line": 9, "Column": 6},
}

ANSWERS = {
    "CreateUser": (
        "iam",
        {
            "User": user(
                "bob",
                PermissionsBoundary={
                    "PermissionsBoundaryType": "Policy",
                    "PermissionsBoundaryArn": POLICY_ARN,
                },
                Tags=TAGS,
            )
        },
    ),
    "GetUser": (
        "iam",
        {"User": user("bob", PasswordLastUsed=datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=UTC))},
    ),
    "ListUsers": (
        "iam",
        {"Users": [user("alice"), user("bob"), user("carol")], "IsTruncated": True, "Marker": "m2"},
    ),
    "CreateAccessKey": (
        "iam",
        {
            "AccessKey": {
                "UserName": "bob",
                "AccessKeyId": "AKIAIOSFODNN7EXAMPLE",
                "Status": "Active",
                "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "CreateDate": CREATED,
            }
        },
    ),
    "ListAccessKeys": (
        "iam",
        {
            "AccessKeyMetadata": [
                {
                    "UserName": "bob",
                    "AccessKeyId": "AKIA1",
                    "Status": "Active",
                    "CreateDate": CREATED,
                },
                {"UserName": "bob", "AccessKeyId": "AKIA2", "Status": "Inactive"},
            ],
            "IsTruncated": False,
        },
    ),
    "GetUserPolicy": (
        "iam",
        # IAM answers policy documents URL-encoded; botocore's after-call hook decodes them.
        {"UserName": "bob", "PolicyName": "inline-1", "PolicyDocument": quote(POLICY)},
    ),
    "ListAttachedUserPolicies": (
        "iam",
        {
            "AttachedPolicies": [
                {"PolicyName": "read-only", "PolicyArn": POLICY_ARN},
                {"PolicyName": "<&>", "PolicyArn": f"{POLICY_ARN}-2"},
            ],
            "IsTruncated": False,
        },
    ),
    "SimulatePrincipalPolicy": (
        "iam",
        {
            "EvaluationResults": [
                {
                    "EvalActionName": "s3:GetObject",
                    "EvalResourceName": "arn:aws:s3:::b/k",
                    "EvalDecision": "allowed",
                    "MatchedStatements": [STATEMENT],
                    "MissingContextValues": [],
                    "OrganizationsDecisionDetail": {"AllowedByOrganizations": True},
                    "PermissionsBoundaryDecisionDetail": {"AllowedByPermissionsBoundary": False},
                    "EvalDecisionDetails": {
                        "IAM Policy": "allowed",
                        "Permissions Boundary": "implicitDeny",
                    },
                    "ResourceSpecificResults": [
                        {
                            "EvalResourceName": "arn:aws:s3:::b/k",
                            "EvalResourceDecision": "allowed",
                            "MatchedStatements": [STATEMENT, STATEMENT],
                            "MissingContextValues": ["aws:SourceIp"],
                            "EvalDecisionDetails": {"IAM Policy": "allowed"},
                        }
                    ],
                },
                {
                    "EvalActionName": "iam:ListUsers",
                    "EvalResourceName": "*",
                    "EvalDecision": "implicitDeny",
                },
            ],
            "IsTruncated": True,
            "Marker": "next",
        },
    ),
    "GetCallerIdentity": (
        "sts",
        {"UserId": "AIDAEXAMPLE", "Account": ACCOUNT, "Arn": USER_ARN},
    ),
    "AssumeRole": (
        "sts",
        {
            "Credentials": {
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "secret",
                "SessionToken": "token",
                "Expiration": datetime(2024, 5, 6, 8, 8, 9, tzinfo=UTC),
            },
            "AssumedRoleUser": {"AssumedRoleId": "AROAEXAMPLE:s", "Arn": f"{ROLE_ARN}/s"},
            "PackedPolicySize": 7,
            "SourceIdentity": "bob",
        },
    ),
}


@pytest.mark.parametrize("operation", ANSWERS)
def test_answers_parse_in_botocore_to_their_data(
    protocols: dict[str, QueryProtocol], operation: str
) -> None:
    service, data = ANSWERS[operation]
    assert_same(client_output(protocols[service], operation, data), data)


def test_answer_layout(sts: QueryProtocol) -> None:
    model = sts.service_model.operation_model("GetCallerIdentity")
    body = sts.serialize_output(model, {"Account": ACCOUNT, "Ignored": "x"}, "rid")
    assert body == (
        b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<GetCallerIdentityResult><Account>123456789012</Account></GetCallerIdentityResult>"
        b"<ResponseMetadata><RequestId>rid</RequestId></ResponseMetadata>"
        b"</GetCallerIdentityResponse>"
    )


def test_map_answers_are_entries(iam: QueryProtocol) -> None:
    model = iam.service_model.operation_model("GetAccountSummary")
    body = iam.serialize_output(model, {"SummaryMap": {"Users": 3, "Groups": 0}}, "rid")
    assert (
        b"<SummaryMap><entry><key>Users</key><value>3</value></entry>"
        b"<entry><key>Groups</key><value>0</value></entry></SummaryMap>"
    ) in body
    assert_same(
        client_output(iam, "GetAccountSummary", {"SummaryMap": {"Users": 3, "Groups": 0}}),
        {"SummaryMap": {"Users": 3, "Groups": 0}},
    )


def test_answer_timestamps_are_utc_with_z(iam: QueryProtocol) -> None:
    model = iam.service_model.operation_model("GetUser")
    plus_two = timezone(timedelta(hours=2))
    aware = user("bob", CreateDate=datetime(2024, 5, 6, 9, 8, 9, tzinfo=plus_two))
    naive = user("bob", CreateDate=datetime(2024, 5, 6, 7, 8, 9))
    for data in (aware, naive):
        assert b"<CreateDate>2024-05-06T07:08:09Z</CreateDate>" in iam.serialize_output(
            model, {"User": data}, "rid"
        )


def test_empty_list_answer_parses_as_empty(iam: QueryProtocol) -> None:
    data = {"Users": [], "IsTruncated": False}
    assert_same(client_output(iam, "ListUsers", data), data)


def test_operation_without_output_answers_only_metadata(iam: QueryProtocol) -> None:
    model = iam.service_model.operation_model("AttachUserPolicy")
    assert iam.serialize_output(model, {}, "rid") == (
        b'<AttachUserPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
        b"<ResponseMetadata><RequestId>rid</RequestId></ResponseMetadata>"
        b"</AttachUserPolicyResponse>"
    )
    assert client_output(iam, "AttachUserPolicy", {}) == {}


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "fault"),
    [
        (AwsError("NoSuchEntity", "The user with name bob cannot be found."), 404, "Sender"),
        (AwsError("EntityAlreadyExists", "User with name bob already exists."), 409, "Sender"),
        (AwsError("MalformedPolicyDocument", "Syntax errors in policy."), 400, "Sender"),
        (AwsError("ValidationError", "1 validation error detected: ..."), 400, "Sender"),
        (AwsError("ValidationException", "1 validation error detected: ..."), 400, "Sender"),
        (AwsError("ServiceFailure", "Try again.", 400), 500, "Receiver"),
        (AwsError("AccessDenied", "Not authorized.", 403), 403, "Sender"),
        (AwsError("InternalFailure", "Oops.", 500), 500, "Receiver"),
    ],
)
def test_errors_parse_in_botocore(
    iam: QueryProtocol, error: AwsError, status: int, fault: str
) -> None:
    assert client_error(iam, error) == (
        status,
        {"Type": fault, "Code": error.code, "Message": error.message},
    )


def test_error_codes_are_modeled_per_service(sts: QueryProtocol) -> None:
    # NoSuchEntity is IAM's; STS knows nothing of it.
    assert sts.error_status(AwsError("NoSuchEntity", "m")) == 400
    assert sts.error_status(AwsError("IDPRejectedClaim", "m")) == 403


def test_error_messages_survive_xml(iam: QueryProtocol) -> None:
    error = AwsError("ValidationError", "Value '<a&b>\"\x01\x00' at 'userName' ...")
    _, parsed = client_error(iam, error)
    assert parsed["Message"] == "Value '<a&b>\"\ufffd\ufffd' at 'userName' ..."


def test_error_layout(iam: QueryProtocol) -> None:
    assert iam.error_body(AwsError("NoSuchEntity", "gone"), "rid") == (
        b'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
        b"<Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>gone</Message></Error>"
        b"<RequestId>rid</RequestId></ErrorResponse>"
    )


# --- shapes IAM and STS do not use -------------------------------------------------------------

ALL_KINDS = {
    "type": "structure",
    "members": {
        "Flat": {"shape": "FlatNamedList", "locationName": "Flattened"},
        "FlatPlain": {"shape": "FlatList"},
        "Named": {"shape": "NamedList"},
        "Renamed": {"shape": "String", "locationName": "Other"},
        "Attributes": {"shape": "FlatMap"},
        "Counts": {"shape": "Map"},
        "When": {"shape": "Timestamp"},
        "Data": {"shape": "Blob"},
        "Ratio": {"shape": "Double"},
        "Big": {"shape": "Long"},
        "Flag": {"shape": "Boolean"},
        "Nothing": {"shape": "List"},
        "Tree": {"shape": "Node"},
    },
}
DEMO_MODEL = {
    "metadata": {
        "apiVersion": "2020-01-01",
        "protocol": "query",
        "xmlNamespace": "https://demo.example/doc/2020-01-01/",
        "serviceId": "Demo",
        "endpointPrefix": "demo",
    },
    "operations": {
        "Echo": {
            "name": "Echo",
            "http": {"method": "POST", "requestUri": "/"},
            "input": {"shape": "AllKinds"},
            "output": {"shape": "AllKinds", "resultWrapper": "EchoResult"},
        }
    },
    "shapes": {
        "AllKinds": ALL_KINDS,
        "FlatNamedList": {
            "type": "list",
            "member": {"shape": "String", "locationName": "Item"},
            "flattened": True,
        },
        "FlatList": {"type": "list", "member": {"shape": "String"}, "flattened": True},
        "NamedList": {"type": "list", "member": {"shape": "Long", "locationName": "Thing"}},
        "List": {"type": "list", "member": {"shape": "String"}},
        "FlatMap": {
            "type": "map",
            "key": {"shape": "String", "locationName": "Name"},
            "value": {"shape": "String", "locationName": "Val"},
            "flattened": True,
        },
        "Map": {"type": "map", "key": {"shape": "String"}, "value": {"shape": "Long"}},
        "Node": {
            "type": "structure",
            "members": {"Name": {"shape": "String"}, "Child": {"shape": "Node"}},
        },
        "String": {"type": "string"},
        "Timestamp": {"type": "timestamp"},
        "Blob": {"type": "blob"},
        "Double": {"type": "double"},
        "Long": {"type": "long"},
        "Boolean": {"type": "boolean"},
    },
}
ALL_KINDS_PARAMS = {
    "Flat": ["a", "b"],
    "FlatPlain": ["c"],
    "Named": [1, 2**40],
    "Renamed": "r",
    "Attributes": {"x": "1", "y": "2"},
    "Counts": {"k": -3},
    "When": datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=UTC),
    "Data": b"\x00\xffbytes",
    "Ratio": 0.25,
    "Big": 2**62,
    "Flag": True,
    "Tree": {"Name": "root", "Child": {"Name": "leaf"}},
}


@pytest.fixture(scope="module")
def demo() -> QueryProtocol:
    return QueryProtocol(ServiceModel(DEMO_MODEL, service_name="demo"))


def test_flattened_and_renamed_members_are_read_where_botocore_writes_them(
    demo: QueryProtocol,
) -> None:
    form = client_form(demo, "Echo", ALL_KINDS_PARAMS)
    assert {"Item.1", "FlatPlain.1", "Named.Thing.2", "Other", "Attributes.1.Val"} <= set(form)
    assert_same(demo.parse_input(demo.operation_for(form), form), ALL_KINDS_PARAMS)


def test_flattened_and_renamed_members_are_written_where_botocore_reads_them(
    demo: QueryProtocol,
) -> None:
    data = {**ALL_KINDS_PARAMS, "Nothing": []}
    assert_same(client_output(demo, "Echo", data), data)
