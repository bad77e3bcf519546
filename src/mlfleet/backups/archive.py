"""Backups on disk, under ``<data-dir>/backups/<server-id>/``.

- ``objects/<sha256[:2]>/<sha256>``: the files of the server's artifact store (a folder or an
  ``s3://`` prefix: backups.stores), each content kept once, so a backup copies only the files
  that earlier backups lack;
- ``<backup-id>/metadata.db`` or ``metadata.pgdump``: MLflow's database as at the backup, a
  consistent copy taken while the workers write (SQLite's online backup API, or pg_dump: see
  ``MetadataDatabases.snapshot``);
- ``<backup-id>/manifest.json``: every artifact (path, size, SHA-256), written last: a backup
  folder without one is incomplete.

The database is copied before the store is walked: an artifact that a run of the snapshot
names was written before the snapshot, so the walk finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mlfleet.backups.stores import ArtifactFiles

CHUNK = 1024 * 1024
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the store, with "/"
    size: int
    sha256: str


@dataclass(frozen=True)
class Taken:
    artifacts: list[Artifact]
    metadata_bytes: int


@dataclass(frozen=True)
class Restored:
    copied: int
    missing: list[str]  # artifacts the backup lacks, or holds damaged


class Archive:
    """One server's backups."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.objects = folder / "objects"

    def take(
        self, backup_id: str, snapshot_into: Callable[[Path], Path], store: ArtifactFiles
    ) -> Taken:
        """A backup: the database's snapshot (``snapshot_into`` a folder: the file it wrote),
        then every file of ``store``."""
        target = self.folder / backup_id
        target.mkdir(parents=True, exist_ok=True)
        snapshot = snapshot_into(target)
        artifacts = [self._keep(store, path) for path in store.paths()]
        manifest = {"artifacts": [asdict(a) for a in artifacts]}
        partial = target / f"{MANIFEST}.partial"
        partial.write_text(json.dumps(manifest))
        os.replace(partial, target / MANIFEST)
        return Taken(artifacts, snapshot.stat().st_size)

    def restore(
        self, backup_id: str, load: Callable[[Path], None], store: ArtifactFiles
    ) -> Restored:
        """The backup's database given to ``load`` (its snapshot file) and its artifacts put
        in ``store``, each checked against the manifest as it is copied."""
        source = self.folder / backup_id
        manifest = json.loads((source / MANIFEST).read_text())
        snapshot = next(p for p in source.glob("metadata.*") if p.suffix != ".partial")
        load(snapshot)
        copied, missing = 0, []
        for entry in map(lambda e: Artifact(**e), manifest["artifacts"]):
            if self._put(entry, store):
                copied += 1
            else:
                missing.append(entry.path)
        return Restored(copied, missing)

    def remove(self, backup_id: str) -> None:
        shutil.rmtree(self.folder / backup_id, ignore_errors=True)

    def collect(self) -> int:
        """Remove the objects no backup's manifest names any more (after ``remove``); how many.
        Must not run beside a ``take`` of the same archive, whose objects have no manifest yet."""
        named: set[str] = set()
        for manifest in self.folder.glob(f"*/{MANIFEST}"):
            named.update(a["sha256"] for a in json.loads(manifest.read_text())["artifacts"])
        removed = 0
        for kept in self.objects.glob("*/*"):
            if kept.name not in named:
                kept.unlink()
                removed += 1
        return removed

    def _object(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def _keep(self, store: ArtifactFiles, path: str) -> Artifact:
        """The file's entry, its content copied into the objects unless already there."""
        # Named for this copy alone: a maintenance's backup may run beside one asked for.
        staged = self.objects / f".incoming-{uuid.uuid4().hex}"
        staged.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with store.open(path) as source, staged.open("wb") as copy:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                copy.write(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        kept = self._object(sha256)
        if kept.exists():
            staged.unlink()
        else:
            kept.parent.mkdir(exist_ok=True)
            os.replace(staged, kept)
        return Artifact(path, size, sha256)

    def _put(self, entry: Artifact, store: ArtifactFiles) -> bool:
        """Copy one artifact into ``store``: False when the backup lacks it or it is damaged
        (checked before anything is written)."""
        kept = self._object(entry.sha256)
        if not kept.is_file() or ".." in entry.path.split("/"):
            return False
        digest = hashlib.sha256()
        with kept.open("rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            return False
        with kept.open("rb") as source:
            store.write(entry.path, source)
        return True
