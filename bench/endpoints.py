"""Benchmark deployment; write bench/results/endpoints-latest.{json,md}.

Run: ``.venv/bin/python bench/endpoints.py [--quick] [--out bench/results] [--keep]``

One daemon (SQLite, temporary data dir, loopback only), one Small tracking server, one
scikit-learn LogisticRegression logged and registered through the gateway. Measured:

1. CreateEndpoint → ``InService`` (DescribeEndpoint polled every 50 ms) for endpoints of one and
   of two instances, deployed from the model's ``models:/`` URI (each instance downloads the
   model from the tracking server and loads it in its own process); several rounds each.
2. InvokeEndpoint through the real ``boto3.client("sagemaker-runtime")``, closed loop, one
   client per thread, a 5-row JSON payload, at concurrency 1 and 8, against the one-instance
   and the two-instance endpoint: throughput, p50 and p99 (client-side, boto3 included).

Daemon handling, the options and the machine description come from bench/common.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import BenchDaemon, loadavg, machine_info, main_of

ROLE = "arn:aws:iam::123456789012:role/mlfleet"
FEATURES = np.array([[0.1, 1.0], [2.0, -1.0], [0.5, 0.5], [-3.0, 2.0], [1.5, 0.2]])
PAYLOAD = json.dumps({"inputs": FEATURES.tolist()}).encode()


def wait_settled(sm: Any, name: str, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(sm.describe_endpoint(EndpointName=name)["EndpointStatus"])
        if status in ("InService", "Failed"):
            return status
        time.sleep(0.05)
    raise RuntimeError(f"endpoint {name} did not settle in {timeout:.0f} s")


def register_model(daemon: BenchDaemon, server: str) -> str:
    """Train and log a classifier through the gateway; its models:/ URI."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    key, secret = daemon.credentials()
    os.environ.update({"MLFLOW_TRACKING_USERNAME": key, "MLFLOW_TRACKING_PASSWORD": secret})
    mlflow.set_tracking_uri(f"{daemon.url}/mlflow/{server}")
    mlflow.set_experiment("bench-endpoints")
    with mlflow.start_run():
        model = LogisticRegression().fit(FEATURES, [0, 1, 0, 1, 1])
        mlflow.sklearn.log_model(model, name="model", registered_model_name="bench")
    return "models:/bench/1"


def deploy(sm: Any, uri: str, server: str, name: str, instances: int) -> float:
    sm.create_model(
        ModelName=name,
        PrimaryContainer={"ModelDataUrl": uri, "Environment": {"MLFLEET_TRACKING_SERVER": server}},
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"VariantName": "main", "ModelName": name, "InitialInstanceCount": instances}
        ],
    )
    started = time.perf_counter()
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    status = wait_settled(sm, name)
    elapsed = time.perf_counter() - started
    if status != "InService":
        raise RuntimeError(f"{name}: {sm.describe_endpoint(EndpointName=name)}")
    return elapsed


def load(daemon: BenchDaemon, endpoint: str, concurrency: int, seconds: float) -> dict[str, Any]:
    clients = [daemon.client("sagemaker-runtime") for _ in range(concurrency)]
    for client in clients:  # connection set-up is not what a steady caller pays
        client.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=PAYLOAD)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def caller(client: Any) -> None:
        mine: list[float] = []
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                client.invoke_endpoint(
                    EndpointName=endpoint, ContentType="application/json", Body=PAYLOAD
                )["Body"].read()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors[0],
        "throughput": len(latencies) / window,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    rounds, seconds = (1, 3.0) if quick else (3, 15.0)
    results: dict[str, Any] = {"quick": quick, "machine": machine_info()}
    with BenchDaemon(data_dir / "daemon") as daemon:
        daemon.start()
        sm = daemon.sagemaker()
        sm.create_mlflow_tracking_server(
            TrackingServerName="bench",
            ArtifactStoreUri=f"file://{daemon.artifacts}",
            RoleArn=ROLE,
        )
        while sm.describe_mlflow_tracking_server(TrackingServerName="bench")[
            "TrackingServerStatus"
        ] not in ("Created", "CreateFailed"):
            time.sleep(0.1)
        uri = register_model(daemon, "bench")
        in_service: dict[str, list[float]] = {"1": [], "2": []}
        for instances in (1, 2):
            for i in range(rounds):
                name = f"e{instances}-{i}"
                in_service[str(instances)].append(deploy(sm, uri, "bench", name, instances))
                if i < rounds - 1:
                    sm.delete_endpoint(EndpointName=name)
        results["create_to_in_service_seconds"] = in_service
        results["invoke"] = [
            {"instances": instances, **load(daemon, f"e{instances}-{rounds - 1}", c, seconds)}
            for instances in (1, 2)
            for c in (1, 8)
        ]
    results["loadavg_at_end"] = loadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Deployment benchmark",
        "",
        f"{m['date']}, {m['nproc']} cores ({m['cpu_model']}), commit {m['git_commit']}, "
        f"load at start {' '.join(m['loadavg_at_start'])}, quick={results['quick']}",
        "",
        "| CreateEndpoint → InService | rounds (s) | median (s) |",
        "|---|---|---|",
    ]
    for instances, values in results["create_to_in_service_seconds"].items():
        rounded = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {instances} instance(s) | {rounded} | {float(np.median(values)):.2f} |")
    lines += [
        "",
        "| InvokeEndpoint (boto3 sagemaker-runtime) | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for row in results["invoke"]:
        lines.append(
            f"| {row['instances']} instance(s), c={row['concurrency']} | "
            f"{row['throughput']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['errors']} |"
        )
    lines += ["", f"load average at the end: {' '.join(results['loadavg_at_end'])}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    main_of(
        __doc__, "a smoke run: one round, 3-second load cases", "endpoints", run_benchmark, markdown
    )


if __name__ == "__main__":
    main()
