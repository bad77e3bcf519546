"""required_action against the IAM reference (spec section 5) and MLflow's own route lists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest
from mlflow.server import app as flask_app
from mlflow.server import handlers
from starlette.exceptions import StarletteDeprecationWarning

from mlfleet.mlflow_api import action_table
from mlfleet.mlflow_api.actions import (
    ACTIONS,
    EXTENSION_SERVICE,
    TABLE_FILE,
    Kind,
    Requirement,
    is_write,
    required_action,
)

with warnings.catch_warnings():
    # MLflow's FastAPI app (imported by both) uses a deprecated Starlette module: MLflow's to
    # fix, not ours.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from mlflow.server.auth import routes as auth_routes
    from mlflow.server.fastapi_app import app as fastapi_app

Routes = set[tuple[str, str]]

# Spec sagemaker-mlflow-api.md section 5: the 61 sagemaker-mlflow actions and access levels.
READ, WRITE, LIST = "Read", "Write", "List"
SPEC_ACTIONS = {
    "AccessUI": READ,
    "CreateExperiment": WRITE,
    "CreateModelVersion": WRITE,
    "CreateRegisteredModel": WRITE,
    "CreateRun": WRITE,
    "DeleteExperiment": WRITE,
    "DeleteLoggedModel": WRITE,
    "DeleteLoggedModelTag": WRITE,
    "DeleteModelVersion": WRITE,
    "DeleteModelVersionTag": WRITE,
    "DeleteRegisteredModel": WRITE,
    "DeleteRegisteredModelAlias": WRITE,
    "DeleteRegisteredModelTag": WRITE,
    "DeleteRun": WRITE,
    "DeleteTag": WRITE,
    "DeleteTraceTag": WRITE,
    "DeleteTraces": WRITE,
    "EndTrace": WRITE,
    "FinalizeLoggedModel": WRITE,
    "GetDownloadURIForModelVersionArtifacts": READ,
    "GetExperiment": READ,
    "GetExperimentByName": READ,
    "GetLatestModelVersions": LIST,
    "GetLoggedModel": READ,
    "GetMetricHistory": READ,
    "GetModelVersion": READ,
    "GetModelVersionByAlias": READ,
    "GetRegisteredModel": READ,
    "GetRun": READ,
    "GetTraceInfo": READ,
    "ListArtifacts": LIST,
    "ListLoggedModelArtifacts": LIST,
    "LogBatch": WRITE,
    "LogInputs": WRITE,
    "LogLoggedModelParams": WRITE,
    "LogMetric": WRITE,
    "LogModel": WRITE,
    "LogOutputs": WRITE,
    "LogParam": WRITE,
    "RenameRegisteredModel": WRITE,
    "RestoreExperiment": WRITE,
    "RestoreRun": WRITE,
    "SearchExperiments": READ,
    "SearchLoggedModels": READ,
    "SearchModelVersions": READ,
    "SearchRegisteredModels": READ,
    "SearchRuns": READ,
    "SearchTraces": READ,
    "SetExperimentTag": WRITE,
    "SetLoggedModelTags": WRITE,
    "SetModelVersionTag": WRITE,
    "SetRegisteredModelAlias": WRITE,
    "SetRegisteredModelTag": WRITE,
    "SetTag": WRITE,
    "SetTraceTag": WRITE,
    "StartTrace": WRITE,
    "TransitionModelVersionStage": WRITE,
    "UpdateExperiment": WRITE,
    "UpdateModelVersion": WRITE,
    "UpdateRegisteredModel": WRITE,
    "UpdateRun": WRITE,
}

# Flask <name>, <path:name> and Starlette {name}, {name:path} parameters.
PARAMETER = re.compile(r"<(?:(\w+):)?\w+>|\{\w+(?::(\w+))?\}")


def concrete(template: str) -> str:
    """A request path that the route template matches."""

    def value(match: re.Match[str]) -> str:
        return "1/abc/artifacts/x.txt" if "path" in match.groups() else "x1"

    return PARAMETER.sub(value, template)


def handler_routes() -> Routes:
    return {(method, path) for path, _, methods in handlers.get_endpoints() for method in methods}


def flask_routes() -> Routes:
    return {
        (method, rule.rule)
        for rule in flask_app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")  # answered by Flask itself / the GET route
    }


def fastapi_routes() -> Routes:
    return {
        (method.upper(), path)
        for path, operations in fastapi_app.openapi()["paths"].items()
        for method in operations
    }


def action(name: str) -> Requirement:
    return Requirement(f"sagemaker-mlflow:{name}", Kind.ACTION)


def extension(name: str) -> Requirement:
    return Requirement(f"{EXTENSION_SERVICE}:{name}", Kind.ACTION)


def action_name(requirement: Requirement) -> str:
    assert requirement.action is not None
    return requirement.action.removeprefix("sagemaker-mlflow:")


def is_extension(requirement: Requirement) -> bool:
    return requirement.action is not None and requirement.action.startswith(f"{EXTENSION_SERVICE}:")


def test_the_committed_table_is_what_the_installed_mlflow_generates() -> None:
    # An MLflow upgrade that adds, removes or changes a route fails here, not in production.
    assert json.loads(TABLE_FILE.read_text()) == action_table.build(), (
        f"{TABLE_FILE.name} is stale for the installed MLflow: regenerate it with "
        "`python -m mlfleet.mlflow_api.action_table`, review the diff and decide what any new "
        "route needs (action_table.py), then commit the file"
    )


def test_the_daemon_never_imports_mlflow() -> None:
    # In a fresh interpreter: this test module has imported MLflow already.
    probe = (
        "import sys, mlfleet.daemon.app; "
        "from mlfleet.mlflow_api.actions import required_action; "
        "required_action('GET', '/'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_module_knows_the_61_actions_of_the_spec() -> None:
    assert len(SPEC_ACTIONS) == 61
    assert set(ACTIONS) == set(SPEC_ACTIONS)


@pytest.mark.parametrize(
    "routes", [handler_routes, flask_routes, fastapi_routes], ids=lambda f: f.__name__
)
def test_every_mlflow_route_needs_one_of_the_61_actions_or_is_denied(
    routes: Callable[[], Routes],
) -> None:
    listed = routes()
    assert {path.split("/")[1] for _, path in listed} >= {"api", "ajax-api"}
    undecided = []
    for method, template in sorted(listed):
        requirement = required_action(method, concrete(template))
        if requirement.kind is Kind.UNMAPPED or (
            requirement.kind is Kind.ACTION
            and action_name(requirement) not in SPEC_ACTIONS
            and not is_extension(requirement)
        ):
            undecided.append(f"{method} {template}: {requirement}")
    assert undecided == []


def test_every_action_is_reachable_from_a_route() -> None:
    routes = handler_routes() | flask_routes() | fastapi_routes()
    reached = {
        action_name(requirement)
        for method, template in routes
        if (requirement := required_action(method, concrete(template))).kind is Kind.ACTION
        and not is_extension(requirement)
    }
    assert reached == set(SPEC_ACTIONS)


def test_reads_need_read_actions_and_changes_need_write_actions() -> None:
    wrong = []
    for method, template in handler_routes() | flask_routes() | fastapi_routes():
        requirement = required_action(method, concrete(template))
        if requirement.kind is not Kind.ACTION or method == "POST":  # POST also searches
            continue
        if is_extension(requirement):
            assert is_write(requirement.action or "") == (method != "GET"), (method, template)
            continue
        level = SPEC_ACTIONS[action_name(requirement)]
        if (level == WRITE) != (method in ("PUT", "PATCH", "DELETE")):
            wrong.append(f"{method} {template}: {level} {requirement.action}")
    assert wrong == []


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/2.0/mlflow/runs/log-metric", action("LogMetric")),
        ("GET", "/ajax-api/2.0/mlflow/runs/get", action("GetRun")),
        ("GET", "/api/2.0/mlflow/runs/get?run_id=1", action("GetRun")),
        ("DELETE", "/api/2.0/mlflow/logged-models/abc", action("DeleteLoggedModel")),
        ("DELETE", "/api/2.0/mlflow/logged-models/m-1/tags/a.b", action("DeleteLoggedModelTag")),
        ("DELETE", "/api/2.0/mlflow/logged-models/m-1/tags/a%23b", action("DeleteLoggedModelTag")),
        ("POST", "/api/2.0/mlflow/logged-models/search", action("SearchLoggedModels")),
        ("POST", "/api/2.0/mlflow/logged-models", action("LogModel")),
        ("PATCH", "/api/3.0/mlflow/traces/tr-1/tags", action("SetTraceTag")),
        ("GET", "/api/3.0/mlflow/traces/tr-1", action("GetTraceInfo")),
        ("GET", "/api/3.0/mlflow/traces/get", action("GetTraceInfo")),
        ("POST", "/api/3.0/mlflow/traces/search", action("SearchTraces")),
        ("POST", "/v1/traces", action("StartTrace")),
        (
            "GET",
            "/api/2.0/mlflow/registered-models/get-latest-versions",
            action("GetLatestModelVersions"),
        ),
        (
            "GET",
            "/api/2.0/mlflow/model-versions/get-download-uri",
            action("GetDownloadURIForModelVersionArtifacts"),
        ),
        ("POST", "/api/2.0/mlflow/experiments/delete-experiment-tag", action("SetExperimentTag")),
        ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk", action("GetMetricHistory")),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/x.txt", action("GetRun")),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts?path=1/abc", action("ListArtifacts")),
        (
            "PUT",
            "/ajax-api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/x.txt",
            action("LogModel"),
        ),
        ("POST", "/api/2.0/mlflow-artifacts/mpu/create/1/abc/artifacts/x.bin", action("LogModel")),
        (
            "DELETE",
            "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/x.txt",
            action("DeleteRun"),
        ),
        ("GET", "/get-artifact?run_uuid=abc&path=x.txt", action("GetRun")),
        ("GET", "/model-versions/get-artifact", action("GetDownloadURIForModelVersionArtifacts")),
        ("POST", "/ajax-api/2.0/mlflow/upload-artifact", action("LogModel")),
        ("GET", "/", action("AccessUI")),
        ("GET", "/static-files/static/js/main.c2f5f8d4.js", action("AccessUI")),
        ("POST", "/graphql", action("SearchRuns")),
        ("GET", "/health", Requirement(None, Kind.PUBLIC)),
        ("GET", "/version", Requirement(None, Kind.PUBLIC)),
        ("GET", "/api/3.0/mlflow/server-info", Requirement(None, Kind.PUBLIC)),
        # GenAI data: GET or search reads, anything else writes.
        ("GET", "/api/3.0/mlflow/datasets/d-1/records", action("GetExperiment")),
        ("POST", "/api/3.0/mlflow/datasets/d-1/records", action("LogInputs")),
        ("POST", "/api/3.0/mlflow/issues/search", action("SearchTraces")),
        ("POST", "/api/3.0/mlflow/review-queues/get-or-create-user", action("SetTraceTag")),
        # HEAD is served by the GET route.
        ("HEAD", "/api/2.0/mlflow-artifacts/artifacts/1/x.txt", action("GetRun")),
        # The UI's own calls that MLflow answers without going out (actions.py says why).
        ("GET", "/ajax-api/2.0/mlflow/gateway-proxy", action("AccessUI")),
        ("POST", "/ajax-api/2.0/mlflow/gateway-proxy", action("AccessUI")),
        ("GET", "/ajax-api/3.0/mlflow/assistant/config", action("AccessUI")),
        ("GET", "/ajax-api/3.0/mlflow/assistant/providers", action("AccessUI")),
        # MLflow sees the path percent-decoded once, so does the check.
        ("POST", "/api/2.0/mlflow/runs%2Flog-metric", action("LogMetric")),
        # MLflow 3's AI gateway and scorers: actions of mlfleet's own namespace.
        ("POST", "/api/3.0/mlflow/gateway/secrets/create", extension("CreateGatewaySecret")),
        ("GET", "/ajax-api/3.0/mlflow/gateway/secrets/list", extension("ListGatewaySecretInfos")),
        ("POST", "/gateway/openai/v1/chat/completions", extension("InvokeGatewayEndpoint")),
        ("POST", "/gateway/my-chat/mlflow/invocations", extension("InvokeGatewayEndpoint")),
        ("POST", "/gateway/proxy/my-chat/v1/chat/completions", extension("InvokeGatewayEndpoint")),
        (
            "POST",
            "/gateway/gemini/v1beta/models/my-chat:generateContent",
            extension("InvokeGatewayEndpoint"),
        ),
        ("GET", "/gateway/mlflow/v1/models", extension("ListGatewayEndpoints")),
        (
            "GET",
            "/ajax-api/3.0/mlflow/gateway/supported-providers",
            extension("ListGatewaySupportedProviders"),
        ),
        ("POST", "/api/3.0/mlflow/scorers/register", extension("RegisterScorer")),
        ("GET", "/api/3.0/mlflow/scorers/list", extension("ListScorers")),
        ("POST", "/ajax-api/2.0/mlflow/runs/create-promptlab-run", action("CreateRun")),
        # MLflow's jobs, run in the worker's sandbox.
        ("POST", "/ajax-api/3.0/mlflow/scorer/invoke", extension("InvokeScorer")),
        ("POST", "/ajax-api/3.0/mlflow/genai/evaluate/invoke", extension("InvokeEvaluation")),
        ("POST", "/ajax-api/3.0/mlflow/issues/invoke", extension("InvokeIssueDetection")),
        ("GET", "/ajax-api/3.0/mlflow/jobs/j-1", extension("GetJob")),
        ("GET", "/ajax-api/3.0/jobs/j-1", extension("GetJob")),
        ("PATCH", "/ajax-api/3.0/mlflow/jobs/cancel/j-1", extension("CancelJob")),
        ("POST", "/ajax-api/3.0/jobs/search", extension("SearchJobs")),
        ("PUT", "/api/3.0/mlflow/scorers/online-config", extension("UpdateOnlineScoringConfig")),
        (
            "POST",
            "/api/3.0/mlflow/prompt-optimization/jobs",
            extension("CreatePromptOptimizationJob"),
        ),
    ],
)
def test_spot_checks(method: str, path: str, expected: Requirement) -> None:
    assert required_action(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # Any job function with any parameters: jobs start only by their feature's route.
        ("POST", "/ajax-api/3.0/jobs/"),
        ("POST", "/ajax-api/3.0/mlflow/assistant/message"),
        ("PUT", "/ajax-api/3.0/mlflow/assistant/config"),
        ("GET", "/ajax-api/3.0/mlflow/assistant/providers/ollama/models"),
        ("GET", "/api/3.0/mlflow/mcp-servers"),
        ("POST", "/ajax-api/3.0/mlflow/demo/generate"),
        ("POST", "/api/2.0/mlflow/webhooks"),
        ("POST", "/api/2.0/mlflow/webhooks/w-1/test"),
        ("POST", "/api/3.0/mlflow/workspaces"),
        ("POST", "/ajax-api/3.0/mlflow/ui-telemetry"),
        # Databricks-only RPCs that MLflow answers with 404.
        ("GET", "/api/2.0/mlflow/unified-traces"),
    ],
)
def test_routes_a_tenant_must_never_reach_are_denied(method: str, path: str) -> None:
    requirement = required_action(method, path)
    assert requirement.kind is Kind.DENIED
    assert requirement.denied and requirement.action is None and requirement.reason
    assert requirement.refusal == (403, "PERMISSION_DENIED")


def test_mlflow_user_and_role_administration_is_absent() -> None:
    # Workers never run MLflow's auth app: these are answered 404, as MLflow answers them.
    paths = [
        value
        for name, value in vars(auth_routes).items()
        if name.isupper() and ("USER" in name or "ROLE" in name or name == "SIGNUP")
    ]
    assert len(paths) > 20
    for path in paths:
        for method in ("GET", "POST", "PATCH", "DELETE"):
            requirement = required_action(method, path)
            assert requirement.kind is Kind.ABSENT, (method, path)
            assert requirement.denied and requirement.refusal == (404, "ENDPOINT_NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/2.0/mlflow/new-feature"),
        ("GET", "/ajax-api/3.0/mlflow/new-feature"),
        ("POST", "/api/2.0/mlflow/runs/log-metric/extra"),
        ("DELETE", "/api/2.0/mlflow/runs/get"),
        ("OPTIONS", "/api/2.0/mlflow/runs/get"),
        ("GET", "/favicon.ico"),
    ],
)
def test_unmapped_routes_fail_closed(method: str, path: str) -> None:
    requirement = required_action(method, path)
    assert requirement.kind is Kind.UNMAPPED
    assert requirement.denied and requirement.action is None and requirement.reason


@pytest.mark.parametrize(
    "path",
    [
        # A hop that resolves these (HTTP clients and servers do) would serve a route other
        # than the one checked.
        "/api/2.0/mlflow-artifacts/artifacts/../../mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2E%2E/mlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/1%2F..%2F..%2Fmlflow/registered-models/delete",
        "/api/2.0/mlflow-artifacts/artifacts/./1/x.txt",
        "//api/2.0/mlflow/registered-models/delete",
        "/api/2.0/mlflow/registered-models/delete/",
        "api/2.0/mlflow/registered-models/delete",
        # HTTP clients drop fragments: DeleteLoggedModelTag checked, DeleteLoggedModel served.
        "/api/2.0/mlflow/logged-models/m-1#/tags/a",
    ],
)
def test_paths_that_would_be_rewritten_are_denied(path: str) -> None:
    assert required_action("DELETE", path).kind is Kind.DENIED
