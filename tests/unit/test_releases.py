"""What a requested MlflowVersion resolves to, and which releases of an index page count."""

from __future__ import annotations

import platform
from datetime import UTC, datetime

import pytest

from mlfleet.versions.releases import Catalog, Releases, VersionError, parse_index_page, resolve

KNOWN = ["2.9.2", "2.10.0", "2.22.4", "2.22.5", "3.16.0", "3.16.1", "3.17.2", "3.18.0"]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("3", "3.18.0"),
        ("2", "2.22.5"),
        ("2.22", "2.22.5"),
        ("3.16", "3.16.1"),
        ("3.16.0", "3.16.0"),
        ("3.17.2", "3.17.2"),
        ("3.17.1", None),
        ("2.23", None),
        ("4", None),
    ],
)
def test_a_line_means_its_newest_release(requested: str, expected: str | None) -> None:
    assert resolve(requested, KNOWN) == expected


def _file(name: str, uploaded: str, **more: object) -> dict[str, object]:
    return {"filename": name, "upload-time": uploaded, **more}


def test_the_index_page_keeps_final_supported_releases_for_this_python() -> None:
    python = platform.python_version()
    page = {
        "files": [
            _file("mlflow-2.22.5-py3-none-any.whl", "2026-05-12T08:50:25.36Z"),
            _file("mlflow-2.22.5.tar.gz", "2026-05-12T09:10:00Z"),
            _file("mlflow-3.18.0rc0-py3-none-any.whl", "2026-11-01T00:00:00Z"),
            _file("mlflow-2.9.2-py3-none-any.whl", "2024-01-01T00:00:00Z"),
            _file("mlflow-3.1.0-py3-none-any.whl", "2025-06-01T00:00:00Z", yanked="broken"),
            _file(
                "mlflow-3.2.0-py3-none-any.whl",
                "2025-07-01T00:00:00Z",
                **{"requires-python": ">=4.0"},
            ),
            _file(
                "mlflow-3.3.0-py3-none-any.whl",
                "2025-08-01T00:00:00Z",
                **{"requires-python": f">={python}"},
            ),
            _file("not-a-distribution.txt", "2025-08-01T00:00:00Z"),
        ]
    }
    catalog = parse_index_page(page, python)
    assert sorted(catalog) == ["2.22.5", "3.3.0"]
    # A release's time is its newest file's: its dependencies are resolved as of then.
    assert catalog["2.22.5"] == datetime(2026, 5, 12, 9, 10, tzinfo=UTC)


def _releases(catalog: Catalog | Exception, built: list[str] | None = None) -> Releases:
    def fetch() -> Catalog:
        if isinstance(catalog, Exception):
            raise catalog
        return catalog

    return Releases("3.17.2", local=lambda: built or [], fetch=fetch)


def test_the_installed_release_needs_no_index() -> None:
    releases = _releases(OSError("no network"))
    assert releases.resolve(None) == "3.17.2"
    assert releases.resolve("3.17.2") == "3.17.2"


def test_without_the_index_only_releases_here_resolve() -> None:
    releases = _releases(OSError("no network"), built=["2.22.5"])
    assert releases.resolve("2.22") == "2.22.5"
    assert releases.resolve("3.17") == "3.17.2"
    with pytest.raises(VersionError, match="could not be read: no network"):
        releases.resolve("3.16")


@pytest.mark.parametrize(
    ("requested", "says"),
    [
        ("1.30", "mlfleet runs MLflow 2.10 and later"),
        ("2.9", "mlfleet runs MLflow 2.10 and later"),
        ("2.99", "no MLflow release from 2.10 on matches it"),
        ("3.17.2rc1", "give a release"),
        ("3.17.2.1", "give a release"),
        ("latest", "is not a version"),
    ],
)
def test_versions_that_cannot_run_are_refused_with_the_reason(requested: str, says: str) -> None:
    catalog = {v: datetime(2026, 1, 1, tzinfo=UTC) for v in KNOWN}
    with pytest.raises(VersionError, match=says):
        _releases(catalog).resolve(requested)
