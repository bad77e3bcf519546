"""The S3 operations on one server's artifact store, carried out by its MLflow worker through
MLflow's own artifact API (``/api/2.0/mlflow-artifacts/artifacts``): an object's key is its
artifact path, the one a ``mlflow-artifacts:/<key>`` URI names.

MLflow lists one folder at a time and knows no modification times: a listing walks folders,
and an object's LastModified is its file's on a folder store, the time of the listing on an
``s3://`` store. Multipart uploads are staged part by part in the data dir and sent to MLflow
as one upload when completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from mlfleet.gateway.admission import Admission
from mlfleet.gateway.forwarding import CHUNK, Forwarding
from mlfleet.runtime.local import Worker
from mlfleet.s3.responses import ObjectInfo, S3Error, http_date

log = logging.getLogger(__name__)

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# S3 pages listings at 1,000 keys at most.
MAX_KEYS = 1000
# A multipart upload neither completed nor aborted is removed at a start this much later.
STALE_UPLOAD_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Store:
    """The server a request is for: its id, and its folder when its store is a ``file:`` one."""

    server_id: str
    name: str
    folder: Path | None
    tags: tuple[dict[str, str], ...] = ()


def store_folder(artifact_store_uri: str) -> Path | None:
    if artifact_store_uri.startswith("file://"):
        return Path(artifact_store_uri.removeprefix("file://"))
    return None


def checked_key(key: str) -> str:
    """A key MLflow can store as a file: relative, no empty, ``.`` or ``..`` segment."""
    parts = key.split("/")
    if (
        not key
        or key.endswith("/")
        or "\\" in key
        or "\0" in key
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise S3Error(
            400,
            "InvalidArgument",
            "Invalid path: an object key must be a relative file path without empty, '.' or "
            "'..' segments (folders are not objects here).",
            ArgumentName="key",
        )
    return key


class Objects:
    def __init__(self, admission: Admission, forwarding: Forwarding, uploads: Path) -> None:
        self._admission = admission
        self._forwarding = forwarding
        self._uploads = uploads

    @asynccontextmanager
    async def _worker(self, store: Store) -> AsyncIterator[Worker]:
        worker = await self._admission.acquire(store.server_id, capped=True)
        if worker is None and isinstance(await self._admission.serving_id(store.name), str):
            # It was asleep, or (re)starting: it serves now.
            worker = await self._admission.acquire(store.server_id, capped=True)
        if worker is None:
            raise S3Error(
                503,
                "ServiceUnavailable",
                f"Tracking server {store.name} is not serving (stopped, or starting): retry.",
            )
        try:
            yield worker
        finally:
            self._admission.release(store.server_id, worker)

    @asynccontextmanager
    async def _call(
        self,
        store: Store,
        method: str,
        target: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self._worker(store) as worker:
            try:
                async with self._forwarding.open(
                    worker, method, target, data=data, headers=headers
                ) as answer:
                    if answer.status >= 400 and answer.status != 416:
                        raise await _refusal(store, answer)
                    yield answer
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                log.warning("S3 %s %s on %s failed: %s", method, target, store.name, exc)
                raise S3Error(
                    503, "ServiceUnavailable", f"Tracking server {store.name} did not answer."
                ) from exc

    # reads ---------------------------------------------------------------------------------

    async def folder(self, store: Store, path: str) -> list[tuple[str, bool, int]]:
        """(name, is_dir, size) of each entry of a folder ('' for the root); none if absent."""
        query = f"?{urlencode({'path': path})}" if path else ""
        async with self._call(store, "GET", ARTIFACTS + query) as answer:
            found = await answer.json(content_type=None)
        return [
            (str(f["path"]), bool(f.get("is_dir")), int(f.get("file_size") or 0))
            for f in found.get("files", [])
        ]

    async def head(self, store: Store, key: str) -> ObjectInfo:
        parent, _, name = checked_key(key).rpartition("/")
        for entry, is_dir, size in await self.folder(store, parent):
            if entry == name and not is_dir:
                return ObjectInfo(key, size, self._modified(store, key))
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key)

    def _modified(self, store: Store, key: str) -> float:
        if store.folder is not None:
            try:
                return (store.folder / key).lstat().st_mtime
            except OSError:
                pass
        return time.time()

    async def listing(
        self, store: Store, prefix: str, delimiter: str, after: str, limit: int
    ) -> tuple[list[ObjectInfo], list[str], bool]:
        """Objects and common prefixes after ``after`` in key order, at most ``limit`` of them
        together, and whether more follow."""
        folder, _, _ = prefix.rpartition("/")
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        if delimiter not in ("", "/"):
            raise S3Error(
                400,
                "InvalidArgument",
                "Only '/' is supported as a delimiter.",
                ArgumentName="delimiter",
            )
        recursive = not delimiter
        pending = [folder]
        # A walk in key order: each folder's entries sorted, a subfolder's keys where its name
        # sorts (with its "/").
        entries: list[tuple[str, bool, int]] = []
        while pending:
            path = pending.pop(0)
            for name, is_dir, size in await self.folder(store, path):
                key = f"{path}/{name}" if path else name
                if not (key + ("/" if is_dir else "")).startswith(prefix):
                    continue
                if is_dir and recursive:
                    pending.append(key)
                else:
                    entries.append((key + "/" if is_dir else key, is_dir, size))
            pending.sort()
        entries.sort()
        truncated = False
        for key, is_dir, size in entries:
            if key <= after:
                continue
            if len(objects) + len(prefixes) == limit:
                truncated = True
                break
            if is_dir:
                prefixes.append(key)
            else:
                objects.append(ObjectInfo(key, size, self._modified(store, key)))
        return objects, prefixes, truncated

    async def get(self, store: Store, key: str, request: web.Request) -> web.StreamResponse:
        """Stream an object (or the Range asked for) to the caller."""
        info = await self.head(store, key)
        ranged = _range(request.headers.get("Range"), info.size)
        response = web.StreamResponse(status=206 if ranged else 200)
        response.headers["Last-Modified"] = http_date(info.modified)
        response.headers["Accept-Ranges"] = "bytes"
        response.content_type = "binary/octet-stream"
        first, last = ranged if ranged else (0, info.size - 1)
        response.content_length = max(0, last - first + 1)
        if ranged:
            response.headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
        target = f"{ARTIFACTS}/{quote(key)}"
        async with self._call(store, "GET", target) as answer:
            await response.prepare(request)
            skip, left = first, response.content_length
            async for chunk in answer.content.iter_chunked(CHUNK):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                piece = chunk[skip : skip + left]
                skip = 0
                left -= len(piece)
                await response.write(piece)
                if left <= 0:
                    break
        await response.write_eof()
        return response

    # writes --------------------------------------------------------------------------------

    async def put(self, store: Store, key: str, body: AsyncIterator[bytes]) -> None:
        target = f"{ARTIFACTS}/{quote(checked_key(key))}"
        headers = {"Content-Type": "application/octet-stream"}
        async with self._call(store, "PUT", target, data=body, headers=headers):
            pass

    async def delete(self, store: Store, key: str) -> None:
        target = f"{ARTIFACTS}/{quote(checked_key(key))}"
        try:
            async with self._call(store, "DELETE", target):
                pass
        except S3Error as error:
            if error.code != "NoSuchKey":  # S3 deletes what is not there without a word
                raise

    # multipart -----------------------------------------------------------------------------

    def create_upload(self, store: Store, bucket: str, key: str) -> str:
        checked_key(key)
        upload_id = secrets.token_hex(24)
        folder = self._uploads / upload_id
        folder.mkdir(parents=True, mode=0o700)
        (folder / "upload.json").write_text(
            json.dumps({"server_id": store.server_id, "bucket": bucket, "key": key})
        )
        return upload_id

    def _upload(self, upload_id: str, bucket: str, key: str) -> Path:
        folder = self._uploads / upload_id
        try:
            if not all(c in "0123456789abcdef" for c in upload_id):
                raise FileNotFoundError(upload_id)
            meta = json.loads((folder / "upload.json").read_text())
        except (OSError, ValueError) as exc:
            raise _no_such_upload(upload_id) from exc
        if (meta["bucket"], meta["key"]) != (bucket, key):
            raise _no_such_upload(upload_id)
        return folder

    async def put_part(
        self, upload_id: str, bucket: str, key: str, number: int, body: AsyncIterator[bytes]
    ) -> str:
        """Stage one part; its ETag (the MD5 of its bytes, quoted)."""
        folder = self._upload(upload_id, bucket, key)
        digest = hashlib.md5(usedforsecurity=False)
        staged = folder / f".{number}.{secrets.token_hex(4)}"
        try:
            with staged.open("wb") as out:
                async for chunk in body:
                    digest.update(chunk)
                    out.write(chunk)
            staged.replace(folder / f"part-{number:05}")
        finally:
            staged.unlink(missing_ok=True)
        etag = f'"{digest.hexdigest()}"'
        (folder / f"part-{number:05}.etag").write_text(etag)
        return etag

    async def complete(
        self, store: Store, upload_id: str, bucket: str, key: str, parts: list[tuple[int, str]]
    ) -> str:
        """Send the parts named, in order, as the object; its multipart ETag."""
        folder = self._upload(upload_id, bucket, key)
        numbers = [number for number, _ in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise S3Error(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be "
                "specified in order by part number.",
            )
        digests = b""
        for number, etag in parts:
            try:
                stored = (folder / f"part-{number:05}.etag").read_text()
            except OSError:
                stored = None
            if stored is None or stored.strip('"') != etag.strip('"'):
                raise S3Error(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not "
                    "have been uploaded, or the specified entity tag may not match the part's "
                    "entity tag.",
                )
            digests += bytes.fromhex(stored.strip('"'))

        async def concatenated() -> AsyncIterator[bytes]:
            for number, _ in parts:
                with (folder / f"part-{number:05}").open("rb") as part:
                    while chunk := part.read(CHUNK):
                        yield chunk

        await self.put(store, key, concatenated())
        shutil.rmtree(folder, ignore_errors=True)
        return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'

    def abort(self, upload_id: str, bucket: str, key: str) -> None:
        shutil.rmtree(self._upload(upload_id, bucket, key), ignore_errors=True)

    def forget_stale_uploads(self, older_than_seconds: float) -> int:
        """Remove uploads begun longer ago than that (never completed nor aborted)."""
        if not self._uploads.is_dir():
            return 0
        limit = time.time() - older_than_seconds
        stale = [f for f in self._uploads.iterdir() if f.stat().st_mtime < limit]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return len(stale)


async def _refusal(store: Store, answer: aiohttp.ClientResponse) -> S3Error:
    """MLflow's error answer as S3's."""
    try:
        found = await answer.json(content_type=None)
    except ValueError:
        found = {}
    code = str(found.get("error_code", "")) if isinstance(found, dict) else ""
    message = str(found.get("message", "")) if isinstance(found, dict) else ""
    if answer.status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
        return S3Error(404, "NoSuchKey", "The specified key does not exist.")
    if code == "RESOURCE_EXHAUSTED":
        return S3Error(503, "ServiceUnavailable", f"The storage is full: {message}")
    if answer.status == 400:
        return S3Error(400, "InvalidArgument", message or "Invalid request.")
    if answer.status in (503, 409):
        return S3Error(503, "ServiceUnavailable", message or f"{store.name} is unavailable.")
    log.warning("S3 request on %s: MLflow answered %s %s", store.name, answer.status, code)
    return S3Error(500, "InternalError", "We encountered an internal error. Please try again.")


def _no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        404,
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may "
        "have been aborted or completed.",
        UploadId=upload_id,
    )


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, None for the whole object."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, _, last_text = header.removeprefix("bytes=").partition("-")
    try:
        if not first_text:  # the last N bytes
            first, last = max(0, size - int(last_text)), size - 1
        else:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
    except ValueError:
        return None
    if first >= size or first > last:
        raise S3Error(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
            RangeRequested=header,
            ActualObjectSize=str(size),
        )
    return first, last


def uploads_folder(data_dir: Path) -> Path:
    folder = data_dir / "s3-uploads"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder
