"""A server's backups on its shelf (``<data-dir>/backups/<server-id>/`` or the operator's
``s3://`` location: backups.shelves), by key:

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
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mlfleet.backups.shelves import Shelf
from mlfleet.backups.stores import ArtifactFiles
from mlfleet.runtime.metadata_db import PG_SNAPSHOT, SQLITE_SNAPSHOT

CHUNK = 1024 * 1024
MANIFEST = "manifest.json"
OBJECTS = "objects/"
SNAPSHOTS = (SQLITE_SNAPSHOT, PG_SNAPSHOT)


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
    """One server's backups, on its shelf (backups.shelves)."""

    def __init__(self, shelf: Shelf) -> None:
        self.shelf = shelf

    def take(
        self, backup_id: str, snapshot_into: Callable[[Path], Path], store: ArtifactFiles
    ) -> Taken:
        """A backup: the database's snapshot (``snapshot_into`` a folder: the file it wrote),
        then every file of ``store``, then the manifest."""
        with tempfile.TemporaryDirectory(dir=self.shelf.staging) as scratch:
            snapshot = snapshot_into(Path(scratch))
            metadata_bytes = snapshot.stat().st_size
            self.shelf.put(f"{backup_id}/{snapshot.name}", snapshot)
        artifacts = [self._keep(store, path) for path in store.paths()]
        staged = self._staged()
        staged.write_text(json.dumps({"artifacts": [asdict(a) for a in artifacts]}))
        self.shelf.put(f"{backup_id}/{MANIFEST}", staged)
        return Taken(artifacts, metadata_bytes)

    def restore(
        self, backup_id: str, load: Callable[[Path], None], store: ArtifactFiles
    ) -> Restored:
        """The backup's database given to ``load`` (its snapshot file) and its artifacts put
        in ``store``, each checked against the manifest before it is written."""
        with self.shelf.local(f"{backup_id}/{MANIFEST}") as manifest_file:
            if manifest_file is None:
                raise ValueError(f"backup {backup_id} has no manifest: it is incomplete")
            manifest = json.loads(manifest_file.read_text())
        snapshot_key = next(
            k for k in self.shelf.names(f"{backup_id}/") if k.split("/")[-1] in SNAPSHOTS
        )
        with self.shelf.local(snapshot_key) as snapshot:
            assert snapshot is not None
            load(snapshot)
        copied, missing = 0, []
        for entry in map(lambda e: Artifact(**e), manifest["artifacts"]):
            if self._put(entry, store):
                copied += 1
            else:
                missing.append(entry.path)
        return Restored(copied, missing)

    def remove(self, backup_id: str) -> None:
        self.shelf.drop(list(self.shelf.names(f"{backup_id}/")))

    def collect(self) -> int:
        """Remove the objects no backup's manifest names any more (after ``remove``); how many.
        Must not run beside a ``take`` of the same archive, whose objects have no manifest yet."""
        named: set[str] = set()
        for key in [k for k in self.shelf.names() if k.endswith(f"/{MANIFEST}")]:
            with self.shelf.local(key) as manifest:
                if manifest is not None:
                    named.update(a["sha256"] for a in json.loads(manifest.read_text())["artifacts"])
        unused = [k for k in self.shelf.names(OBJECTS) if k.rsplit("/", 1)[-1] not in named]
        self.shelf.drop(unused)
        return len(unused)

    def _staged(self) -> Path:
        # Named for this copy alone: a maintenance's backup may run beside one asked for.
        return self.shelf.staging / f"incoming-{uuid.uuid4().hex}"

    @staticmethod
    def _object(sha256: str) -> str:
        return f"{OBJECTS}{sha256[:2]}/{sha256}"

    def _keep(self, store: ArtifactFiles, path: str) -> Artifact:
        """The file's entry, its content put on the shelf unless already there."""
        staged = self._staged()
        digest = hashlib.sha256()
        size = 0
        with store.open(path) as source, staged.open("wb") as copy:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                copy.write(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        if self.shelf.has(self._object(sha256)):
            staged.unlink()
        else:
            self.shelf.put(self._object(sha256), staged)
        return Artifact(path, size, sha256)

    def _put(self, entry: Artifact, store: ArtifactFiles) -> bool:
        """Copy one artifact into ``store``: False when the backup lacks it or it is damaged
        (checked before anything is written)."""
        if ".." in entry.path.split("/"):
            return False
        with self.shelf.local(self._object(entry.sha256)) as kept:
            if kept is None:
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
