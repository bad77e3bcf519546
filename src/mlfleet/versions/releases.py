"""The MLflow releases a tracking server can run, and what a requested ``MlflowVersion`` means.

A request names a release (``3.17.2``) or a line (``3.16``, ``2.22``, ``3``): a line means its
newest release. Releases come from the package index's JSON page for ``mlflow`` (PEP 691, with
each file's upload time, PEP 700), kept for ``CATALOG_SECONDS``; only final releases from
``OLDEST_SUPPORTED`` on that install on this Python count. The MLflow installed beside mlfleet
is always known, so the default version needs no index, and neither does a release already
built here when the index cannot be reached.

The index is PyPI unless ``UV_DEFAULT_INDEX`` (or ``UV_INDEX_URL``) names another, as for the
installer (versions.environments).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

OLDEST_SUPPORTED = Version("2.10")
CATALOG_SECONDS = 600.0
INDEX_TIMEOUT_SECONDS = 10.0
PYPI = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

# A release's version -> when its newest file was uploaded.
Catalog = dict[str, datetime]


class VersionError(Exception):
    """A requested MlflowVersion names no release this machine can run; says why."""


def index_url() -> str:
    for variable in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(variable):
            return os.environ[variable].rstrip("/")
    return PYPI


def parse_index_page(page: dict[str, object], python: str) -> Catalog:
    """The supported final releases on a PEP 691 project page, for Python ``python``."""
    catalog: Catalog = {}
    files = page.get("files")
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict) or entry.get("yanked"):
            continue
        version = _version_of(str(entry.get("filename", "")))
        if version is None or version.is_prerelease or version.is_devrelease:
            continue
        if version < OLDEST_SUPPORTED or not _runs_on(entry.get("requires-python"), python):
            continue
        uploaded = datetime.fromisoformat(str(entry["upload-time"]).replace("Z", "+00:00"))
        key = str(version)
        catalog[key] = max(uploaded, catalog.get(key, uploaded))
    return catalog


def _version_of(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        if filename.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    return None


def _runs_on(requires_python: object, python: str) -> bool:
    if not isinstance(requires_python, str) or not requires_python:
        return True
    try:
        return SpecifierSet(requires_python).contains(python)
    except InvalidSpecifier:
        return False


def resolve(requested: str, known: Iterable[str]) -> str | None:
    """The newest of ``known`` that ``requested`` (a release or a line) names, if any."""
    try:
        wanted = Version(requested).release
    except InvalidVersion:
        return None
    matching = [Version(v) for v in known if Version(v).release[: len(wanted)] == wanted]
    return str(max(matching)) if matching else None


def check_move(current: str, target: str) -> None:
    """Raises VersionError unless a server on ``current`` can be moved to ``target``: MLflow's
    migrations go forward only, so a server goes back only within its minor line (whose
    releases share a schema)."""
    if target == current:
        raise VersionError(f"the server already runs MLflow {current}.")
    now, then = Version(current), Version(target)
    if then < now and then.release[:2] != now.release[:2]:
        raise VersionError(
            f"MLflow {target} is older than the server's MLflow {current}, and MLflow's "
            f"migrations go forward only: a server goes back only within its minor line "
            f"({now.major}.{now.minor})."
        )


def fetch_catalog() -> Catalog:
    request = urllib.request.Request(f"{index_url()}/mlflow/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT_SECONDS) as response:
        page = json.load(response)
    return parse_index_page(page, platform.python_version())


class Releases:
    """What a requested MlflowVersion resolves to, against a cached catalog of releases.

    ``local`` lists the releases this machine already runs (the installed one, the built
    environments): enough when the index cannot be reached.
    """

    def __init__(
        self,
        installed: str,
        local: Callable[[], Iterable[str]],
        fetch: Callable[[], Catalog] = fetch_catalog,
    ) -> None:
        self.installed = installed
        self._local = local
        self._fetch = fetch
        self._lock = threading.Lock()
        self._catalog: Catalog = {}
        self._fetched_at = float("-inf")

    def catalog(self) -> Catalog:
        """The index's releases, fetched again once ``CATALOG_SECONDS`` old (raises OSError or
        ValueError when the index cannot be read)."""
        with self._lock:
            if time.monotonic() - self._fetched_at > CATALOG_SECONDS:
                self._catalog = self._fetch()
                self._fetched_at = time.monotonic()
            return self._catalog

    def uploaded(self, version: str) -> datetime | None:
        """When ``version`` was published, if the index says."""
        try:
            return self.catalog().get(version)
        except (OSError, ValueError):
            return None

    def resolve(self, requested: str | None) -> str:
        """The full release to run for ``requested`` (None or empty: the installed one)."""
        if not requested or requested == self.installed:
            return self.installed
        try:
            wanted = Version(requested)
        except InvalidVersion:
            raise VersionError(f"MlflowVersion {requested} is not a version.") from None
        if len(wanted.release) > 3 or wanted.pre or wanted.dev or wanted.post or wanted.local:
            raise VersionError(
                f"MlflowVersion {requested}: give a release (3.17.2) or a line (3.17, 3)."
            )
        if wanted.release < OLDEST_SUPPORTED.release[: len(wanted.release)]:
            raise VersionError(
                f"MlflowVersion {requested} is not supported: mlfleet runs MLflow "
                f"{OLDEST_SUPPORTED} and later."
            )
        try:
            known: Iterable[str] = self.catalog()
            unreachable = ""
        except (OSError, ValueError) as exc:
            known = {self.installed, *self._local()}
            unreachable = f" (the package index {index_url()} could not be read: {exc})"
        found = resolve(requested, known)
        if found is None or Version(found) < OLDEST_SUPPORTED:
            raise VersionError(
                f"MlflowVersion {requested}: no MLflow release from {OLDEST_SUPPORTED} on "
                f"matches it that installs on Python {platform.python_version()}{unreachable}."
            )
        return found
