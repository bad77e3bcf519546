"""Create a fully migrated, empty MLflow metadata database (run in a child process).

Building the schema costs seconds of MLflow's Alembic migrations; mlfleet does it once per
MLflow version into a template and copies the template for each new tracking server.
"""

from __future__ import annotations

import sys


def main() -> None:
    uri = sys.argv[1]
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as RegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # The tracking store runs the migrations and creates the Default experiment; the registry
    # store verifies the same schema.
    SqlAlchemyStore(uri, "mlflow-artifacts:/")
    RegistryStore(uri)


if __name__ == "__main__":
    main()
