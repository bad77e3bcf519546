"""One endpoint instance: MLflow's pyfunc scoring server for one model, in one uvicorn process.

The daemon runs this rather than ``mlflow models serve`` because that command keeps a parent
process next to the uvicorn it starts. The model was downloaded beforehand into the instance's
folder (runtime.model_fetch): the instance runs the model's code confined, with no network,
and serves on a Unix socket that only the daemon can reach.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args()

    import uvicorn
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(args.model_dir))
    uvicorn.run(app, uds=args.socket, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
