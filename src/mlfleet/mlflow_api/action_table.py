"""Generate ``action_table.json``, the route -> ``sagemaker-mlflow:`` action table of the gateway.

The table is derived from MLflow's own route list (``mlflow.server.handlers.get_endpoints``):
every proto RPC route comes with its request message, and the action is the RPC's name
(``LogMetric`` -> ``sagemaker-mlflow:LogMetric``), as in SageMaker (spec sagemaker-mlflow-api.md
section 5). What MLflow cannot tell us is written down here, in small tables: the two irregular
names, the nearest action for RPCs SageMaker has no action for, and the routes MLflow serves
outside its proto services. The families a tenant must never reach are in ``actions.py``, which
refuses them at run time whatever the table says.

Importing ``mlflow.server`` takes seconds and 100+ MB, so this runs when MLflow is upgraded, not
in the daemon:

    python -m mlfleet.mlflow_api.action_table

A unit test regenerates the table and fails while the committed file differs.
"""

from __future__ import annotations

import importlib.metadata
import json
import re

from fastapi.routing import APIRoute
from google.protobuf.message import Message
from mlflow.server import handlers
from mlflow.server.gateway_api import gateway_router

from mlfleet.mlflow_api.actions import (
    ACTIONS,
    EXTENSION_FAMILIES,
    EXTENSION_SERVICE,
    SERVICE,
    TABLE_FILE,
    Kind,
    Requirement,
    api_relative,
    denied_family,
    encode_table,
    path_segments,
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
_GENAI_FAMILIES: dict[tuple[str, ...], tuple[str, str]] = {
    ("mlflow", "datasets"): ("GetExperiment", "LogInputs"),
    ("mlflow", "issues"): ("SearchTraces", "SetTraceTag"),
    ("mlflow", "label-schemas"): ("SearchTraces", "SetTraceTag"),
    ("mlflow", "review-queues"): ("SearchTraces", "SetTraceTag"),
}


def _action(name: str) -> Requirement:
    if name not in ACTIONS:
        raise ValueError(f"{SERVICE}:{name} is not an action of the service")
    return Requirement(f"{SERVICE}:{name}", Kind.ACTION)


def _extension(name: str) -> Requirement:
    return Requirement(f"{EXTENSION_SERVICE}:{name}", Kind.ACTION)


# The MLflow client asks /version and server-info which features a server has before its first
# call (log_spans, multipart uploads, workspaces); they say nothing about a tenant's data, and
# requiring an action would break callers granted only, say, LogMetric.
_PUBLIC = Requirement(None, Kind.PUBLIC)
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
    # The UI's model-endpoint list (Runs page, prompt lab). With no MLFLOW_DEPLOYMENTS_TARGET,
    # which workers never have, MLflow answers it with an empty list and sends nothing out
    # (actions.py says why it is safe).
    ("GET", "/ajax-api/2.0/mlflow/gateway-proxy"): _action("AccessUI"),
    ("POST", "/ajax-api/2.0/mlflow/gateway-proxy"): _action("AccessUI"),
    # The Assistant panel's settings, read on every page: the worker's own empty configuration
    # and which providers it could use (none run for a caller who is not on the worker's host;
    # MLflow refuses those itself). The rest of the assistant family stays refused.
    ("GET", "/ajax-api/3.0/mlflow/assistant/config"): _action("AccessUI"),
    ("GET", "/ajax-api/3.0/mlflow/assistant/providers"): _action("AccessUI"),
    # What the UI shows when an endpoint is made: the providers, models and settings MLflow
    # knows, and whether secrets are encrypted with a key of the server's own (they are).
    ("GET", "/ajax-api/3.0/mlflow/gateway/supported-providers"): _extension(
        "ListGatewaySupportedProviders"
    ),
    ("GET", "/ajax-api/3.0/mlflow/gateway/supported-models"): _extension(
        "ListGatewaySupportedModels"
    ),
    ("GET", "/ajax-api/3.0/mlflow/gateway/provider-config"): _extension("GetGatewayProviderConfig"),
    ("GET", "/ajax-api/3.0/mlflow/gateway/secrets/config"): _extension("GetGatewaySecretsConfig"),
    # Online scoring: which registered scorers the server runs on new traces, and how often.
    ("GET", "/api/3.0/mlflow/scorers/online-configs"): _extension("GetOnlineScoringConfigs"),
    ("GET", "/ajax-api/3.0/mlflow/scorers/online-configs"): _extension("GetOnlineScoringConfigs"),
    ("PUT", "/api/3.0/mlflow/scorers/online-config"): _extension("UpdateOnlineScoringConfig"),
    ("PUT", "/ajax-api/3.0/mlflow/scorers/online-config"): _extension("UpdateOnlineScoringConfig"),
    # MLflow's jobs, run by the server (runtime.mlflow_jobs): a judge on chosen traces, an
    # evaluation and an issue detection started from the UI, and the jobs' own state. A job is
    # started only by its feature's route: the generic POST /ajax-api/3.0/jobs/, which names any
    # job function with any parameters, has no entry.
    ("POST", "/ajax-api/3.0/mlflow/scorer/invoke"): _extension("InvokeScorer"),
    ("POST", "/ajax-api/3.0/mlflow/genai/evaluate/invoke"): _extension("InvokeEvaluation"),
    ("POST", "/ajax-api/3.0/mlflow/issues/invoke"): _extension("InvokeIssueDetection"),
    ("GET", "/ajax-api/3.0/mlflow/jobs/<job_id>"): _extension("GetJob"),
    ("GET", "/ajax-api/3.0/jobs/<job_id>"): _extension("GetJob"),
    ("PATCH", "/ajax-api/3.0/mlflow/jobs/cancel/<job_id>"): _extension("CancelJob"),
    ("PATCH", "/ajax-api/3.0/jobs/cancel/<job_id>"): _extension("CancelJob"),
    ("POST", "/ajax-api/3.0/jobs/search"): _extension("SearchJobs"),
    # Prompt lab's run: an ordinary run with the prompt, parameters and output logged; the
    # prompt itself went to a gateway endpoint, with that endpoint's own action.
    ("POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run"): _action("CreateRun"),
}
# The AI gateway's own routes (MLflow's FastAPI gateway_router): calling a model through an
# endpoint, and the list of endpoints an OpenAI-style client asks for.
_INVOKE = _extension("InvokeGatewayEndpoint")
_LIST_ENDPOINTS = _extension("ListGatewayEndpoints")
_FASTAPI_PARAMETER = re.compile(r"\{(\w+)(?::(path))?\}")


