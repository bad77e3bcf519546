"""Browser sessions stay with the server and the link that opened them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from support.daemon import Daemon

ROLE = "arn:aws:iam::123456789012:role/mlfleet"


@pytest.fixture(scope="module")
def other_server(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"other-{uuid.uuid4().hex[:8]}"
    sm = daemon.client()
    sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"file://{tmp_path_factory.mktemp(name)}",
        RoleArn=ROLE,
    )
    assert daemon.wait_status(name, "Created", "CreateFailed")["TrackingServerStatus"] == "Created"
    yield name
    sm.delete_mlflow_tracking_server(TrackingServerName=name)


def signed_in(daemon: Daemon, server: str) -> tuple[requests.Session, str]:
    """A browser session opened by a presigned link, and the link."""
    url = daemon.client().create_presigned_mlflow_tracking_server_url(TrackingServerName=server)[
        "AuthorizedUrl"
    ]
    browser = requests.Session()
    opened = browser.get(url, timeout=30)
    assert opened.status_code == 200
    return browser, url


def test_a_session_of_one_server_does_not_open_another(
    daemon: Daemon, shared_server: dict[str, Any], other_server: str
) -> None:
    browser, _ = signed_in(daemon, "shared")
    search = "/ajax-api/2.0/mlflow/experiments/search?max_results=1"
    assert browser.get(f"{daemon.url}/mlflow/shared{search}", timeout=30).status_code == 200
    # The cookie is scoped to /mlflow/shared/; sent by hand to the other server's path anyway:
    cookies = {c.name: c.value for c in browser.cookies}
    crossed = requests.get(
        f"{daemon.url}/mlflow/{other_server}{search}", cookies=cookies, timeout=30
    )
    assert crossed.status_code in (401, 403)
    assert "experiments" not in crossed.text


def test_a_presigned_link_opens_one_session_only(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    _, url = signed_in(daemon, "shared")
    again = requests.get(url, timeout=30, allow_redirects=False)
    assert again.status_code == 403
    assert "mlflow_session" not in again.headers.get("Set-Cookie", "")


def test_a_cookie_write_from_another_origin_is_refused(
    daemon: Daemon, shared_server: dict[str, Any]
) -> None:
    browser, _ = signed_in(daemon, "shared")
    forged = browser.post(
        f"{daemon.url}/mlflow/shared/ajax-api/2.0/mlflow/experiments/create",
        json={"name": f"csrf-{uuid.uuid4().hex[:8]}"},
        headers={"Origin": "http://evil.example"},
        timeout=30,
    )
    assert forged.status_code == 403
