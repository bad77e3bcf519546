"""Which ``sagemaker-mlflow:`` IAM action a data-plane request needs, failing closed.

The table is built once, at import, from MLflow's own route list
(``mlflow.server.handlers.get_endpoints``): every proto RPC route comes with its request message,
and the action is the RPC's name (``LogMetric`` -> ``sagemaker-mlflow:LogMetric``), as in
SageMaker (spec sagemaker-mlflow-api.md section 5). What MLflow cannot tell us is written down
here, in small tables: the two irregular names, the nearest action for RPCs SageMaker has no
action for, the routes MLflow serves outside its proto services, and the route families a tenant
must never reach (spec mlflow-server.md section 8). Any other route is refused, so a route that
an MLflow upgrade adds stays closed until someone decides what it needs.

Importing this module imports ``mlflow.server`` (~2-3 s), once per daemon; ``required_action``
itself is a few dict lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from google.protobuf.message import Message
from mlflow.server import handlers

SERVICE = "sagemaker-mlflow"

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

# RPCs whose action has a different name (spec section 5).
_IRREGULAR_NAMES = {
    "GetLatestVersions": "GetLatestModelVersions",
    "GetModelVersionDownloadUri": "GetDownloadURIForModelVersionArtifacts",
}

# Ordinary tracking RPCs with no action of their own: the action whose holder may already do
# the same thing to the same data.
_NEAREST_ACTION = {
    # Removing a tag is a tag write; SageMaker has no DeleteExperimentTag.
    "DeleteExperimentTag": "SetExperimentTag",
    # MLflow 3's log_model creates the logged model first: that is logging a model.
    "CreateLoggedModel": "LogModel",
    "GetMetricHistoryBulkInterval": "GetMetricHistory",
    # Full traces and batches of them are read as trace info is.
    "GetTrace": "GetTraceInfo",
    "BatchGetTraces": "GetTraceInfo",
    "BatchGetTraceInfos": "GetTraceInfo",
    # Aggregates over the traces a search returns.
    "CalculateTraceFilterCorrelation": "SearchTraces",
    "QueryTraceMetrics": "SearchTraces",
    # Links and assessments (feedback, expectations) annotate an existing trace, as tags do.
    "LinkTracesToRun": "SetTraceTag",
    "LinkPromptsToTrace": "SetTraceTag",
    "CreateAssessment": "SetTraceTag",
    "UpdateAssessment": "SetTraceTag",
    "DeleteAssessment": "DeleteTraceTag",
    "GetAssessment": "GetTraceInfo",
    # Artifacts. SageMaker clients write them straight to S3, so no action names them. A run's
    # files are part of the run: reading them is GetRun (GetDownloadURIForModelVersionArtifacts
    # would let a registry-only reader pull every run's files); writing them is LogModel, the
    # action that records what a run produced (models are most artifacts, and log_model
    # uploads them); deleting them destroys run data, as DeleteRun does. Listing keeps its own
    # action, ListArtifacts (the mlflow-artifacts service's ListArtifacts matches by name).
    "DownloadArtifact": "GetRun",
    "GetPresignedDownloadUrl": "GetRun",
    "CreatePresignedDownloadUrl": "GetRun",
    "UploadArtifact": "LogModel",
    "CreatePresignedUploadUrl": "LogModel",
    "CreateMultipartUpload": "LogModel",
    "CompleteMultipartUpload": "LogModel",
    "AbortMultipartUpload": "LogModel",
    "DeleteArtifact": "DeleteRun",
}

# GenAI data families stored in the tracking database, by the path segments after /api/<v>/:
# (action to read, action to write). Evaluation datasets belong to experiments and are what
# runs log as inputs; issues, label schemas and review queues are human review of traces.
_GENAI_FAMILIES = {
    ("mlflow", "datasets"): ("GetExperiment", "LogInputs"),
    ("mlflow", "issues"): ("SearchTraces", "SetTraceTag"),
    ("mlflow", "label-schemas"): ("SearchTraces", "SetTraceTag"),
    ("mlflow", "review-queues"): ("SearchTraces", "SetTraceTag"),
}

_SSRF = "the tracking server would make outbound requests a tenant controls (SSRF)"
_EXECUTION = "the tracking server would run models, judges or code on a tenant's behalf"
_ADMIN = "MLflow's own user administration: callers are IAM principals of mlfleet"
_NO_AI_GATEWAY = "the AI gateway (provider keys, LLM calls) is not offered"
# Route families a tenant must never reach (spec mlflow-server.md section 8), by the path
# segments after /api/<v>/ or /ajax-api/<v>/, or from the root for routes outside them.
# Checked before any mapping, so nothing MLflow adds under them is ever forwarded.
_DENIED_FAMILIES = {
    ("mlflow", "gateway"): _NO_AI_GATEWAY,
    ("gateway",): _NO_AI_GATEWAY,
    ("mlflow", "gateway-proxy"): _SSRF,
    ("mlflow", "runs", "create-promptlab-run"): "prompt lab needs the AI gateway",
    ("mlflow", "webhooks"): _SSRF,
    ("mlflow", "scorer", "invoke"): _EXECUTION,
    ("mlflow", "scorers"): _EXECUTION,  # registered scorers run server-side (online scoring)
    ("mlflow", "genai", "evaluate", "invoke"): _EXECUTION,
    ("mlflow", "issues", "invoke"): _EXECUTION,
    ("mlflow", "prompt-optimization"): _EXECUTION,
    ("mlflow", "jobs"): _EXECUTION,
    ("jobs",): _EXECUTION,
    ("mlflow", "assistant"): _EXECUTION,
    ("mlflow", "mcp-servers"): "the MCP server registry is not offered",
    ("mlflow", "demo"): "demo data generation is not offered",
    ("mlflow", "workspaces"): "workspaces are administered by mlfleet, not by tenants",
    ("mlflow", "users"): _ADMIN,
    ("mlflow", "roles"): _ADMIN,
    ("signup",): _ADMIN,
    ("mlflow", "ui-telemetry"): "usage telemetry would leave the tracking server",
    ("build",): "Flask's default static route: the UI loads the same files from /static-files",
}
_API_ROOTS = frozenset({"api", "ajax-api"})


class Kind(StrEnum):
    ACTION = "action"  # forward if the caller is allowed ``action``
    PUBLIC = "public"  # forward for any authenticated caller
    DENIED = "denied"  # never forwarded: a route tenants must not reach
    UNMAPPED = "unmapped"  # never forwarded: nobody decided what it needs (fail closed)


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a request needs before the gateway may forward it."""

    action: str | None  # "sagemaker-mlflow:LogMetric"; None unless kind is ACTION
    kind: Kind
    reason: str = ""  # why a route is refused, for the caller

    @property
    def denied(self) -> bool:
        return self.kind in (Kind.DENIED, Kind.UNMAPPED)


