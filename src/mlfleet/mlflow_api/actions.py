"""Which ``sagemaker-mlflow:`` IAM action a data-plane request needs, failing closed.

The route table is data: ``action_table.json``, generated from MLflow's own route list by
``action_table.py`` (``python -m mlfleet.mlflow_api.action_table``) and checked against the
installed MLflow by the unit tests. Loading it, on first use, takes milliseconds and never
imports MLflow, whose server module would cost the daemon seconds and 100+ MB. Written down
here are the route
families a tenant must never reach (spec mlflow-server.md section 8), refused before any
lookup, and paths that a hop could rewrite. Any route not in the table is refused, so a route
that an MLflow upgrade adds stays closed until someone decides what it needs. Only a route
written down by hand in ``action_table.py`` is decided before the families, one by one: the
UI's reads of the Assistant's settings sit in the refused assistant family.

``gateway-proxy`` is served (``AccessUI``): MLflow sends it on only to
``MLFLOW_DEPLOYMENTS_TARGET``, read from the worker's environment, which the sandbox builds
without it (``runtime.sandbox``); unset, MLflow answers ``{"endpoints": []}`` and sends nothing.
A tenant chooses only ``gateway_path``, which MLflow would append to that fixed target after
its own check, and the worker normally has no network. Webhooks stay refused: there the tenant
writes the URL.

``required_action`` itself is a few dict lookups.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from urllib.parse import unquote

SERVICE = "sagemaker-mlflow"
# MLflow 3 features SageMaker names no action for, behind actions of mlfleet's own namespace
# (the RPC's name, as for SageMaker's): a "sagemaker-mlflow:*" grant written before them must
# not reach provider keys and paid LLM calls. By the path segments after /api/<v>/, or from the
# root for the AI gateway's invocation routes.
EXTENSION_SERVICE = "mlfleet-mlflow"
EXTENSION_FAMILIES = frozenset(
    {
        ("mlflow", "gateway"),
        ("mlflow", "scorers"),
        ("mlflow", "prompt-optimization"),
        ("gateway",),
    }
)

TABLE_FILE = Path(__file__).with_name("action_table.json")

# The service's 61 actions (AWS Service Authorization Reference, via spec section 5). A name
# derived from a new MLflow RPC must be one of them: requiring a made-up action would let
# wildcard grants such as "sagemaker-mlflow:Log*" reach it unreviewed.
ACTIONS = frozenset(
    {
        "AccessUI",
        "CreateExperiment",
        "CreateModelVersion",
        "CreateRegisteredModel",
        "CreateRun",
        "DeleteExperiment",
        "DeleteLoggedModel",
        "DeleteLoggedModelTag",
        "DeleteModelVersion",
        "DeleteModelVersionTag",
        "DeleteRegisteredModel",
        "DeleteRegisteredModelAlias",
        "DeleteRegisteredModelTag",
        "DeleteRun",
        "DeleteTag",
        "DeleteTraceTag",
        "DeleteTraces",
        "EndTrace",
        "FinalizeLoggedModel",
        "GetDownloadURIForModelVersionArtifacts",
        "GetExperiment",
        "GetExperimentByName",
        "GetLatestModelVersions",
        "GetLoggedModel",
        "GetMetricHistory",
        "GetModelVersion",
        "GetModelVersionByAlias",
        "GetRegisteredModel",
        "GetRun",
        "GetTraceInfo",
        "ListArtifacts",
        "ListLoggedModelArtifacts",
        "LogBatch",
        "LogInputs",
        "LogLoggedModelParams",
        "LogMetric",
        "LogModel",
        "LogOutputs",
        "LogParam",
        "RenameRegisteredModel",
        "RestoreExperiment",
        "RestoreRun",
        "SearchExperiments",
        "SearchLoggedModels",
        "SearchModelVersions",
        "SearchRegisteredModels",
        "SearchRuns",
        "SearchTraces",
        "SetExperimentTag",
        "SetLoggedModelTags",
        "SetModelVersionTag",
        "SetRegisteredModelAlias",
        "SetRegisteredModelTag",
        "SetTag",
        "SetTraceTag",
        "StartTrace",
        "TransitionModelVersionStage",
        "UpdateExperiment",
        "UpdateModelVersion",
        "UpdateRegisteredModel",
        "UpdateRun",
    }
)

_SSRF = "the tracking server would make outbound requests a tenant controls (SSRF)"
_ADMIN = "MLflow's user administration is not enabled: callers are IAM principals of mlfleet"
# Route families a tenant must never reach (spec mlflow-server.md section 8), by the path
# segments after /api/<v>/ or /ajax-api/<v>/, or from the root for routes outside them.
# Checked before any mapping, so nothing MLflow adds under them is ever forwarded.
_DENIED_FAMILIES = {
    ("mlflow", "webhooks"): _SSRF,
    # A coding agent on the server's host. (MLflow's jobs, judges and evaluations, run in the
    # worker's sandbox: runtime.mlflow_jobs.)
    ("mlflow", "assistant"): "the tracking server would run an agent on a tenant's behalf",
    ("mlflow", "mcp-servers"): "the MCP server registry is not offered",
    ("mlflow", "demo"): "demo data generation is not offered",
    ("mlflow", "workspaces"): "workspaces are administered by mlfleet, not by tenants",
    ("mlflow", "users"): _ADMIN,
    ("mlflow", "roles"): _ADMIN,
    ("signup",): _ADMIN,
    ("mlflow", "ui-telemetry"): "usage telemetry would leave the tracking server",
    ("build",): "Flask's default static route: the UI loads the same files from /static-files",
}
# Served only by MLflow's basic-auth app, which workers never run: MLflow answers them 404, and
# so does the gateway (the UI asks users/current on every page, of any MLflow server).
_ABSENT_FAMILIES = frozenset({("mlflow", "users"), ("mlflow", "roles"), ("signup",)})
_API_ROOTS = frozenset({"api", "ajax-api"})


class Kind(StrEnum):
    ACTION = "action"  # forward if the caller is allowed ``action``
    PUBLIC = "public"  # forward for any authenticated caller
    DENIED = "denied"  # never forwarded: a route tenants must not reach
    UNMAPPED = "unmapped"  # never forwarded: nobody decided what it needs (fail closed)
    ABSENT = "absent"  # never forwarded: a route MLflow serves only with a feature workers lack


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a request needs before the gateway may forward it."""

    action: str | None  # "sagemaker-mlflow:LogMetric"; None unless kind is ACTION
    kind: Kind
    reason: str = ""  # why a route is refused, for the caller

    @property
    def denied(self) -> bool:
        return self.kind in (Kind.DENIED, Kind.UNMAPPED, Kind.ABSENT)

    @property
    def refusal(self) -> tuple[int, str]:
        """The status and MLflow error code a denied request is answered with."""
        if self.kind is Kind.ABSENT:
            return 404, "ENDPOINT_NOT_FOUND"
        return 403, "PERMISSION_DENIED"

    def to_json(self) -> dict[str, str]:
        fields = {"kind": self.kind.value, "action": self.action, "reason": self.reason}
        return {key: value for key, value in fields.items() if value}

    @classmethod
    def from_json(cls, entry: dict[str, str]) -> Requirement:
        return cls(entry.get("action"), Kind(entry["kind"]), entry.get("reason", ""))


