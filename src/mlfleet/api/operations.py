"""Operations, declared once: what each runs, what it acts on, who may call it.

A service declares its operations on an :class:`OperationTable`, one decorator each::

    operations: OperationTable[FleetService] = OperationTable("sagemaker")

    @operations.declare(Access.READ, READERS, resource=tracking_server)
    def describe_mlflow_tracking_server(
        fleet: FleetService, call: Call[DescribeMlflowTrackingServerRequest]
    ) -> DescribeMlflowTrackingServerResponse:
        return fleet.describe(call.params)

The function's name, in CamelCase, is the operation's name (``name=`` when it is generated);
its input and output are typed by the operation's shapes (:mod:`mlfleet.protocol.shapes`).
From the declaration the endpoint builds dispatch, the authorization checks
(``<service>:<Operation>`` on the resource, with its tags and condition keys, plus ``iam:PassRole``
on every role the call hands over), the audit record (its resources and their types, whether it
is read-only) and the managed policies' coverage: ``granted_to`` names the managed policies
that allow the operation, and a test holds the shipped policy documents to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from mlfleet.auth.identity import Principal
from mlfleet.policy.authorizer import RequestFacts, Tags
from mlfleet.policy.evaluation import ContextValue

Params = dict[str, Any]
Result = dict[str, Any]
Service = TypeVar("Service")
# An operation's input: its TypedDict from mlfleet.protocol.shapes (plain Call is Call[Any]).
Input = TypeVar("Input")


class Access(Enum):
    """AWS's access levels (the Service Authorization Reference's)."""

    LIST = "List"
    READ = "Read"
    WRITE = "Write"
    TAGGING = "Tagging"
    PERMISSIONS = "Permissions management"

    @property
    def read_only(self) -> bool:
        """CloudTrail's ``readOnly``."""
        return self in (Access.LIST, Access.READ)


# Who is granted an operation: the managed policies (besides AdministratorAccess, which grants
# everything) whose documents allow it. Each declaration picks one, so none is left undecided.
FULL_ACCESS = "MlfleetFullAccess"
DATA_SCIENTIST = "MlfleetDataScientistAccess"
READ_ONLY = "MlfleetReadOnlyAccess"
MANAGED_POLICIES = (FULL_ACCESS, DATA_SCIENTIST, READ_ONLY)
READERS = frozenset({FULL_ACCESS, DATA_SCIENTIST, READ_ONLY})
USERS = frozenset({FULL_ACCESS, DATA_SCIENTIST})
OPERATORS = frozenset({FULL_ACCESS})
ADMINISTRATORS: frozenset[str] = frozenset()
# An operation anyone signed in may call, which no policy governs (sts:GetCallerIdentity).
NO_PERMISSION_NEEDED = None

PASS_ROLE = "iam:PassRole"
ROLE_TYPE = "AWS::IAM::Role"


@dataclass(frozen=True)
class Call(Generic[Input]):
    """One call as an operation sees it: validated parameters, who asks, and how."""

    operation: str
    params: Input
    principal: Principal
    facts: RequestFacts


@dataclass(frozen=True)
class Target:
    """The resource a call acts on, as authorization and the audit record see it."""

    arn: str
    tags: Tags = ()
    # Tags a create asks for (aws:RequestTag, aws:TagKeys); None when the call sets none.
    request_tags: Tags | None = None
    keys: Mapping[str, ContextValue] = field(default_factory=dict)
    # The resource's type in audit records, for an operation that acts on several kinds.
    type: str | None = None


ANYWHERE = Target("*")


@dataclass(frozen=True)
class Check:
    """One permission a call needs: ``action`` on ``target``."""

    action: str
    target: Target
    resource_type: str | None


# Control-plane operations return their output members; InvokeEndpoint's run is a coroutine.
Run = Callable[[Service, Call[Any]], Any]
Locate = Callable[[Service, Call[Any]], Target]
Roles = Callable[[Any], Iterable[str | None]]


@dataclass(frozen=True)
class Operation(Generic[Service]):
    """One declared operation; :meth:`OperationTable.bind` gives it its service."""

    service: str
    name: str
    # The botocore service model that defines it (sagemaker-runtime's InvokeEndpoint is
    # authorized as a sagemaker action).
    model: str
    access: Access
    granted_to: frozenset[str] | None
    run: Run[Service]
    # None: the operation weighs permissions itself (sts:AssumeRole) or needs none.
    resource: Locate[Service] | None
    resource_type: str | None = None
    passes_roles: Roles | None = None
    audited: bool = True

    @property
    def action(self) -> str:
        return f"{self.service}:{self.name}"


@dataclass(frozen=True)
class Bound:
    """An operation with its service: what the endpoint dispatches to."""

    operation: Operation[Any]
    implementation: Any

    @property
    def name(self) -> str:
        return self.operation.name

    def checks(self, call: Call[Any]) -> Sequence[Check] | None:
        """The permissions the call needs; None when the operation decides itself."""
        operation = self.operation
        if operation.resource is None:
            return None
        target = operation.resource(self.implementation, call)
        found = [Check(operation.action, target, target.type or operation.resource_type)]
        if operation.passes_roles is not None:
            roles = dict.fromkeys(r for r in operation.passes_roles(call.params) if r)
            found += [Check(PASS_ROLE, Target(role), ROLE_TYPE) for role in roles]
        return found

    def run(self, call: Call[Any]) -> Any:
        return self.operation.run(self.implementation, call)


def camel_case(function_name: str) -> str:
    return "".join(part.title() for part in function_name.split("_"))


class OperationTable(Generic[Service]):
    """The operations one part of mlfleet implements of one AWS service."""

    def __init__(
        self, service: str, resource_type: str | None = None, model: str | None = None
    ) -> None:
        self.service = service
        self._model = model or service
        self._resource_type = resource_type
        self._operations: dict[str, Operation[Service]] = {}

    def declare(
        self,
        access: Access,
        granted_to: frozenset[str] | None,
        *,
        resource: Locate[Service] | None,
        name: str | None = None,
        resource_type: str | None = None,
        passes_roles: Roles | None = None,
        audited: bool = True,
    ) -> Callable[[Run[Service]], Run[Service]]:
        """Declare the decorated function as an operation (its name in CamelCase, or ``name``).

        ``resource`` locates what the call acts on (``ANYWHERE`` for account-wide operations);
        ``resource_type`` (default: the table's) is its CloudFormation type in audit records;
        ``passes_roles`` lists the roles the call hands over; ``audited=False`` for data events,
        which the audit trail does not keep.
        """

        def register(run: Run[Service]) -> Run[Service]:
            self.add(
                Operation(
                    service=self.service,
                    name=name or camel_case(run.__name__),
                    model=self._model,
                    access=access,
                    granted_to=granted_to,
                    run=run,
                    resource=resource,
                    resource_type=resource_type or self._resource_type,
                    passes_roles=passes_roles,
                    audited=audited,
                )
            )
            return run

        return register

    def add(self, operation: Operation[Service]) -> None:
        if operation.name in self._operations:
            raise ValueError(f"{operation.action} is declared twice")
        self._operations[operation.name] = operation

    @property
    def operations(self) -> Sequence[Operation[Service]]:
        return tuple(self._operations.values())

    def bind(self, implementation: Service) -> dict[str, Bound]:
        return {name: Bound(op, implementation) for name, op in self._operations.items()}


def anywhere(_service: object, _call: Call[Any]) -> Target:
    """Account-wide operations (List*, ...) act on ``*``."""
    return ANYWHERE