def _action(name: str) -> Requirement:
    if name not in ACTIONS:
        raise ValueError(f"{SERVICE}:{name} is not an action of the service")
    return Requirement(f"{SERVICE}:{name}", Kind.ACTION)


def _denied(reason: str) -> Requirement:
    return Requirement(None, Kind.DENIED, reason)


# The MLflow client asks /version and server-info which features a server has before its first
# call (log_spans, multipart uploads, workspaces); they say nothing about a tenant's data, and
# requiring an action would break callers granted only, say, LogMetric.
_PUBLIC = Requirement(None, Kind.PUBLIC)
_UNMAPPED = Requirement(
    None, Kind.UNMAPPED, f"no {SERVICE} action is mapped to this route, so it is refused"
)
_NON_CANONICAL = _denied(
    "the path has empty, '.' or '..' segments, which would be rewritten before MLflow routes it"
)
_DENIED_BY_FAMILY = {family: _denied(reason) for family, reason in _DENIED_FAMILIES.items()}
_DENIED_DEPTHS = sorted({len(family) for family in _DENIED_FAMILIES})

# Routes MLflow serves outside its proto services (server/__init__.py, get_endpoints() extras,
# the FastAPI routers): no RPC name to derive an action from.
_NON_RPC_ROUTES = {
    ("GET", "/health"): _PUBLIC,
    ("GET", "/version"): _PUBLIC,
    ("GET", "/api/3.0/mlflow/server-info"): _PUBLIC,
    ("GET", "/ajax-api/3.0/mlflow/server-info"): _PUBLIC,
    # The UI: index.html and its bundles.
    ("GET", "/"): _action("AccessUI"),
    ("GET", "/static-files/<path:path>"): _action("AccessUI"),
    # The UI's read-only GraphQL (experiment, run, metric history, artifact list, model
    # versions, search runs/datasets) serves whole runs across experiments, which is what
    # SearchRuns already grants; the Python client never calls it.
    ("GET", "/graphql"): _action("SearchRuns"),
    ("POST", "/graphql"): _action("SearchRuns"),
    # Artifact downloads and uploads of the UI: the same choices as the artifact RPCs above.
    ("GET", "/get-artifact"): _action("GetRun"),
    ("GET", "/model-versions/get-artifact"): _action("GetDownloadURIForModelVersionArtifacts"),
    ("POST", "/ajax-api/2.0/mlflow/upload-artifact"): _action("LogModel"),
    ("GET", "/ajax-api/2.0/mlflow/logged-models/<model_id>/artifacts/files"): _action(
        "GetLoggedModel"
    ),
    ("GET", "/ajax-api/2.0/mlflow/get-trace-artifact"): _action("GetTraceInfo"),
    ("GET", "/ajax-api/3.0/mlflow/get-trace-artifact"): _action("GetTraceInfo"),
    ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk"): _action("GetMetricHistory"),
    # Datasets are what runs log as inputs; the UI searches them across an experiment's runs.
    ("POST", "/ajax-api/2.0/mlflow/experiments/search-datasets"): _action("SearchRuns"),
    # OTLP span export: how the MLflow client (>= 3.4 servers) writes a trace's spans.
    ("POST", "/v1/traces"): _action("StartTrace"),
}

