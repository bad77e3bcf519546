"""Benchmark a backup, a restore and an in-place MLflow upgrade of a tracking server with
10 k runs; write bench/results/backups-latest.{json,md}.

Run: ``.venv/bin/python bench/backups.py [--quick] [--out bench/results] [--keep]``

A Small server on MLflow ``OLD_RELEASE`` (created first: its environment is installed, timed)
is filled through the MLflow client (HTTP Basic, through the gateway): ``runs``
runs, each with 5 params and 20 metrics in one LogBatch, and ``artifacts`` files of 1 MiB of
random bytes. Then ``CreateTrackingServerBackup`` is timed until Describe says Completed, and
``RestoreTrackingServerBackup`` until the new server is Created (database and every artifact
copied and checked); throughput is what each moved (database + artifacts) per second. A second
backup, with nothing new, shows what the content-addressed objects save. Last, the server is
upgraded in place to the MLflow installed beside mlfleet (UpdateTrackingServerMlflowVersion:
backup, migrations, probe), timed until Updated.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path
from typing import Any

from common import (
    BenchDaemon,
    create_server,
    finish_results,
    header,
    main_of,
    new_results,
    status_of,
    tracking_url,
)

MIB = 1024 * 1024
TIMEOUT = 1800.0
OLD_RELEASE = "2.22"


def fill(url: str, auth: tuple[str, str], runs: int, artifacts: int, folder: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth
    client = MlflowClient(url)
    experiment = client.create_experiment("filled")
    now = int(time.time() * 1000)
    first = ""
    for number in range(runs):
        run = client.create_run(experiment).info.run_id
        first = first or run
        client.log_batch(
            run,
            metrics=[Metric(f"m{i}", float(number + i), now, 0) for i in range(20)],
            params=[Param(f"p{i}", str(i)) for i in range(5)],
        )
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(artifacts):
        (folder / f"blob-{number}.bin").write_bytes(os.urandom(MIB))
    client.log_artifacts(first, str(folder), artifact_path="blobs")


def until(check: Any, what: str) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < TIMEOUT:
        if check():
            return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(what)


def run_benchmark(data_dir: Path, quick: bool) -> dict[str, Any]:
    runs, artifacts = (500, 20) if quick else (10_000, 200)
    results = new_results("backups", quick)
    results["plan"] = {"runs": runs, "artifact_files": artifacts, "artifact_mib": artifacts}
    started = time.perf_counter()
    daemon = BenchDaemon(data_dir / "mlfleet")
    try:
        daemon.start()
        sm, backups = daemon.sagemaker(), daemon.client("mlfleet")
        results["create_old_release_s"] = create_server(
            sm, "filled", daemon.artifacts, mlflow_version=OLD_RELEASE
        )
        results["old_release"] = sm.describe_mlflow_tracking_server(TrackingServerName="filled")[
            "MlflowVersion"
        ]
        filling = time.perf_counter()
        fill(tracking_url(sm, "filled"), daemon.credentials(), runs, artifacts, data_dir / "f")
        results["fill_s"] = time.perf_counter() - filling
        taken = []
        for _ in range(2):
            backup_id = backups.create_tracking_server_backup(TrackingServerName="filled")[
                "BackupId"
            ]

            def completed(backup_id: str = backup_id) -> bool:
                found = backups.describe_tracking_server_backup(BackupId=backup_id)
                if found["BackupStatus"] == "Failed":
                    raise RuntimeError(found.get("FailureReason"))
                return bool(found["BackupStatus"] == "Completed")

            seconds = until(completed, "the backup")
            found = backups.describe_tracking_server_backup(BackupId=backup_id)
            moved = (found["ArtifactBytes"] + found["MetadataBytes"]) / MIB
            taken.append({"id": backup_id, "seconds": seconds, "mib": moved})
        results["backup"], results["second_backup"] = taken
        restoring = time.perf_counter()
        backups.restore_tracking_server_backup(
            BackupId=taken[0]["id"], TrackingServerName="restored"
        )
        until(lambda: status_of(sm, "restored") == "Created", "the restore")
        results["restore"] = {"seconds": time.perf_counter() - restoring, "mib": taken[0]["mib"]}
        upgrading = time.perf_counter()
        backups.update_tracking_server_mlflow_version(
            TrackingServerName="filled", MlflowVersion=importlib.metadata.version("mlflow")
        )
        until(lambda: status_of(sm, "filled") in ("Updated", "UpdateFailed"), "the upgrade")
        upgraded = sm.describe_mlflow_tracking_server(TrackingServerName="filled")
        if upgraded["TrackingServerStatus"] != "Updated":
            raise RuntimeError(f"the upgrade failed: {upgraded}")
        results["upgrade"] = {
            "seconds": time.perf_counter() - upgrading,
            "to": upgraded["MlflowVersion"],
        }
    finally:
        daemon.close()
    finish_results(results, started)
    return results


def markdown(results: dict[str, Any]) -> str:
    plan, first, second, restore, upgrade = (
        results["plan"],
        results["backup"],
        results["second_backup"],
        results["restore"],
        results["upgrade"],
    )
    return "\n".join(
        [
            *header("# mlfleet: backup and restore of a tracking server", results),
            "",
            f"A Small server on MLflow {results['old_release']} (created in "
            f"{results['create_old_release_s']:.1f} s, its environment installed with it) with "
            f"{plan['runs']} runs (5 params, 20 metrics each, by LogBatch) and "
            f"{plan['artifact_files']} artifact files of 1 MiB, filled through the MLflow "
            f"client in {results['fill_s']:.0f} s.",
            "",
            "| step | time | moved | throughput |",
            "|---|---|---|---|",
            f"| backup (serving) | {first['seconds']:.2f} s | {first['mib']:.1f} MiB "
            f"| {first['mib'] / first['seconds']:.0f} MiB/s |",
            f"| second backup (nothing new to copy) | {second['seconds']:.2f} s "
            f"| {second['mib']:.1f} MiB listed | {second['mib'] / second['seconds']:.0f} MiB/s |",
            f"| restore to a new server, until Created | {restore['seconds']:.2f} s "
            f"| {restore['mib']:.1f} MiB | {restore['mib'] / restore['seconds']:.0f} MiB/s |",
            f"| upgrade in place to MLflow {upgrade['to']}, until Updated (backup, migrations, "
            f"probe) | {upgrade['seconds']:.2f} s | | |",
            "",
        ]
    )


if __name__ == "__main__":
    main_of(
        __doc__, "a smoke run: 500 runs, 20 MiB of artifacts", "backups", run_benchmark, markdown
    )
