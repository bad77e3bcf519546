"""The real MLflow client, one log_metric call at a time like a training loop; not a benchmark.

bench/run.py and bench/sandbox.py measure with it.

``mlflow_client_run`` starts this file as a training-loop process of its own (a fresh
interpreter, so env vars and MLflow's cached sessions don't leak between runs):

    .venv/bin/python bench/clients.py --client-loop URI,URI,... RUN_ID,RUN_ID,... CALLS

which warms up with 5 calls per URI, then logs CALLS metrics to each URI's run, taking turns
between the URIs call by call, and prints each URI's call latencies as one line of JSON. A URI
``unix:<path>`` names a worker's Unix socket, reached through a ``Forwarder`` (the MLflow client
speaks only http://).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import NO_TELEMETRY, Plan, median, percentile

# A tracking URI of the client loop that names a worker's Unix socket: ``unix:<path>``.
UNIX_URI = "unix:"


class Forwarder:
    """127.0.0.1 TCP to a worker's Unix socket, inside the client-loop process: the MLflow
    client speaks only http://. Each connection is pumped by two threads (one per direction),
    so a direct call pays one more copy each way and two thread wake-ups that the gateway
    path, whose connection the worker itself serves after the first call, does not.
    ``cpu_seconds`` is what the pumps used, about the size of that handicap."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.pumps: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            worker = socket.socket(socket.AF_UNIX)
            worker.connect(self.path)
            for source, sink in ((client, worker), (worker, client)):
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                pump.start()
                self.pumps.append(pump)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def cpu_seconds(self) -> float:
        """CPU time of the pumps still running (each connection's, until it closes)."""
        total = 0.0
        for pump in self.pumps:
            if pump.ident is not None and pump.is_alive():
                with contextlib.suppress(OSError):
                    total += time.clock_gettime(time.pthread_getcpuclockid(pump.ident))
        return total


def client_loop_child(uris: list[str], run_ids: list[str], calls: int) -> None:
    """Runs in a subprocess: log ``calls`` metrics like a training loop to each tracking URI
    (to its run: ``run_ids`` in the same order), taking turns call by call, and print each
    URI's call latencies as JSON.

    Taking turns puts every mode under the same machine at the same moment: on a shared 2-core
    box, throughput drifts by a third between minutes, far more than the margins judged here.
    """
    from mlflow import MlflowClient

    forwarders = {u: Forwarder(u.removeprefix(UNIX_URI)) for u in uris if u.startswith(UNIX_URI)}
    clients = [
        MlflowClient(tracking_uri=forwarders[uri].url if uri in forwarders else uri) for uri in uris
    ]
    # connection set-up and lazy imports are not what a loop pays per step
    for client, run_id in zip(clients, run_ids, strict=True):
        for i in range(5):
            client.log_metric(run_id, "client_warm", float(i), step=i)
    forwarded_from = {uri: forwarder.cpu_seconds() for uri, forwarder in forwarders.items()}
    latencies: list[list[float]] = [[] for _ in clients]
    deadline = time.perf_counter() + 120
    for i in range(calls):
        turn = range(len(clients)) if i % 2 == 0 else reversed(range(len(clients)))
        for index in turn:
            sent = time.perf_counter()
            clients[index].log_metric(run_ids[index], f"client_{index}", float(i), step=i)
            latencies[index].append(time.perf_counter() - sent)
        if time.perf_counter() > deadline:
            break
    forwarder_cpu = [
        forwarders[uri].cpu_seconds() - forwarded_from[uri] if uri in forwarders else None
        for uri in uris
    ]
    print(json.dumps({"latencies": latencies, "forwarder_cpu_s": forwarder_cpu}))


def mlflow_client_run(
    modes: Mapping[str, str],
    run_id: str | list[str],
    calls: int,
    auth: tuple[str, str] | None,
    plugin_endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """One run of the client loop over ``modes`` (name -> tracking URI, or ``unix:<socket>``
    for a worker reached through a ``Forwarder``) in its own interpreter, so env vars and
    MLflow's cached sessions don't leak; its figures per mode. ``run_id``: the run every mode
    logs to, or one per mode in the order of ``modes``.

    With ``auth`` the client sends HTTP Basic to every URI: a worker reached directly ignores
    the header, so only the gateway checks it. With ``plugin_endpoint`` the URIs are ARNs and
    the sagemaker-mlflow plugin signs each call with SigV4 (``auth`` as AWS keys).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_", "AWS_")) and k != "MLFLOW_TRACKING_URI"
    }
    env.update(NO_TELEMETRY)
    if plugin_endpoint is not None and auth is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = auth
        env["AWS_DEFAULT_REGION"] = "us-east-1"
        env["SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT"] = plugin_endpoint
        # The plugin's request-header provider reads the tracking URI from the environment.
        env["MLFLOW_TRACKING_URI"] = next(iter(modes.values()))
    elif auth is not None:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = auth
    run_ids = [run_id] * len(modes) if isinstance(run_id, str) else run_id
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client-loop",
            ",".join(modes.values()),
            ",".join(run_ids),
            str(calls),
        ],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"MLflow client ({', '.join(modes)}) failed: {done.stderr[-2000:]!r}")
    raw = json.loads(done.stdout.decode().strip().splitlines()[-1])
    results = []
    for mode, spent, forwarded in zip(modes, raw["latencies"], raw["forwarder_cpu_s"], strict=True):
        latencies = sorted(spent)
        result = {
            "mode": mode,
            "calls": len(latencies),
            # Calls per second of time spent waiting for this mode's answers.
            "calls_per_s": len(latencies) / sum(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
        }
        if forwarded is not None:
            result["forwarder_cpu_ms_per_call"] = forwarded * 1000 / len(latencies)
        print(
            f"  MLflow client {mode:7} {result['calls_per_s']:6.1f} calls/s  "
            f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms",
            flush=True,
        )
        results.append(result)
    return results


def mlflow_client_rounds(
    direct: Path, gateway: str, run_id: str, plan: Plan, auth: tuple[str, str]
) -> list[dict[str, Any]]:
    """``target_repeats`` runs taking turns between gateway and direct (the worker's socket
    ``direct``, through a ``Forwarder``); medians per mode."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    for _ in range(plan.target_repeats):
        for result in mlflow_client_run(
            {"gateway": gateway, "direct": f"{UNIX_URI}{direct}"}, run_id, plan.client_calls, auth
        ):
            runs[result["mode"]].append(result)
    return [client_summary(mode, rounds) for mode, rounds in runs.items()]


def client_summary(mode: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of one mode, with the runs kept for the report."""
    return {
        "mode": mode,
        "calls_per_s": median([r["calls_per_s"] for r in rounds]),
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--client-loop",
        nargs=3,
        required=True,
        metavar=("URIS", "RUN_IDS", "CALLS"),
        help="comma-separated tracking URIs, their runs in the same order, calls per URI",
    )
    uris, run_ids, calls = parser.parse_args().client_loop
    client_loop_child(uris.split(","), run_ids.split(","), int(calls))


if __name__ == "__main__":
    main()