def _gateway_routes() -> dict[tuple[str, str], Requirement]:
    routes = {}
    for route in gateway_router.routes:
        assert isinstance(route, APIRoute)
        # FastAPI's {name} and {name:path}, as the table writes Werkzeug's <name>, <path:name>.
        template = _FASTAPI_PARAMETER.sub(
            lambda m: f"<path:{m[1]}>" if m[2] else f"<{m[1]}>", route.path
        )
        for method in route.methods or ():
            routes[method, template] = _LIST_ENDPOINTS if method == "GET" else _INVOKE
    return routes


def _rpc_requirement(message: type[Message], method: str, segments: list[str]) -> Requirement:
    if handlers.get_handler(message) is handlers._not_implemented:
        return Requirement(
            None, Kind.DENIED, "a Databricks-only RPC that open-source MLflow does not implement"
        )
    name = message.DESCRIPTOR.name.removesuffix("Request").removesuffix("V3")
    name = _IRREGULAR_NAMES.get(name, name)
    if name in ACTIONS:
        return _action(name)
    if name in _NEAREST_ACTION:
        return _action(_NEAREST_ACTION[name])
    if api_relative(segments)[:2] in EXTENSION_FAMILIES:
        return _extension(name)
    family = _GENAI_FAMILIES.get(api_relative(segments)[:2])
    if family is not None:
        read, write = family
        # Not by verb alone: GetOrCreateUserQueue creates, SearchIssues is a POST.
        return _action(read if method == "GET" or name.startswith("Search") else write)
    return Requirement(None, Kind.UNMAPPED, f"no {SERVICE} action is mapped to RPC {name}")


def build() -> dict[str, object]:
    """The table for the installed MLflow, as ``action_table.json`` holds it."""
    routes = {**_NON_RPC_ROUTES, **_gateway_routes()}
    # With this get_handler, get_endpoints() names each proto route's request message instead
    # of its view function; the other routes it lists keep their functions.
    for path, handler, methods in handlers.get_endpoints(get_handler=lambda message: message):
        segments = path_segments(path)
        # Denied families are refused before any lookup; their routes need no entry.
        if denied_family(segments) is not None:
            continue
        if isinstance(handler, type) and issubclass(handler, Message):
            for method in methods:
                routes[method, path] = _rpc_requirement(handler, method, segments)
    return encode_table(routes, importlib.metadata.version("mlflow"))


def main() -> None:
    TABLE_FILE.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE_FILE}")


if __name__ == "__main__":
    main()
