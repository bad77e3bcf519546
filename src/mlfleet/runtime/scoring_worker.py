"""One endpoint instance: MLflow's pyfunc scoring server for one model, in one uvicorn process.

The daemon runs this rather than ``mlflow models serve`` because that command keeps a parent
process next to the uvicorn it starts, which would outlive a killed daemon (only the direct
child gets PR_SET_PDEATHSIG). The model is downloaded once into the instance's folder, from
the tracking server whose internal URL is ``MLFLOW_TRACKING_URI``; a restarted instance reuses
the download, so it comes back even while its tracking server is down.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args()

    import mlflow.artifacts
    import uvicorn
    from mlflow.pyfunc import scoring_server

    model_dir = Path(args.model_dir)
    if not (model_dir / "MLmodel").is_file():
        # Into a sibling first: an interrupted download must not pass for a complete model.
        partial = model_dir.with_name(model_dir.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(args.model_uri, dst_path=str(partial)))
        local.rename(model_dir)
    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(str(model_dir)))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
