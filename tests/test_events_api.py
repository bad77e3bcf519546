"""EventBridge's management API through the real boto3 events client: rules, targets,
connections, API destinations, TestEventPattern, their refusals and their authorization."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from support.aws import error_of, unique
from support.daemon import Daemon
from support.iam import as_key, policy

ACCOUNT = "123456789012"
REGION = "us-east-1"
PATTERN = json.dumps({"source": ["com.example"], "detail-type": ["order"]})


def event(**overrides: Any) -> str:
    """An event with the members TestEventPattern insists on."""
    base = {
        "id": str(uuid.uuid4()),
        "account": ACCOUNT,
        "source": "com.example",
        "time": "2024-01-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail-type": "order",
        "detail": {"amount": 150},
    }
    return json.dumps({**base, **overrides})


def api_destination(daemon: Daemon, url: str = "http://127.0.0.1:9/hook") -> str:
    """A new API destination (and its connection); its ARN."""
    events = daemon.client("events")
    name = unique("dest")
    connection = events.create_connection(
        Name=name,
        AuthorizationType="API_KEY",
        AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": "k"}},
    )
    return str(
        events.create_api_destination(
            Name=name,
            ConnectionArn=connection["ConnectionArn"],
            InvocationEndpoint=url,
            HttpMethod="POST",
        )["ApiDestinationArn"]
    )


def db_bytes(daemon: Daemon) -> bytes:
    """Everything the control database holds on disk, the SQLite WAL included."""
    return b"".join(path.read_bytes() for path in sorted(daemon.data_dir.glob("mlfleet.db*")))


# --- rules ----------------------------------------------------------------------------------------


def test_rule_lifecycle(daemon: Daemon) -> None:
    events = daemon.client("events")
    name = unique("rule")
    arn = events.put_rule(Name=name, EventPattern=PATTERN, Description="orders")["RuleArn"]
    assert arn == f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{name}"

    described = events.describe_rule(Name=name)
    assert {k: described[k] for k in ("Name", "Arn", "EventPattern", "State", "EventBusName")} == {
        "Name": name,
        "Arn": arn,
        "EventPattern": PATTERN,
        "State": "ENABLED",
        "EventBusName": "default",
    }
    assert described["Description"] == "orders" and described["CreatedBy"] == ACCOUNT

    # PutRule again replaces the rule, as in AWS: what it leaves out is gone.
    other = json.dumps({"source": ["com.other"]})
    assert events.put_rule(Name=name, EventPattern=other, State="DISABLED")["RuleArn"] == arn
    described = events.describe_rule(Name=name)
    assert described["EventPattern"] == other and described["State"] == "DISABLED"
    assert "Description" not in described

    events.enable_rule(Name=name)
    assert events.describe_rule(Name=name)["State"] == "ENABLED"
    events.disable_rule(Name=name, EventBusName="default")
    assert events.describe_rule(Name=name)["State"] == "DISABLED"

    events.delete_rule(Name=name)
    with pytest.raises(ClientError) as exc:
        events.describe_rule(Name=name)
    assert error_of(exc) == (
        "ResourceNotFoundException",
        f"Rule {name} does not exist on EventBus default.",
    )
    with pytest.raises(ClientError) as exc:
        events.enable_rule(Name=name)
    assert error_of(exc)[0] == "ResourceNotFoundException"
    events.delete_rule(Name=name)  # deleting what is not there succeeds, as in AWS


def test_list_rules_by_prefix_in_pages(daemon: Daemon) -> None:
    events = daemon.client("events")
    prefix = unique("page")
    names = [f"{prefix}-{n}" for n in range(5)]
    for name in names:
        events.put_rule(Name=name, EventPattern=PATTERN)

    seen: list[str] = []
    request: dict[str, Any] = {"NamePrefix": prefix, "Limit": 2}
    while True:
        page = events.list_rules(**request)
        assert len(page["Rules"]) <= 2
        seen += [rule["Name"] for rule in page["Rules"]]
        if "NextToken" not in page:
            break
        request["NextToken"] = page["NextToken"]
    assert seen == names
    listed = events.list_rules(NamePrefix=names[3])["Rules"]
    assert [(r["Name"], r["State"], r["EventBusName"]) for r in listed] == [
        (names[3], "ENABLED", "default")
    ]
    with pytest.raises(ClientError) as exc:
        events.list_rules(NextToken="!!not a token!!")
    assert error_of(exc)[0] == "ValidationException"


def test_put_rule_refusals(daemon: Daemon) -> None:
    events = daemon.client("events")
    name = unique("refused")

    with pytest.raises(ClientError) as exc:
        events.put_rule(Name=name, EventPattern='{"source": "not-a-list"}')
    code, message = error_of(exc)
    assert code == "InvalidEventPatternException" and message

    with pytest.raises(ClientError) as exc:
        events.put_rule(Name=name, EventPattern="{not json")
    assert error_of(exc)[0] == "InvalidEventPatternException"

    with pytest.raises(ClientError) as exc:
        events.put_rule(Name=name, ScheduleExpression="rate(5 minutes)")
    code, message = error_of(exc)
    assert code == "ValidationException" and "not supported by mlfleet" in message

    with pytest.raises(ClientError) as exc:
        events.put_rule(Name=name)
    assert error_of(exc) == ("ValidationException", "Parameter(s) EventPattern must be specified.")

    with pytest.raises(ClientError) as exc:
        events.put_rule(Name=name, EventPattern=PATTERN, EventBusName="orders")
    assert error_of(exc) == ("ResourceNotFoundException", "Event bus orders does not exist.")
    with pytest.raises(ClientError) as exc:
        events.list_rules(EventBusName="orders")
    assert error_of(exc)[0] == "ResourceNotFoundException"

    # Nothing was created by the refused calls; the default bus can be named by its ARN.
    with pytest.raises(ClientError):
        events.describe_rule(Name=name)
    bus_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"
    events.put_rule(Name=name, EventPattern=PATTERN, EventBusName=bus_arn)
    assert events.describe_rule(Name=name, EventBusName=bus_arn)["Name"] == name
    events.delete_rule(Name=name)


# --- targets --------------------------------------------------------------------------------------


def test_targets_are_stored_whole_and_listed(daemon: Daemon) -> None:
    events = daemon.client("events")
    destination = api_destination(daemon)
    rule = unique("targets")
    events.put_rule(Name=rule, EventPattern=PATTERN)
    targets = [
        {
            "Id": "transformed",
            "Arn": destination,
            "InputTransformer": {
                "InputPathsMap": {"amount": "$.detail.amount"},
                "InputTemplate": '{"amount": <amount>}',
            },
            "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 120},
            "DeadLetterConfig": {"Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:dlq"},
        },
        {"Id": "constant", "Arn": destination, "Input": '{"fixed": true}'},
        {"Id": "path", "Arn": destination, "InputPath": "$.detail"},
    ]
    put = events.put_targets(Rule=rule, Targets=targets)
    assert put["FailedEntryCount"] == 0 and put["FailedEntries"] == []
    by_id = {t["Id"]: t for t in targets}
    assert events.list_targets_by_rule(Rule=rule)["Targets"] == [
        by_id["constant"], by_id["path"], by_id["transformed"]
    ]  # fmt: skip

    # Putting an existing id replaces that target.
    events.put_targets(Rule=rule, Targets=[{"Id": "path", "Arn": destination}])
    page = events.list_targets_by_rule(Rule=rule, Limit=2)
    assert [t["Id"] for t in page["Targets"]] == ["constant", "path"]
    assert page["Targets"][1] == {"Id": "path", "Arn": destination}
    rest = events.list_targets_by_rule(Rule=rule, NextToken=page["NextToken"])
    assert [t["Id"] for t in rest["Targets"]] == ["transformed"] and "NextToken" not in rest

    removed = events.remove_targets(Rule=rule, Ids=["constant", "never-there"])
    assert removed["FailedEntryCount"] == 0
    assert [t["Id"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]] == [
        "path",
        "transformed",
    ]

    with pytest.raises(ClientError) as exc:
        events.delete_rule(Name=rule)
    assert error_of(exc) == ("ValidationException", "Rule can't be deleted since it has targets.")
    events.delete_rule(Name=rule, Force=True)
    with pytest.raises(ClientError) as exc:
        events.list_targets_by_rule(Rule=rule)
    assert error_of(exc)[0] == "ResourceNotFoundException"


def test_bad_targets_fail_alone(daemon: Daemon) -> None:
    events = daemon.client("events")
    destination = api_destination(daemon)
    rule = unique("bad-targets")
    events.put_rule(Name=rule, EventPattern=PATTERN)
    gone = destination.rsplit("/", 2)[0] + f"/{unique('gone')}/0000-1111"
    put = events.put_targets(
        Rule=rule,
        Targets=[
            {"Id": "good", "Arn": destination},
            {"Id": "queue", "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders"},
            {"Id": "lambda", "Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f"},
            {"Id": "gone", "Arn": gone},
            {"Id": "both", "Arn": destination, "Input": "{}", "InputPath": "$.detail"},
            {"Id": "not-json", "Arn": destination, "Input": "{oops"},
        ],
    )
    assert put["FailedEntryCount"] == 5
    failed = {entry["TargetId"]: entry for entry in put["FailedEntries"]}
    assert set(failed) == {"queue", "lambda", "gone", "both", "not-json"}
    assert failed["queue"]["ErrorCode"] == "ValidationException"
    assert "not supported by mlfleet" in failed["queue"]["ErrorMessage"]
    assert "API destinations" in failed["queue"]["ErrorMessage"]
    assert failed["gone"]["ErrorCode"] == "ResourceNotFoundException"
    assert "Only one of Input, InputPath" in failed["both"]["ErrorMessage"]
    assert [t["Id"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]] == ["good"]

    with pytest.raises(ClientError) as exc:
        events.put_targets(Rule=unique("no-such-rule"), Targets=[{"Id": "a", "Arn": destination}])
    assert error_of(exc)[0] == "ResourceNotFoundException"
    events.delete_rule(Name=rule, Force=True)


def test_at_most_five_targets_per_rule(daemon: Daemon) -> None:
    events = daemon.client("events")
    destination = api_destination(daemon)
    rule = unique("five")
    events.put_rule(Name=rule, EventPattern=PATTERN)
    events.put_targets(Rule=rule, Targets=[{"Id": f"t{n}", "Arn": destination} for n in range(4)])

    with pytest.raises(ClientError) as exc:
        events.put_targets(
            Rule=rule, Targets=[{"Id": "t4", "Arn": destination}, {"Id": "t5", "Arn": destination}]
        )
    code, message = error_of(exc)
    assert code == "LimitExceededException" and "5 targets" in message
    assert len(events.list_targets_by_rule(Rule=rule)["Targets"]) == 4  # nothing half-done

    # Replacing existing targets is no new target; the fifth still fits.
    events.put_targets(
        Rule=rule, Targets=[{"Id": "t0", "Arn": destination}, {"Id": "t4", "Arn": destination}]
    )
    assert len(events.list_targets_by_rule(Rule=rule)["Targets"]) == 5
    events.delete_rule(Name=rule, Force=True)


# --- connections ----------------------------------------------------------------------------------


def test_connections_keep_their_secrets(daemon: Daemon) -> None:
    events = daemon.client("events")
    password, api_key, header = (f"secret-{uuid.uuid4().hex}" for _ in range(3))
    basic, keyed = unique("basic"), unique("keyed")

    created = events.create_connection(
        Name=basic,
        Description="basic auth",
        AuthorizationType="BASIC",
        AuthParameters={
            "BasicAuthParameters": {"Username": "robot", "Password": password},
            "InvocationHttpParameters": {
                "HeaderParameters": [
                    {"Key": "X-Team", "Value": "ml", "IsValueSecret": False},
                    {"Key": "X-Token", "Value": header, "IsValueSecret": True},
                ]
            },
        },
    )
    assert created["ConnectionState"] == "AUTHORIZED"
    assert created["ConnectionArn"].startswith(
        f"arn:aws:events:{REGION}:{ACCOUNT}:connection/{basic}/"
    )
    events.create_connection(
        Name=keyed,
        AuthorizationType="API_KEY",
        AuthParameters={
            "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": api_key}
        },
    )

    described = events.describe_connection(Name=basic)
    assert described["ConnectionArn"] == created["ConnectionArn"]
    assert described["AuthorizationType"] == "BASIC" and described["Description"] == "basic auth"
    assert described["AuthParameters"] == {
        "BasicAuthParameters": {"Username": "robot"},
        "InvocationHttpParameters": {
            "HeaderParameters": [
                {"Key": "X-Team", "Value": "ml", "IsValueSecret": False},
                {"Key": "X-Token", "IsValueSecret": True},
            ]
        },
    }
    assert events.describe_connection(Name=keyed)["AuthParameters"] == {
        "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key"}
    }

    # An update merges: a new key value, the key name kept.
    new_key = f"secret-{uuid.uuid4().hex}"
    updated = events.update_connection(
        Name=keyed, AuthParameters={"ApiKeyAuthParameters": {"ApiKeyValue": new_key}}
    )
    assert updated["ConnectionState"] == "AUTHORIZED"
    assert events.describe_connection(Name=keyed)["AuthParameters"] == {
        "ApiKeyAuthParameters": {"ApiKeyName": "x-api-key"}
    }

    # Neither the tables nor the audit trail hold a secret in the clear.
    stored = db_bytes(daemon)
    for secret in (password, api_key, header, new_key):
        assert secret.encode() not in stored
    trail = daemon.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "CreateConnection"}]
    )
    records = [json.loads(e["CloudTrailEvent"]) for e in trail["Events"]]
    mine = next(r for r in records if r["requestParameters"]["name"] == basic)
    auth = mine["requestParameters"]["authParameters"]
    assert auth["basicAuthParameters"]["password"] == "HIDDEN_DUE_TO_SECURITY_REASONS"
    assert auth["basicAuthParameters"]["username"] == "robot"

    names = {c["Name"]: c for c in events.list_connections(NamePrefix=basic)["Connections"]}
    assert list(names) == [basic] and names[basic]["AuthorizationType"] == "BASIC"
    assert "AuthParameters" not in names[basic]

    deleted = events.delete_connection(Name=basic)
    assert deleted["ConnectionArn"] == created["ConnectionArn"]
    with pytest.raises(ClientError) as exc:
        events.describe_connection(Name=basic)
    assert error_of(exc) == (
        "ResourceNotFoundException",
        f"Failed to describe the connection(s). Connection '{basic}' does not exist.",
    )
    events.delete_connection(Name=keyed)


def test_a_refused_secret_is_not_recorded_either(daemon: Daemon) -> None:
    # The value breaks the model's pattern (a control character): the refusal echoes it to
    # the caller, as AWS does, but the audit trail must not keep it.
    marker = f"leak-{uuid.uuid4().hex}"
    with pytest.raises(ClientError) as exc:
        daemon.client("events").create_connection(
            Name=unique("refused"),
            AuthorizationType="API_KEY",
            AuthParameters={
                "ApiKeyAuthParameters": {"ApiKeyName": "k", "ApiKeyValue": f"{marker}\x01"}
            },
        )
    assert error_of(exc)[0] == "ValidationException"
    assert marker.encode() not in db_bytes(daemon)


def test_connection_refusals(daemon: Daemon) -> None:
    events = daemon.client("events")
    name = unique("conn")

    with pytest.raises(ClientError) as exc:
        events.create_connection(
            Name=name,
            AuthorizationType="OAUTH_CLIENT_CREDENTIALS",
            AuthParameters={
                "OAuthParameters": {
                    "ClientParameters": {"ClientID": "id", "ClientSecret": "s"},
                    "AuthorizationEndpoint": "https://auth.example.com/token",
                    "HttpMethod": "POST",
                }
            },
        )
    code, message = error_of(exc)
    assert code == "ValidationException"
    assert "OAUTH_CLIENT_CREDENTIALS is not supported by mlfleet" in message

    with pytest.raises(ClientError) as exc:  # the credentials of another type
        events.create_connection(
            Name=name,
            AuthorizationType="BASIC",
            AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "k", "ApiKeyValue": "v"}},
        )
    assert error_of(exc)[0] == "ValidationException"

    with pytest.raises(ClientError) as exc:  # not an AuthorizationType of the model
        events.create_connection(Name=name, AuthorizationType="KERBEROS", AuthParameters={})
    assert error_of(exc)[0] == "ValidationException"

    basic = {"BasicAuthParameters": {"Username": "u", "Password": "p"}}
    events.create_connection(Name=name, AuthorizationType="BASIC", AuthParameters=basic)
    with pytest.raises(ClientError) as exc:
        events.create_connection(Name=name, AuthorizationType="BASIC", AuthParameters=basic)
    assert error_of(exc) == ("ResourceAlreadyExistsException", f"Connection {name} already exists.")

    # Switching type needs the new type's full credentials.
    with pytest.raises(ClientError) as exc:
        events.update_connection(
            Name=name,
            AuthorizationType="API_KEY",
            AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "k"}},
        )
    assert error_of(exc)[0] == "ValidationException"
    events.update_connection(
        Name=name,
        AuthorizationType="API_KEY",
        AuthParameters={"ApiKeyAuthParameters": {"ApiKeyName": "k", "ApiKeyValue": "v"}},
    )
    assert events.describe_connection(Name=name)["AuthorizationType"] == "API_KEY"
    events.delete_connection(Name=name)
    with pytest.raises(ClientError) as exc:
        events.delete_connection(Name=name)
    assert error_of(exc)[0] == "ResourceNotFoundException"


# --- API destinations -----------------------------------------------------------------------------


def test_api_destination_lifecycle(daemon: Daemon) -> None:
    events = daemon.client("events")
    name = unique("dest")
    connection = events.create_connection(
        Name=name,
        AuthorizationType="BASIC",
        AuthParameters={"BasicAuthParameters": {"Username": "u", "Password": "p"}},
    )["ConnectionArn"]

    created = events.create_api_destination(
        Name=name,
        Description="a receiver beside the daemon",
        ConnectionArn=connection,
        InvocationEndpoint="http://127.0.0.1:8080/hook",
        HttpMethod="POST",
    )
    arn = created["ApiDestinationArn"]
    assert arn.startswith(f"arn:aws:events:{REGION}:{ACCOUNT}:api-destination/{name}/")
    assert created["ApiDestinationState"] == "ACTIVE"

    described = events.describe_api_destination(Name=name)
    assert {k: described[k] for k in ("ApiDestinationArn", "ConnectionArn", "HttpMethod")} == {
        "ApiDestinationArn": arn,
        "ConnectionArn": connection,
        "HttpMethod": "POST",
    }
    assert described["InvocationEndpoint"] == "http://127.0.0.1:8080/hook"
    assert described["InvocationRateLimitPerSecond"] == 300
    assert described["Description"] == "a receiver beside the daemon"

    events.update_api_destination(
        Name=name, InvocationEndpoint="https://hooks.example.com/in", HttpMethod="PUT"
    )
    described = events.describe_api_destination(Name=name)
    assert described["InvocationEndpoint"] == "https://hooks.example.com/in"
    assert described["HttpMethod"] == "PUT" and described["ApiDestinationArn"] == arn

    listed = events.list_api_destinations(NamePrefix=name)["ApiDestinations"]
    assert [d["ApiDestinationArn"] for d in listed] == [arn]
    by_connection = events.list_api_destinations(ConnectionArn=connection)["ApiDestinations"]
    assert [d["Name"] for d in by_connection] == [name]

    with pytest.raises(ClientError) as exc:
        events.create_api_destination(
            Name=name, ConnectionArn=connection, InvocationEndpoint="http://x/", HttpMethod="POST"
        )
    assert error_of(exc)[0] == "ResourceAlreadyExistsException"

    events.delete_api_destination(Name=name)
    with pytest.raises(ClientError) as exc:
        events.describe_api_destination(Name=name)
    assert error_of(exc)[0] == "ResourceNotFoundException"
    events.delete_connection(Name=name)


def test_api_destination_refusals(daemon: Daemon) -> None:
    events = daemon.client("events")
    name = unique("dest")
    connection = events.create_connection(
        Name=name,
        AuthorizationType="BASIC",
        AuthParameters={"BasicAuthParameters": {"Username": "u", "Password": "p"}},
    )["ConnectionArn"]

    for endpoint in ("ftp://files.example.com/in", "not-a-url", "http:///no-host"):
        with pytest.raises(ClientError) as exc:
            events.create_api_destination(
                Name=name, ConnectionArn=connection, InvocationEndpoint=endpoint, HttpMethod="POST"
            )
        code, message = error_of(exc)
        assert code == "ValidationException" and "http://" in message, endpoint

    missing = connection.rsplit("/", 2)[0] + f"/{unique('gone')}/0000-1111"
    with pytest.raises(ClientError) as exc:
        events.create_api_destination(
            Name=name, ConnectionArn=missing, InvocationEndpoint="http://x/", HttpMethod="POST"
        )
    code, message = error_of(exc)
    assert code == "ResourceNotFoundException" and "does not exist" in message
    events.delete_connection(Name=name)


# --- TestEventPattern -----------------------------------------------------------------------------


def test_test_event_pattern(daemon: Daemon) -> None:
    events = daemon.client("events")
    pattern = json.dumps(
        {"source": ["com.example"], "detail": {"amount": [{"numeric": [">", 100]}]}}
    )
    assert events.test_event_pattern(EventPattern=pattern, Event=event())["Result"] is True
    cheap = event(detail={"amount": 5})
    assert events.test_event_pattern(EventPattern=pattern, Event=cheap)["Result"] is False
    elsewhere = event(source="com.other")
    assert events.test_event_pattern(EventPattern=pattern, Event=elsewhere)["Result"] is False

    with pytest.raises(ClientError) as exc:
        events.test_event_pattern(EventPattern=pattern, Event="{not json")
    assert error_of(exc)[0] == "ValidationException"
    with pytest.raises(ClientError) as exc:
        events.test_event_pattern(EventPattern=pattern, Event=json.dumps({"source": "x"}))
    code, message = error_of(exc)
    assert code == "ValidationException" and "detail-type" in message
    with pytest.raises(ClientError) as exc:
        events.test_event_pattern(EventPattern='{"source": 5}', Event=event())
    assert error_of(exc)[0] == "InvalidEventPatternException"


# --- authorization --------------------------------------------------------------------------------


def test_a_user_without_policies_may_not_manage_rules(daemon: Daemon) -> None:
    iam = daemon.client("iam")
    user = unique("mallory")
    user_arn = iam.create_user(UserName=user)["User"]["Arn"]
    key = iam.create_access_key(UserName=user)["AccessKey"]
    theirs = as_key(daemon, "events", key)
    rule = unique("guarded")
    rule_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"

    with pytest.raises(ClientError) as exc:
        theirs.put_rule(Name=rule, EventPattern=PATTERN)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_of(exc) == (
        "AccessDeniedException",
        f"User: {user_arn} is not authorized to perform: events:PutRule on resource: "
        f"{rule_arn} because no identity-based policy allows the events:PutRule action",
    )
    with pytest.raises(ClientError) as exc:
        theirs.list_rules()
    assert "events:ListRules on resource: *" in error_of(exc)[1]
    with pytest.raises(ClientError) as exc:
        theirs.put_events(Entries=[{"Source": "s", "DetailType": "d", "Detail": "{}"}])
    assert (
        f"events:PutEvents on resource: arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"
        in error_of(exc)[1]
    )
    with pytest.raises(ClientError) as exc:
        theirs.create_connection(
            Name="c",
            AuthorizationType="BASIC",
            AuthParameters={"BasicAuthParameters": {"Username": "u", "Password": "p"}},
        )
    assert "connection/c/* because" in error_of(exc)[1]

    # Allowed on this one rule, the user may put it, and only it.
    iam.put_user_policy(
        UserName=user,
        PolicyName="one-rule",
        PolicyDocument=policy(
            {
                "Effect": "Allow",
                "Action": ["events:PutRule", "events:DeleteRule"],
                "Resource": rule_arn,
            }
        ),
    )
    assert theirs.put_rule(Name=rule, EventPattern=PATTERN)["RuleArn"] == rule_arn
    with pytest.raises(ClientError) as exc:
        theirs.put_rule(Name=unique("other"), EventPattern=PATTERN)
    assert error_of(exc)[0] == "AccessDeniedException"
    theirs.delete_rule(Name=rule)


def test_describe_event_bus(daemon: Daemon) -> None:
    events = daemon.client("events")
    bus_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"
    for named in ({}, {"Name": "default"}, {"Name": bus_arn}):
        described = events.describe_event_bus(**named)
        assert (described["Name"], described["Arn"]) == ("default", bus_arn)
    with pytest.raises(ClientError) as exc:
        events.describe_event_bus(Name="orders")
    assert error_of(exc) == ("ResourceNotFoundException", "Event bus orders does not exist.")

    # Authorized as events:DescribeEventBus on the bus, and audited as a read.
    iam = daemon.client("iam")
    user = unique("bus-reader")
    iam.create_user(UserName=user)
    theirs = as_key(daemon, "events", iam.create_access_key(UserName=user)["AccessKey"])
    with pytest.raises(ClientError) as exc:
        theirs.describe_event_bus()
    assert f"events:DescribeEventBus on resource: {bus_arn}" in error_of(exc)[1]
    iam.put_user_policy(
        UserName=user,
        PolicyName="see-the-bus",
        PolicyDocument=policy(
            {"Effect": "Allow", "Action": "events:DescribeEventBus", "Resource": bus_arn}
        ),
    )
    assert theirs.describe_event_bus()["Arn"] == bus_arn
    trail = daemon.client("cloudtrail")
    record = json.loads(
        trail.lookup_events(
            LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": user}]
        )["Events"][0]["CloudTrailEvent"]
    )
    assert (record["eventName"], record["readOnly"]) == ("DescribeEventBus", True)
    assert record["resources"] == [
        {"accountId": ACCOUNT, "type": "AWS::Events::EventBus", "ARN": bus_arn}
    ]
