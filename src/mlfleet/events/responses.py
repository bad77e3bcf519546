"""EventBridge at ``POST /`` (AWS JSON 1.1, target prefix ``AWSEvents``).

The management operations run in :class:`~mlfleet.events.store.EventStore`; ``PutEvents`` runs
in the bus, which supplies it. Each operation is authorized as ``events:<Operation>`` on the
resource it acts on: the rule, the connection or the API destination (one that does not exist
yet as ``.../<name>/*``), the default bus for PutEvents, ``*`` for the account-wide lists and
TestEventPattern. A role handed to a rule or target also needs ``iam:PassRole``, as in AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlfleet.api.endpoint import Check, JsonEndpoint, Operation, Recorder
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.events.store import EventStore
from mlfleet.policy.authorizer import Authorizer
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model

Handler = Callable[[dict[str, Any]], dict[str, Any]]
PutEvents = Callable[[dict[str, Any], Principal], dict[str, Any]]
Checks = Callable[[dict[str, Any], Principal], list[Check]]

ACCOUNT_WIDE = ("ListRules", "ListConnections", "ListApiDestinations", "TestEventPattern")


def events_endpoint(
    store: EventStore,
    put_events: PutEvents,
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
    region: str,
) -> JsonEndpoint:
    rule_handlers: dict[str, Handler] = {
        "PutRule": store.put_rule,
        "DescribeRule": store.describe_rule,
        "EnableRule": store.enable_rule,
        "DisableRule": store.disable_rule,
        "DeleteRule": store.delete_rule,
        "PutTargets": store.put_targets,
        "RemoveTargets": store.remove_targets,
        "ListTargetsByRule": store.list_targets_by_rule,
    }
    connection_handlers: dict[str, Handler] = {
        "CreateConnection": store.create_connection,
        "UpdateConnection": store.update_connection,
        "DescribeConnection": store.describe_connection,
        "DeleteConnection": store.delete_connection,
    }
    destination_handlers: dict[str, Handler] = {
        "CreateApiDestination": store.create_api_destination,
        "UpdateApiDestination": store.update_api_destination,
        "DescribeApiDestination": store.describe_api_destination,
        "DeleteApiDestination": store.delete_api_destination,
    }
    account_handlers: dict[str, Handler] = {
        "ListRules": store.list_rules,
        "ListConnections": store.list_connections,
        "ListApiDestinations": store.list_api_destinations,
        "TestEventPattern": store.test_event_pattern,
    }

    operations: dict[str, Operation] = {
        "PutEvents": Operation(
            run=lambda req, principal, _facts: put_events(req, principal),
            checks=lambda _req, _p: [Check("events:PutEvents", store.bus_arn)],
        )
    }
    for name, handler in rule_handlers.items():
        operations[name] = _operation(handler, _rule_checks(store, name))
    for name, handler in connection_handlers.items():
        operations[name] = _operation(handler, _named_checks(name, store.connection_arn_for))
    for name, handler in destination_handlers.items():
        operations[name] = _operation(handler, _named_checks(name, store.api_destination_arn_for))
    for name, handler in account_handlers.items():
        operations[name] = _operation(
            handler, lambda _req, _p, action=f"events:{name}": [Check(action, "*")]
        )

    model = load_service_model("events")
    return JsonEndpoint(
        JsonProtocol(model),
        service_name="events",
        credentials=credentials,
        authorizer=authorizer,
        operations=operations,
        recorder=recorder,
        accepted_regions=(region,),
    )


def _operation(handler: Handler, checks: Checks) -> Operation:
    return Operation(run=lambda req, _principal, _facts: handler(req), checks=checks)


def _rule_checks(store: EventStore, operation: str) -> Checks:
    action = f"events:{operation}"

    def checks(req: dict[str, Any], _principal: Principal) -> list[Check]:
        name = req.get("Name") or req["Rule"]
        found = [
            Check(
                action,
                store.rule_arn(name),
                resource_tags=store.rule_tags(name),
                request_tags=req.get("Tags") if operation == "PutRule" else None,
            )
        ]
        # Roles a rule or its targets would act as are passed to EventBridge.
        roles = [req.get("RoleArn")] + [t.get("RoleArn") for t in req.get("Targets", [])]
        found += [Check("iam:PassRole", role) for role in dict.fromkeys(roles) if role]
        return found

    return checks


def _named_checks(operation: str, arn_for: Callable[[str], str]) -> Checks:
    action = f"events:{operation}"
    return lambda req, _principal: [Check(action, arn_for(req["Name"]))]