def _denied(reason: str) -> Requirement:
    return Requirement(None, Kind.DENIED, reason)


_UNMAPPED = Requirement(
    None, Kind.UNMAPPED, f"no {SERVICE} action is mapped to this route, so it is refused"
)
_NON_CANONICAL = _denied(
    "the path has empty, '.' or '..' segments or a '#', which would be rewritten before MLflow "
    "routes it"
)
_DENIED_BY_FAMILY = {
    family: Requirement(None, Kind.ABSENT if family in _ABSENT_FAMILIES else Kind.DENIED, reason)
    for family, reason in _DENIED_FAMILIES.items()
}
_DENIED_DEPTHS = sorted({len(family) for family in _DENIED_FAMILIES})

_PARAMETER = re.compile(r"<(?:(\w+):)?(\w+)>")
# Werkzeug's converters that MLflow's routes use; another one fails generating the table.
_CONVERTERS = {None: "[^/]+", "path": ".+"}


def path_segments(path: str) -> list[str]:
    return path.split("/")[1:]


def api_relative(segments: list[str]) -> tuple[str, ...]:
    """The segments after /api/<version>/ or /ajax-api/<version>/; all of them otherwise."""
    return tuple(segments[2:] if segments[:1] and segments[0] in _API_ROOTS else segments)


def denied_family(segments: list[str]) -> Requirement | None:
    relative = api_relative(segments)
    for depth in _DENIED_DEPTHS:
        denied = _DENIED_BY_FAMILY.get(relative[:depth])
        if denied is not None:
            return denied
    return None


