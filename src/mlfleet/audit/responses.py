"""CloudTrail's ``LookupEvents`` at ``POST /`` (AWS JSON 1.1), over the audit trail."""

from __future__ import annotations

from mlfleet.api.endpoint import Check, JsonEndpoint, Operation, Recorder
from mlfleet.audit.trail import AuditTrail
from mlfleet.auth.credentials import Credentials
from mlfleet.policy.authorizer import Authorizer
from mlfleet.protocol.awsjson import JsonProtocol, load_service_model


def cloudtrail_endpoint(
    trail: AuditTrail,
    credentials: Credentials,
    authorizer: Authorizer,
    recorder: Recorder,
    region: str,
) -> JsonEndpoint:
    operations = {
        "LookupEvents": Operation(
            run=lambda req, _principal, _facts: trail.lookup(req),
            checks=lambda _req, _principal: [Check("cloudtrail:LookupEvents", "*")],
        )
    }
    return JsonEndpoint(
        JsonProtocol(load_service_model("cloudtrail")),
        service_name="cloudtrail",
        credentials=credentials,
        authorizer=authorizer,
        operations=operations,
        recorder=recorder,
        accepted_regions=(region,),
    )
