"""Which of MLflow's two apps the worker hands a request to (runtime/mlflow_worker.py).

MLflow's server modules read their configuration from the environment when first imported, so
the apps are built in a fresh interpreter, as the worker builds them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR

REQUESTS = [
    ("POST", "/api/2.0/mlflow/runs/log-metric"),
    ("POST", "/api/2.0/mlflow/runs/search"),
    ("GET", "/ajax-api/2.0/mlflow/runs/get"),
    ("GET", "/"),
    ("GET", "/static-files/index.html"),
    ("GET", "/health"),
    ("GET", "/api/3.0/mlflow/server-info"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pkl"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pkl"),
    ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pkl"),
    ("POST", "/v1/traces"),
]

DECIDE = """
import json, sys
from mlfleet.runtime.mlflow_worker import build_app
app = build_app()
print(json.dumps([app.is_native(m, p) for m, p in json.loads(sys.argv[1])]))
"""


def test_only_requests_no_fastapi_route_claims_go_straight_to_flask(tmp_path: Path) -> None:
    env = {**os.environ, BACKEND_STORE_URI_ENV_VAR: f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", DECIDE, json.dumps(REQUESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    native = dict(zip(REQUESTS, json.loads(done.stdout.strip().splitlines()[-1]), strict=True))
    to_flask = [request for request, is_native in native.items() if not is_native]
    assert to_flask == [
        ("POST", "/api/2.0/mlflow/runs/log-metric"),
        ("POST", "/api/2.0/mlflow/runs/search"),
        ("GET", "/ajax-api/2.0/mlflow/runs/get"),
        ("GET", "/"),
        ("GET", "/static-files/index.html"),
    ]
    # A native route's path with a method it lacks goes to the FastAPI app too, which passes it
    # on to Flask as MLflow always does: the worker never guesses a route's owner.
    assert native[("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pkl")]
