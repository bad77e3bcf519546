"""Downloads an endpoint instance's model from its tracking server, before any model code runs.

Runs confined with no network at all and one tracking-server worker's socket folder in view:
MLflow's client resolves the model URI (``models:/…``, ``runs:/…``) against that worker through
a forwarder on the sandbox's own loopback, which nothing outside the sandbox can reach, and
downloads every file through that worker too, never straight from the artifact store. It only
fetches files; the instance that loads and runs the model starts afterwards, without the socket.
The download goes into a sibling folder first, so an interrupted one never passes for a model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(256 * 1024):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


def forward_loopback_to(socket_path: str) -> int:
    """Serve a loopback TCP port that forwards each connection to ``socket_path``."""
    ready: list[int] = []
    started = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    started.wait(30)
    return ready[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-socket", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args()

    model_dir = Path(args.model_dir)
    if (model_dir / "MLmodel").is_file():
        return
    from mlflow.environment_variables import MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD

    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{forward_loopback_to(args.tracking_socket)}",
            # A worker whose store is S3 offers presigned URLs, and MLflow's client would then
            # fetch each file from S3 itself: unreachable from here, so every try would fail
            # and be retried for minutes. Through the worker, the files come from the same
            # store without this process needing the network.
            MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD.name: "false",
        }
    )
    import mlflow.artifacts

    partial = model_dir.with_name(model_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(args.model_uri, dst_path=str(partial)))
    local.rename(model_dir)


if __name__ == "__main__":
    main()