def _compile(template: str) -> re.Pattern[str]:
    pattern: list[str] = []
    end = 0
    for parameter in _PARAMETER.finditer(template):
        converter = parameter.group(1)
        if converter not in _CONVERTERS:
            raise ValueError(f"MLflow route {template} uses an unknown converter {converter}")
        pattern += [re.escape(template[end : parameter.start()]), _CONVERTERS[converter]]
        end = parameter.end()
    pattern.append(re.escape(template[end:]))
    return re.compile("".join(pattern))


class _Table:
    """Exact paths in a dict; templated ones by method and the literal segments before their
    first parameter, most literal first (as Werkzeug prefers static parts)."""

    def __init__(self, routes: dict[tuple[str, str], Requirement], mlflow_version: str) -> None:
        self.mlflow_version = mlflow_version
        self.exact: dict[tuple[str, str], Requirement] = {}
        self.templated: dict[tuple[str, str], list[tuple[re.Pattern[str], Requirement]]] = {}
        depths: set[int] = set()
        for (method, template), requirement in sorted(
            routes.items(), key=lambda item: -len(_PARAMETER.sub("", item[0][1]))
        ):
            if "<" not in template:
                self.exact[method, template] = requirement
                continue
            literal = template[: template.index("<")].rsplit("/", 1)[0]
            self.templated.setdefault((method, literal), []).append(
                (_compile(template), requirement)
            )
            depths.add(literal.count("/"))
        self.depths = sorted(depths, reverse=True)

    def lookup(self, method: str, path: str, segments: list[str]) -> Requirement:
        found = self.exact.get((method, path))
        if found is not None:
            return found
        for depth in self.depths:
            if depth > len(segments):
                continue
            key = (method, "/" + "/".join(segments[:depth]) if depth else "")
            for pattern, requirement in self.templated.get(key, ()):
                if pattern.fullmatch(path):
                    return requirement
        return _UNMAPPED


def encode_table(
    routes: dict[tuple[str, str], Requirement], mlflow_version: str
) -> dict[str, object]:
    """The JSON document of a route table: routes keyed "METHOD /template", sorted when
    written, so that an MLflow upgrade shows up as a readable diff."""
    for _, template in routes:
        _compile(template)  # a converter the gateway cannot match fails here, not in the daemon
    return {
        "generated_by": "python -m mlfleet.mlflow_api.action_table: regenerate, do not edit",
        "mlflow_version": mlflow_version,
        "routes": {f"{method} {path}": need.to_json() for (method, path), need in routes.items()},
    }


@cache
def _table() -> _Table:
    # Loaded on first use rather than at import, so that the generator, which imports this
    # module, still runs when the file is missing or unreadable.
    document = json.loads(TABLE_FILE.read_text())
    routes = {}
    for key, entry in document["routes"].items():
        method, _, path = key.partition(" ")
        routes[method, path] = Requirement.from_json(entry)
    return _Table(routes, document["mlflow_version"])


def table_mlflow_version() -> str:
    """The MLflow release the table was generated from (loading it if need be)."""
    return _table().mlflow_version


# Actions that only read (AWS's Read and List access levels); every other action writes.
_READ_PREFIXES = tuple(
    f"{service}:{verb}"
    for service in (SERVICE, EXTENSION_SERVICE)
    for verb in ("Get", "Search", "List", "AccessUI")
)


def is_write(action: str) -> bool:
    return not action.startswith(_READ_PREFIXES)


def required_action(method: str, path: str) -> Requirement:
    """What ``method`` on ``path`` (as MLflow will see it; a query string is ignored) needs.

    The path is percent-decoded once, as uvicorn does before MLflow routes it.
    """
    # HTTP clients drop a fragment: the gateway's own would forward DELETE logged-models/m#/tags/t
    # as DELETE logged-models/m. A client never sends one, so refuse it before decoding (%23 is
    # an ordinary character of a name).
    if "#" in path:
        return _NON_CANONICAL
    path = unquote(path.partition("?")[0])
    method = method.upper()
    if method == "HEAD":  # served by the GET route, in Flask and Starlette alike
        method = "GET"
    if path == "/":
        return _table().lookup(method, path, [])
    segments = path_segments(path)
    # HTTP clients and servers resolve dot segments (even %2e%2e), so the route MLflow serves
    # could differ from the one checked here: a DELETE of artifacts/../../<rpc>.
    if not path.startswith("/") or "" in segments or "." in segments or ".." in segments:
        return _NON_CANONICAL
    table = _table()
    # Only hand-written routes are exact entries inside a denied family (the generator skips
    # MLflow's own there), each decided on its own.
    return (
        table.exact.get((method, path))
        or denied_family(segments)
        or table.lookup(method, path, segments)
    )
