"""Serving for tests: a small scikit-learn model logged and registered through the gateway, and
waiting for an endpoint to settle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from support.aws import unique
from support.daemon import Daemon
from support.waiting import wait_for

TAG = "sagemaker.model_package_arn"
FEATURES = np.array([[0.1, 1.0], [2.0, -1.0], [0.5, 0.5], [-3.0, 2.0], [1.5, 0.2]])


def train_and_log(daemon: Daemon, server: str, labels: list[int]) -> tuple[str, Any]:
    """Train a classifier, log and register it through the gateway: its name (version 1)."""
    key, secret = daemon.credentials
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", key)
        env.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        mlflow.set_tracking_uri(f"{daemon.url}/mlflow/{server}")
        # Not mlflow.set_experiment: the active experiment would outlive this call, and a later
        # test's start_run on another server would look for it there.
        experiment_id = MlflowClient().create_experiment(unique("deploy"))
        model = LogisticRegression().fit(FEATURES, labels)
        name = unique("iris")
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.sklearn.log_model(model, name="model", registered_model_name=name)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    return name, model


def log_model(daemon: Daemon, server: str, labels: list[int]) -> tuple[str, Any]:
    """train_and_log on a server with automatic registration: the version's package ARN."""
    name, model = train_and_log(daemon, server, labels)
    key, secret = daemon.credentials
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", key)
        env.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        client = MlflowClient(tracking_uri=f"{daemon.url}/mlflow/{server}")
        return str(client.get_model_version(name, "1").tags[TAG]), model


def wait_endpoint(daemon: Daemon, name: str) -> dict[str, Any]:
    sm = daemon.client()

    def settled() -> dict[str, Any] | None:
        desc = sm.describe_endpoint(EndpointName=name)
        return desc if desc["EndpointStatus"] in ("InService", "Failed") else None

    return wait_for(settled, 180, 0.2, f"endpoint {name} to settle")


def scoring_pids(endpoint: str, variant: str) -> list[int]:
    """The scoring processes of one variant, found by the model folder on their command line
    (the Python process itself, not the sandbox that started it)."""
    folder, leaf = f"/endpoints/{endpoint.lower()}/".encode(), f"/{variant}/model-".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            ours = folder in cmdline and leaf in cmdline
            if cmdline.split(b"\0")[1:3] == [b"-m", b"mlfleet.runtime.scoring_worker"] and ours:
                pids.append(int(proc.name))
    return pids
