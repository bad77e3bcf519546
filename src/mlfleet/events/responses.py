"""EventBridge at ``POST /`` (AWS JSON 1.1, target prefix ``AWSEvents``).

The management operations run in :class:`~mlfleet.events.store.EventStore`; ``PutEvents`` runs
in the bus, which supplies it. Each operation is authorized as ``events:<Operation>`` on the
resource it acts on: the rule, the connection or the API destination (one that does not exist
yet as ``.../<name>/*``), the default bus for PutEvents, ``*`` for the account-wide lists and
TestEventPattern. A role handed to a rule or target also needs ``iam:PassRole``, as in AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlfleet.api.endpoint import JsonEndpoint
from mlfleet.api.operations import (
    ADMINISTRATORS,
    Access,
    Call,
    OperationTable,
    Params,
    Result,
    Target,
    anywhere,
)
from mlfleet.api.pipeline import Pipeline
from mlfleet.auth.credentials import Credentials
from mlfleet.auth.identity import Principal
from mlfleet.events.store import EventStore
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.shapes import events as shapes

PutEvents = Callable[[shapes.PutEventsRequest, Principal], shapes.PutEventsResponse]
RULE_TYPE = "AWS::Events::Rule"
CONNECTION_TYPE = "AWS::Events::Connection"
DESTINATION_TYPE = "AWS::Events::ApiDestination"
BUS_TYPE = "AWS::Events::EventBus"


@dataclass(frozen=True)
class EventBridge:
    """What EventBridge's operations run on: the rule store, and the bus for PutEvents."""

    store: EventStore
    put_events: PutEvents


OPERATIONS: OperationTable[EventBridge] = OperationTable("events")
declare = OPERATIONS.declare


def _bus(events: EventBridge, _call: Call[Any]) -> Target:
    return Target(events.store.bus_arn)


def _rule(events: EventBridge, call: Call[Any]) -> Target:
    name = call.params.get("Name") or call.params["Rule"]
    return Target(events.store.rule_arn(name), events.store.rule_tags(name))


def _new_rule(events: EventBridge, call: Call[Any]) -> Target:
    name = call.params["Name"]
    return Target(
        events.store.rule_arn(name),
        events.store.rule_tags(name),
        request_tags=call.params.get("Tags"),
    )


def _connection(events: EventBridge, call: Call[Any]) -> Target:
    return Target(events.store.connection_arn_for(call.params["Name"]))


def _destination(events: EventBridge, call: Call[Any]) -> Target:
    return Target(events.store.api_destination_arn_for(call.params["Name"]))


def _passed_roles(params: Params) -> list[str | None]:
    """Roles a rule or its targets would act as are passed to EventBridge."""
    return [params.get("RoleArn")] + [t.get("RoleArn") for t in params.get("Targets", [])]


@declare(Access.WRITE, ADMINISTRATORS, resource=_bus, resource_type=BUS_TYPE)
def put_events(
    events: EventBridge, call: Call[shapes.PutEventsRequest]
) -> shapes.PutEventsResponse:
    return events.put_events(call.params, call.principal)


@declare(Access.READ, ADMINISTRATORS, resource=_bus, resource_type=BUS_TYPE)
def describe_event_bus(
    events: EventBridge, call: Call[shapes.DescribeEventBusRequest]
) -> shapes.DescribeEventBusResponse:
    return events.store.describe_event_bus(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_new_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def put_rule(events: EventBridge, call: Call[shapes.PutRuleRequest]) -> shapes.PutRuleResponse:
    return events.store.put_rule(call.params)


@declare(
    Access.READ,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def describe_rule(
    events: EventBridge, call: Call[shapes.DescribeRuleRequest]
) -> shapes.DescribeRuleResponse:
    return events.store.describe_rule(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def enable_rule(events: EventBridge, call: Call[shapes.EnableRuleRequest]) -> Result:
    return events.store.enable_rule(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def disable_rule(events: EventBridge, call: Call[shapes.DisableRuleRequest]) -> Result:
    return events.store.disable_rule(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def delete_rule(events: EventBridge, call: Call[shapes.DeleteRuleRequest]) -> Result:
    return events.store.delete_rule(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def put_targets(
    events: EventBridge, call: Call[shapes.PutTargetsRequest]
) -> shapes.PutTargetsResponse:
    return events.store.put_targets(call.params)


@declare(
    Access.WRITE,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def remove_targets(
    events: EventBridge, call: Call[shapes.RemoveTargetsRequest]
) -> shapes.RemoveTargetsResponse:
    return events.store.remove_targets(call.params)


@declare(
    Access.LIST,
    ADMINISTRATORS,
    resource=_rule,
    resource_type=RULE_TYPE,
    passes_roles=_passed_roles,
)
def list_targets_by_rule(
    events: EventBridge, call: Call[shapes.ListTargetsByRuleRequest]
) -> shapes.ListTargetsByRuleResponse:
    return events.store.list_targets_by_rule(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_connection, resource_type=CONNECTION_TYPE)
def create_connection(
    events: EventBridge, call: Call[shapes.CreateConnectionRequest]
) -> shapes.CreateConnectionResponse:
    return events.store.create_connection(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_connection, resource_type=CONNECTION_TYPE)
def update_connection(
    events: EventBridge, call: Call[shapes.UpdateConnectionRequest]
) -> shapes.UpdateConnectionResponse:
    return events.store.update_connection(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=_connection, resource_type=CONNECTION_TYPE)
def describe_connection(
    events: EventBridge, call: Call[shapes.DescribeConnectionRequest]
) -> shapes.DescribeConnectionResponse:
    return events.store.describe_connection(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_connection, resource_type=CONNECTION_TYPE)
def delete_connection(
    events: EventBridge, call: Call[shapes.DeleteConnectionRequest]
) -> shapes.DeleteConnectionResponse:
    return events.store.delete_connection(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_destination, resource_type=DESTINATION_TYPE)
def create_api_destination(
    events: EventBridge, call: Call[shapes.CreateApiDestinationRequest]
) -> shapes.CreateApiDestinationResponse:
    return events.store.create_api_destination(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_destination, resource_type=DESTINATION_TYPE)
def update_api_destination(
    events: EventBridge, call: Call[shapes.UpdateApiDestinationRequest]
) -> shapes.UpdateApiDestinationResponse:
    return events.store.update_api_destination(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=_destination, resource_type=DESTINATION_TYPE)
def describe_api_destination(
    events: EventBridge, call: Call[shapes.DescribeApiDestinationRequest]
) -> shapes.DescribeApiDestinationResponse:
    return events.store.describe_api_destination(call.params)


@declare(Access.WRITE, ADMINISTRATORS, resource=_destination, resource_type=DESTINATION_TYPE)
def delete_api_destination(
    events: EventBridge, call: Call[shapes.DeleteApiDestinationRequest]
) -> shapes.DeleteApiDestinationResponse:
    return events.store.delete_api_destination(call.params)


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_rules(
    events: EventBridge, call: Call[shapes.ListRulesRequest]
) -> shapes.ListRulesResponse:
    return events.store.list_rules(call.params)


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_connections(
    events: EventBridge, call: Call[shapes.ListConnectionsRequest]
) -> shapes.ListConnectionsResponse:
    return events.store.list_connections(call.params)


@declare(Access.LIST, ADMINISTRATORS, resource=anywhere)
def list_api_destinations(
    events: EventBridge, call: Call[shapes.ListApiDestinationsRequest]
) -> shapes.ListApiDestinationsResponse:
    return events.store.list_api_destinations(call.params)


@declare(Access.READ, ADMINISTRATORS, resource=anywhere)
def test_event_pattern(
    events: EventBridge, call: Call[shapes.TestEventPatternRequest]
) -> shapes.TestEventPatternResponse:
    return events.store.test_event_pattern(call.params)


def events_endpoint(
    events: EventBridge,
    credentials: Credentials,
    pipeline: Pipeline,
    region: str,
) -> JsonEndpoint:
    return JsonEndpoint(
        JsonProtocol(load_service_model("events")),
        service_name="events",
        credentials=credentials,
        pipeline=pipeline,
        operations=OPERATIONS.bind(events),
        accepted_regions=(region,),
    )
