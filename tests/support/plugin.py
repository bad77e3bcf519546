"""The sagemaker-mlflow plugin set up as a SageMaker notebook is, against a daemon."""

from __future__ import annotations

import boto3
import pytest
from mlflow import MlflowClient
from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client
from mlflow.tracking._tracking_service import utils as tracking_utils

from support.daemon import Daemon


def as_notebook(daemon: Daemon, monkeypatch: pytest.MonkeyPatch, arn: str) -> MlflowClient:
    """An MLflow client with ``arn`` (a tracking server's or an App's) as tracking URI and the
    daemon's AWS config and credentials files (what `mlfleet up` writes): its artifacts go
    through the daemon's S3 endpoint."""
    for name, value in daemon.cli_env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", daemon.url)
    # A notebook sets these before boto3 first reads its configuration: the test process's
    # default session and MLflow's cached S3 clients are made again from them.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    _cached_get_s3_client.cache_clear()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", arn)
    # What mlflow.set_tracking_uri sets, put back after the test: a later test's client must
    # not inherit this one's server.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", arn)
    return MlflowClient()
