"""One MLflow tracking-server worker: a single uvicorn process serving MLflow's own app.

The daemon runs this instead of ``mlflow server`` because the CLI keeps a parent process
(~270 MB RSS) alive next to its workers and would spawn a job runner; the environment it hands
its workers is reproduced here from MLflow's own constants, so upgrades keep working.
A single-process uvicorn binds its own TCP socket, which keeps TCP_NODELAY on accepted
connections (see spec/baseline-perf.md, behaviour 1).
"""

from __future__ import annotations

import argparse
import os
import uuid

BACKEND_STORE_ENV = "MLFLEET_BACKEND_STORE_URI"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    # Only identifies the process in `ps`; the store URI comes from the environment because
    # it may carry a database password, and command lines are world-readable.
    parser.add_argument("--server-dir", required=True)
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--boot-id", default=uuid.uuid4().hex)
    args = parser.parse_args()

    from mlflow.environment_variables import (
        _MLFLOW_IN_JOB_EXECUTOR,
        _MLFLOW_SERVER_BOOT_ID,
        _MLFLOW_SGI_NAME,
    )
    from mlflow.server.constants import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )

    os.environ.update(
        {
            BACKEND_STORE_URI_ENV_VAR: os.environ[BACKEND_STORE_ENV],
            REGISTRY_STORE_URI_ENV_VAR: os.environ[BACKEND_STORE_ENV],
            ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
            SERVE_ARTIFACTS_ENV_VAR: "true",
            ARTIFACTS_DESTINATION_ENV_VAR: args.artifacts_destination,
            _MLFLOW_SERVER_BOOT_ID.name: args.boot_id,
            _MLFLOW_IN_JOB_EXECUTOR.name: "false",
            _MLFLOW_SGI_NAME.name: "uvicorn",
        }
    )

    import uvicorn

    uvicorn.run(
        "mlflow.server.fastapi_app:app",
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
