"""Where one server's backups are kept (backups.archive): a folder under the data dir, or an
``s3://`` location the operator sets (``Settings.backup_location``), with the daemon's own AWS
credentials and S3 endpoint.

A shelf holds files by key (``/``-separated). ``put`` takes a file staged in ``staging`` (a
folder on the shelf's own file system, for a folder shelf, so that putting is a rename) and
is whole or nothing; ``local`` lends a file as a local path for reading (the file itself on a
folder shelf, a downloaded copy on S3).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from mlfleet.backups.stores import s3_client
from mlfleet.settings import Settings

STAGING = ".staging"


class Shelf(Protocol):
    @property
    def staging(self) -> Path: ...

    def put(self, key: str, staged: Path) -> None: ...

    def has(self, key: str) -> bool: ...

    def local(self, key: str) -> contextlib.AbstractContextManager[Path | None]: ...

    def names(self, prefix: str = "") -> Iterator[str]: ...

    def drop(self, keys: Iterable[str]) -> None: ...


class FolderShelf:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def staging(self) -> Path:
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def put(self, key: str, staged: Path) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    def has(self, key: str) -> bool:
        return (self.root / key).is_file()

    @contextlib.contextmanager
    def local(self, key: str) -> Iterator[Path | None]:
        path = self.root / key
        yield path if path.is_file() else None

    def names(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = sorted(s for s in subfolders if s != STAGING)
            for name in sorted(names):
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)
        # Folders left empty (a removed backup's).
        for folder in sorted((p for p in self.root.glob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()


class S3Shelf:
    def __init__(self, client: Any, bucket: str, prefix: str, staging: Path) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/"
        self._staging = staging

    @property
    def staging(self) -> Path:
        self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging

    def put(self, key: str, staged: Path) -> None:
        try:
            self._client.upload_file(str(staged), self._bucket, self._prefix + key)
        finally:
            staged.unlink(missing_ok=True)

    def has(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=self._prefix + key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    @contextlib.contextmanager
    def local(self, key: str) -> Iterator[Path | None]:
        if not self.has(key):
            yield None
            return
        folder = Path(tempfile.mkdtemp(dir=self.staging))
        try:
            path = folder / "copy"
            self._client.download_file(self._bucket, self._prefix + key, str(path))
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def names(self, prefix: str = "") -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix + prefix
        )
        for page in pages:
            for found in page.get("Contents", []):
                yield str(found["Key"])[len(self._prefix) :]

    def drop(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self._prefix + key} for key in keys]
        for start in range(0, len(batch), 1000):  # DeleteObjects' limit
            self._client.delete_objects(
                Bucket=self._bucket, Delete={"Objects": batch[start : start + 1000]}
            )


def shelf_for(settings: Settings, server_id: str) -> Shelf:
    """Where ``server_id``'s backups are kept."""
    location = settings.backup_location
    if not location:
        return FolderShelf(settings.data_dir / "backups" / server_id)
    parsed = urlparse(location)
    prefix = f"{parsed.path.strip('/')}/{server_id}".lstrip("/")
    staging = settings.data_dir / "backups" / STAGING
    return S3Shelf(s3_client(settings), parsed.netloc, prefix, staging)


def check_location(location: str) -> None:
    """Raises ValueError for a backup location mlfleet cannot use."""
    if location and (not location.startswith("s3://") or not urlparse(location).netloc):
        raise ValueError(
            f"backup_location {location!r}: give an s3://bucket[/prefix] URI, or nothing for "
            "<data-dir>/backups"
        )
