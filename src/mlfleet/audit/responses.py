"""CloudTrail's ``LookupEvents`` at ``POST /`` (AWS JSON 1.1), over the audit trail."""

from __future__ import annotations

from mlfleet.api.endpoint import JsonEndpoint
from mlfleet.api.operations import ADMINISTRATORS, Access, Call, OperationTable, anywhere
from mlfleet.api.pipeline import Pipeline
from mlfleet.audit.trail import AuditTrail
from mlfleet.auth.credentials import Credentials
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model
from mlfleet.protocol.shapes import cloudtrail as shapes

OPERATIONS: OperationTable[AuditTrail] = OperationTable("cloudtrail")


@OPERATIONS.declare(Access.READ, ADMINISTRATORS, resource=anywhere)
def lookup_events(
    trail: AuditTrail, call: Call[shapes.LookupEventsRequest]
) -> shapes.LookupEventsResponse:
    return trail.lookup(call.params)


def cloudtrail_endpoint(
    trail: AuditTrail,
    credentials: Credentials,
    pipeline: Pipeline,
    region: str,
) -> JsonEndpoint:
    return JsonEndpoint(
        JsonProtocol(load_service_model("cloudtrail")),
        service_name="cloudtrail",
        credentials=credentials,
        pipeline=pipeline,
        operations=OPERATIONS.bind(trail),
        accepted_regions=(region,),
    )
