"""MLflow's server-side jobs, run by a tracking server's worker: judges run from the UI,
evaluations started from the UI, online scoring, issue detection, prompt optimization.

A request such as ``scorer/invoke`` stores a job in the server's database and answers with its
id; the UI then polls ``jobs/<id>``. ``mlflow server`` runs jobs with processes of its own: a
Huey consumer per job function and one for periodic tasks, eight Python processes beside each
server. A worker runs MLflow's executor engine instead (``MLFLOW_SERVER_JOB_EXECUTION_ENGINE``
= ``executor``) as two threads: MLflow's claim loop over the jobs table, and the online-scoring
scheduler, once a minute as MLflow schedules it. Each job is a subprocess of the worker, inside
its sandbox: the server's database and store, its egress, nothing more. Only one worker per
server runs them (runtime.local): at its start the claim loop takes back the jobs an earlier
loop left running, which must be jobs that died with that loop's worker.

Only MLflow's own job functions run. Scorers defined by code (``@scorer``) stay refused, by
MLflow itself (``MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS`` off): their code would run beside the
database where the worker keeps the data events the daemon has not had yet.

Releases before MLflow's executor engine (every 2.x, the early 3.x) have no server-side jobs:
``available`` says so, and their workers run none.

A judge that names an AI-gateway endpoint (``gateway:/name``) calls the server's gateway over
HTTP at ``MLFLOW_GATEWAY_URI``; the worker's egress forwarder serves that host from the
worker's own socket (runtime.egress_forwarder).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from typing import Any

from mlfleet.runtime.egress_forwarder import OWN_GATEWAY_HOST

ONLINE_SCORING_SECONDS = 60.0
# How often the claim loop looks for new jobs. MLflow's loop looks every second, which took an
# idle worker from 0.14 to 0.3 s of CPU a minute; every 5 s, 0.16 (60 s samples, this
# machine). A judge's run takes seconds anyway.
CLAIM_SECONDS = 5.0

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the installed MLflow runs jobs with the executor engine."""
    try:
        return importlib.util.find_spec("mlflow.server.jobs._executor_runner") is not None
    except ModuleNotFoundError:  # no mlflow.server.jobs at all
        return False


def configure(own_gateway: bool) -> None:
    """MLflow's job settings, before MLflow reads them; ``own_gateway`` when the worker's
    forwarder serves the gateway's host (it has an egress proxy)."""
    from mlflow.server.constants import MLFLOW_SERVER_UP_TIME

    os.environ.update(
        {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true",
            "MLFLOW_SERVER_JOB_EXECUTION_ENGINE": "executor",
            "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS": "false",
            # Jobs created before this are a previous runner's (recovery).
            MLFLOW_SERVER_UP_TIME: str(int(time.time() * 1000)),
        }
    )
    if own_gateway:
        os.environ["MLFLOW_GATEWAY_URI"] = f"http://{OWN_GATEWAY_HOST}"


class JobRunner:
    """The claim loop and the online-scoring scheduler, on threads of the worker."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._executor: Any = None

    def start(self) -> None:
        from mlflow.server.jobs._executor_runner import _select_executor, run_executor_loop

        self._executor = _select_executor()
        self._executor.start_executor()
        threading.Thread(
            target=run_executor_loop,
            args=(self._executor, self._stopping, CLAIM_SECONDS),
            name="mlflow-jobs",
            daemon=True,
        ).start()
        threading.Thread(
            target=self._schedule_online_scoring, name="mlflow-online-scoring", daemon=True
        ).start()

    def stop(self) -> None:
        """Stop claiming, and end the jobs running (they are run again at the next start)."""
        self._stopping.set()
        if self._executor is not None:
            self._executor.stop_executor()

    def _schedule_online_scoring(self) -> None:
        from mlflow.genai.scorers.job import run_online_scoring_scheduler

        while not self._stopping.wait(ONLINE_SCORING_SECONDS):
            try:
                run_online_scoring_scheduler()
            except Exception:
                log.exception("MLflow's online scoring scheduler failed")
