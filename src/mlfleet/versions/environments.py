"""The Python environment each MLflow release runs from.

The MLflow installed beside mlfleet runs from mlfleet's own environment. Any other release gets a
virtual environment under ``<data-dir>/mlflow-versions/<version>``, built once with uv from the
package index and shared by every server of that release: MLflow at that release, what a worker
needs besides (``WORKER_REQUIREMENTS``), and mlfleet's own package on the path (a ``.pth`` file
naming a folder that holds only a link to it, so that nothing else of mlfleet's environment
leaks in). Its dependencies are resolved as of the release's publication (uv's
``--exclude-newer``): later releases of them, which that MLflow was never tested with, break
older lines (SQLAlchemy 2.1 breaks MLflow 2.22). An environment is ready once its ``READY``
file exists; one without it is a build that did not finish and is built again.

Environments are world-readable (umask 022), because the sandbox's unprivileged user runs the
workers from them. An environment no server uses any more is removed; uv's cache
(``.cache``) stays, since a build may be using it at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from uv import find_uv_bin

import mlfleet
from mlfleet.versions.releases import Releases

log = logging.getLogger(__name__)

# What mlfleet's worker (runtime.mlflow_worker) imports besides MLflow; releases that lack one
# (2.x has no uvicorn or Starlette) get it here.
WORKER_REQUIREMENTS = (
    "uvicorn[standard]",
    "a2wsgi",
    "setproctitle",
    "starlette",
    "aiohttp",
    "botocore",
    "psycopg[binary]",
    # MLflow 2.x on PostgreSQL (runtime.metadata_db picks the driver by release).
    "psycopg2-binary",
)
READY = "READY"
# Room after a release's publication for the fixes of its dependencies released with it.
PUBLICATION_GRACE = timedelta(days=1)
INSTALL_OUTPUT_TAIL = 1500


def _world_readable() -> None:
    os.umask(0o022)


class InstallError(Exception):
    """An MLflow release could not be installed; the message carries the installer's reason."""


class Environments:
    def __init__(self, root: Path, releases: Releases) -> None:
        self.root = root
        self.releases = releases
        self._locks: dict[str, asyncio.Lock] = {}
        self._installing: set[str] = set()

    @property
    def installed(self) -> str:
        return self.releases.installed

    def _folder(self, version: str) -> Path:
        return self.root / version

    def ready(self, version: str) -> bool:
        return version == self.installed or (self._folder(version) / READY).exists()

    def built(self) -> list[str]:
        """The releases with a ready environment here (besides the installed one)."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{READY}"))

    def progress(self, version: str) -> str | None:
        """What is being done for ``version`` now, for Describe and the console."""
        return f"installing MLflow {version} …" if version in self._installing else None

    def python(self, version: str) -> str:
        """The interpreter a worker of ``version`` runs."""
        if version == self.installed:
            return sys.executable
        return str(self._folder(version) / "bin" / "python")

    def software(self, version: str) -> tuple[Path, ...]:
        """What a sandboxed worker of ``version`` must read besides mlfleet's own software."""
        return () if version == self.installed else (self._folder(version),)

    async def ensure(self, version: str) -> None:
        """Build ``version``'s environment unless it is ready; raises InstallError."""
        if self.ready(version):
            return
        lock = self._locks.setdefault(version, asyncio.Lock())
        async with lock:
            if self.ready(version):
                return
            self._installing.add(version)
            try:
                await self._build(version)
            finally:
                self._installing.discard(version)

    async def _build(self, version: str) -> None:
        folder = self._folder(version)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.info("installing MLflow %s in %s", version, folder)
        # The base interpreter, not mlfleet's venv: a venv of a venv would see mlfleet's packages.
        base_python = getattr(sys, "_base_executable", sys.executable)
        await self._uv("venv", "--quiet", "--python", base_python, str(folder))
        install = ["pip", "install", "--quiet", "--python", str(folder / "bin" / "python")]
        uploaded = self.releases.uploaded(version)
        if uploaded is not None:
            install += ["--exclude-newer", (uploaded + PUBLICATION_GRACE).isoformat()]
        await self._uv(*install, f"mlflow=={version}", *WORKER_REQUIREMENTS)
        self._link_mlfleet(folder)
        (folder / READY).write_text(version + "\n", encoding="utf-8")
        log.info("MLflow %s installed", version)

    async def _uv(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            find_uv_bin(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "UV_CACHE_DIR": str(self.root / ".cache")},
            preexec_fn=_world_readable,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            reason = output.decode(errors="replace").strip()[-INSTALL_OUTPUT_TAIL:]
            raise InstallError(f"uv {args[0]} {args[1]} failed: {reason}")

    @staticmethod
    def _link_mlfleet(folder: Path) -> None:
        links = folder / "mlfleet-package"
        links.mkdir()
        links.chmod(0o755)  # mkdir's mode passes through the daemon's umask
        (links / "mlfleet").symlink_to(Path(mlfleet.__file__).parent)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        pth = folder / "lib" / version / "site-packages" / "mlfleet.pth"
        pth.write_text(f"{links}\n", encoding="utf-8")
        pth.chmod(0o644)

    def remove_unused(self, in_use: set[str]) -> list[str]:
        """Remove the environments of releases no server runs; the releases removed."""
        removed = []
        for version in self.built():
            if version not in in_use and version not in self._installing:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self._folder(version))
                    removed.append(version)
                    log.info("removed the environment of MLflow %s: no server runs it", version)
        return removed
