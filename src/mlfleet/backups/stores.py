"""A server's artifact store as a backup reads it and a restore writes it: a folder, or an
``s3://`` prefix (with the daemon's own AWS credentials and S3 endpoint, as its workers use).

Paths are relative to the store, ``/``-separated. A write is whole or nothing: a folder gets a
hidden partial file renamed into place, S3 an object put in one request (or a multipart upload,
which S3 completes whole).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

import boto3
from botocore.config import Config as BotoConfig

from mlfleet.fleet.stores import local_folder, resolve
from mlfleet.settings import Settings


class ArtifactFiles(Protocol):
    def paths(self) -> Iterator[str]: ...

    def open(self, path: str) -> IO[bytes]: ...

    def write(self, path: str, source: IO[bytes]) -> None: ...


class FolderFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self) -> Iterator[str]:
        """The store's regular files, in a stable order; links are not followed out of it."""
        for folder, subfolders, names in os.walk(self.root):
            subfolders.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink():
                    yield path.relative_to(self.root).as_posix()

    def open(self, path: str) -> IO[bytes]:
        return (self.root / path).open("rb")

    def write(self, path: str, source: IO[bytes]) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.restoring")
        with partial.open("wb") as copy:
            while chunk := source.read(1024 * 1024):
                copy.write(chunk)
        partial.replace(target)


class S3Files:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def paths(self) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix
        )
        for page in pages:
            for found in page.get("Contents", []):
                yield str(found["Key"])[len(self._prefix) :]

    def open(self, path: str) -> IO[bytes]:
        body: IO[bytes] = self._client.get_object(Bucket=self._bucket, Key=self._prefix + path)[
            "Body"
        ]
        return body

    def write(self, path: str, source: IO[bytes]) -> None:
        self._client.upload_fileobj(source, self._bucket, self._prefix + path)


def s3_client(settings: Settings) -> Any:
    """An S3 client with the daemon's credentials, at its S3 endpoint if it has one."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.region,
        config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}),
    )


def files_of(uri: str, settings: Settings) -> ArtifactFiles:
    """The store an ``ArtifactStoreUri`` names."""
    folder = local_folder(uri)
    if folder is not None:
        return FolderFiles(resolve(folder))
    parsed = urlparse(uri)
    return S3Files(s3_client(settings), parsed.netloc, parsed.path)
