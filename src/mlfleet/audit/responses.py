"""CloudTrail's ``LookupEvents`` at ``POST /`` (AWS JSON 1.1), over the audit trail."""

from __future__ import annotations

from mlfleet.api.endpoint import JsonEndpoint, Recorder
from mlfleet.api.operations import ADMINISTRATORS, Access, Call, OperationTable, Result, anywhere
from mlfleet.audit.trail import AuditTrail
from mlfleet.auth.credentials import Credentials
from mlfleet.policy.authorizer import Authorizer
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model

OPERATIONS: OperationTable[AuditTrail] = OperationTable("cloudtrail")


@OPERATIONS.declare(Access.READ, ADMINISTRATORS, resource=anywhere)
def lookup_events(trail: AuditTrail, call: Call) -> Result:
    return trail.lookup(call.params)


def cloudtrail_endpoint(
    trail: AuditTrail,
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
    region: str,
) -> JsonEndpoint:
    return JsonEndpoint(
        JsonProtocol(load_service_model("cloudtrail")),
        service_name="cloudtrail",
        credentials=credentials,
        authorizer=authorizer,
        operations=OPERATIONS.bind(trail),
        recorder=recorder,
        accepted_regions=(region,),
    )