_PARAMETER = re.compile(r"<(?:(\w+):)?(\w+)>")
# Werkzeug's converters that MLflow's routes use; another one fails the import, loudly.
_CONVERTERS = {None: "[^/]+", "path": ".+"}


def _segments(path: str) -> list[str]:
    return path.split("/")[1:]


def _api_relative(segments: list[str]) -> tuple[str, ...]:
    return tuple(segments[2:] if segments[:1] and segments[0] in _API_ROOTS else segments)


def _denied_family(segments: list[str]) -> Requirement | None:
    relative = _api_relative(segments)
    for depth in _DENIED_DEPTHS:
        denied = _DENIED_BY_FAMILY.get(relative[:depth])
        if denied is not None:
            return denied
    return None


def _rpc_requirement(message: type[Message], method: str, segments: list[str]) -> Requirement:
    if handlers.get_handler(message) is handlers._not_implemented:
        return _denied("a Databricks-only RPC that open-source MLflow does not implement")
    name = message.DESCRIPTOR.name.removesuffix("Request").removesuffix("V3")
    name = _IRREGULAR_NAMES.get(name, name)
    if name in ACTIONS:
        return _action(name)
    if name in _NEAREST_ACTION:
        return _action(_NEAREST_ACTION[name])
    family = _GENAI_FAMILIES.get(_api_relative(segments)[:2])
    if family is not None:
        read, write = family
        # Not by verb alone: GetOrCreateUserQueue creates, SearchIssues is a POST.
        return _action(read if method == "GET" or name.startswith("Search") else write)
    return Requirement(None, Kind.UNMAPPED, f"no {SERVICE} action is mapped to RPC {name}")


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

    def __init__(self, routes: dict[tuple[str, str], Requirement]) -> None:
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


def _build() -> _Table:
    routes = dict(_NON_RPC_ROUTES)
    # With this get_handler, get_endpoints() names each proto route's request message instead
    # of its view function; the other routes it lists keep their functions.
    for path, handler, methods in handlers.get_endpoints(get_handler=lambda message: message):
        segments = _segments(path)
        # Denied families are refused before any lookup; their routes need no entry.
        if _denied_family(segments) is not None:
            continue
        if isinstance(handler, type) and issubclass(handler, Message):
            for method in methods:
                routes[method, path] = _rpc_requirement(handler, method, segments)
    return _Table(routes)


_TABLE = _build()


def required_action(method: str, path: str) -> Requirement:
    """What ``method`` on ``path`` (as MLflow will see it; a query string is ignored) needs.

    The path is percent-decoded once, as uvicorn does before MLflow routes it.
    """
    path = unquote(path.partition("?")[0])
    method = method.upper()
    if method == "HEAD":  # served by the GET route, in Flask and Starlette alike
        method = "GET"
    if path == "/":
        return _TABLE.lookup(method, path, [])
    segments = _segments(path)
    # aiohttp's URL resolves dot segments (even %2e%2e) on the way out, so the route MLflow
    # sees could differ from the one checked here: a DELETE of artifacts/../../<rpc>.
    if not path.startswith("/") or "" in segments or "." in segments or ".." in segments:
        return _NON_CANONICAL
    return _denied_family(segments) or _TABLE.lookup(method, path, segments)
