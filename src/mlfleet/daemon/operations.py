"""Every operation mlfleet implements, one table per part: what the endpoints serve, what the
console's simulator lists, and what the managed policies must cover."""

from __future__ import annotations

from typing import Any

from mlfleet.api.operations import OperationTable
from mlfleet.apps.responses import OPERATIONS as MLFLOW_APPS
from mlfleet.audit.responses import OPERATIONS as CLOUDTRAIL
from mlfleet.backups.responses import OPERATIONS as BACKUPS
from mlfleet.deploy.responses import OPERATIONS as DEPLOYMENT
from mlfleet.deploy.responses import RUNTIME_OPERATIONS as SAGEMAKER_RUNTIME
from mlfleet.events.responses import OPERATIONS as EVENTBRIDGE
from mlfleet.fleet.responses import OPERATIONS as TRACKING_SERVERS
from mlfleet.iam.responses import OPERATIONS as IAM
from mlfleet.iam.responses import STS_OPERATIONS as STS
from mlfleet.registry.responses import OPERATIONS as MODEL_REGISTRY

OPERATION_TABLES: tuple[OperationTable[Any], ...] = (
    TRACKING_SERVERS,
    MLFLOW_APPS,
    MODEL_REGISTRY,
    DEPLOYMENT,
    SAGEMAKER_RUNTIME,
    EVENTBRIDGE,
    IAM,
    STS,
    CLOUDTRAIL,
    BACKUPS,
)
# What the console's policy simulator offers for SageMaker: every sagemaker: action mlfleet serves.
SAGEMAKER_ACTIONS = sorted(
    op.action
    for table in OPERATION_TABLES
    if table.service == "sagemaker"
    for op in table.operations
)

__all__ = [
    "BACKUPS",
    "CLOUDTRAIL",
    "DEPLOYMENT",
    "EVENTBRIDGE",
    "IAM",
    "MLFLOW_APPS",
    "MODEL_REGISTRY",
    "OPERATION_TABLES",
    "SAGEMAKER_ACTIONS",
    "SAGEMAKER_RUNTIME",
    "STS",
    "TRACKING_SERVERS",
]
