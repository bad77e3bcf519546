"""The steps every call takes once its caller is known: authorize, run, audit.

Each entrance authenticates in its own way (SigV4 on ``POST /`` and InvokeEndpoint, the session
cookie in the console, SigV4, Basic or a UI session on the gateway) and reads its own wire
format; from there every call goes through a :class:`Pipeline`: it opens an :class:`ApiCall`
(what the audit trail will record), authorizes each :class:`~mlfleet.api.operations.Check` its
operation's declaration yields (or, for the console's own actions that no AWS API names, the
checks it borrows), runs it, and hands the record to the trail unless the operation is a data
event. A refusal raises the :class:`AwsError` the caller receives, after it is recorded. The
gateway takes its decisions here too (:meth:`Pipeline.decide`); its data events have a path of
their own (``gateway.recording``), durable with MLflow's own write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mlfleet.api.operations import Bound, Call, Check, Target
from mlfleet.auth.identity import Principal
from mlfleet.policy.authorizer import Authorizer, RequestFacts
from mlfleet.policy.evaluation import EvaluationResult
from mlfleet.protocol.errors import AwsError


@dataclass(frozen=True)
class AuditedResource:
    arn: str
    type: str | None


@dataclass
class ApiCall:
    """What the audit trail records of one call; filled in as the call proceeds."""

    service: str
    request_id: str
    time: float
    source_ip: str | None
    user_agent: str
    access_key_id: str | None = None
    operation: str | None = None
    principal: Principal | None = None
    parameters: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    error: AwsError | None = None
    resources: list[AuditedResource] = field(default_factory=list)
    read_only: bool = False
    # Data events (InvokeEndpoint) are not management events: the trail does not keep them.
    audited: bool = True

    @classmethod
    def begin(
        cls,
        service: str,
        *,
        source_ip: str | None,
        user_agent: str,
        principal: Principal | None = None,
        access_key_id: str | None = None,
    ) -> ApiCall:
        return cls(
            service=service,
            request_id=str(uuid.uuid4()),
            time=time.time(),
            source_ip=source_ip,
            user_agent=user_agent,
            access_key_id=principal.access_key_id if principal else access_key_id,
            principal=principal,
        )


Recorder = Callable[[ApiCall], None]


class Pipeline:
    """Authorization and audit, the same for every entrance."""

    def __init__(self, authorizer: Authorizer, recorder: Recorder) -> None:
        self._authorizer = authorizer
        self._record = recorder

    def authorize(
        self,
        record: ApiCall,
        operation: Bound,
        call: Call[Any],
        denied_code: str = "AccessDeniedException",
    ) -> None:
        """Start ``record`` for the declared operation and require each check it yields."""
        declared = operation.operation
        record.operation = declared.name
        record.read_only = declared.access.read_only
        record.audited = declared.audited
        record.parameters = call.params
        self.require(record, operation.checks(call) or (), call.principal, call.facts, denied_code)

    def require(
        self,
        record: ApiCall,
        checks: Iterable[Check],
        principal: Principal,
        facts: RequestFacts,
        denied_code: str = "AccessDeniedException",
    ) -> None:
        """Each check must be allowed; the resources are recorded whatever the outcome."""
        for check in checks:
            target = check.target
            record.resources.append(AuditedResource(target.arn, check.resource_type))
            self._authorizer.require(
                principal,
                check.action,
                target.arn,
                _with_target(facts, target),
                code=denied_code,
            )

    def decide(self, principal: Principal, check: Check, facts: RequestFacts) -> EvaluationResult:
        """The decision on one check, for an entrance that words its refusals itself (the
        gateway answers MLflow's error shape) or shows only what a principal may see."""
        target = check.target
        return self._authorizer.check(
            principal, check.action, target.arn, _with_target(facts, target)
        )

    def finish(self, record: ApiCall) -> None:
        """Hand the finished record to the audit trail (data events are not kept there)."""
        if record.audited:
            self._record(record)


def _with_target(facts: RequestFacts, target: Target) -> RequestFacts:
    return replace(
        facts,
        resource_tags=target.tags,
        request_tags=target.request_tags,
        extra=target.keys,
    )
