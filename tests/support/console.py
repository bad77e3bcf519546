"""Driving Debian's Chromium from tests, and signing in to the web console (in Chromium or
with ``requests``) and reading its pages."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from support.daemon import Daemon

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = Path(__file__).parents[1] / "screenshots"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test installs it)"
)


def launch(playwright: Any) -> Any:
    # No browser download: Playwright drives the system Chromium. The flags keep it off the
    # network this machine does not have.
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


def sign_in_page(
    page: Any, daemon: Daemon, key: str | None = None, secret: str | None = None
) -> None:
    """Sign `page` in through the form, as a person would (the admin unless a key is given)."""
    admin_key, admin_secret = daemon.credentials
    page.goto(f"{daemon.url}/console/sign-in")
    page.get_by_label("Access key ID").fill(key or admin_key)
    page.get_by_label("Secret access key").fill(secret or admin_secret)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/servers$"))


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


class ConsoleBrowser:
    """A ``requests`` session signed in to the console, for checks that need no rendering."""

    def __init__(self, daemon: Daemon, key: str | None = None, secret: str | None = None) -> None:
        self.base = f"{daemon.url}/console"
        self.http = requests.Session()
        admin_key, admin_secret = daemon.credentials
        token = self.csrf_of(self.http.get(f"{self.base}/sign-in").text)
        answer = self.http.post(
            f"{self.base}/sign-in",
            data={
                "csrf": token,
                "access_key_id": key or admin_key,
                "secret_access_key": secret or admin_secret,
            },
        )
        answer.raise_for_status()
        self.csrf = self.csrf_of(answer.text)

    @staticmethod
    def csrf_of(html: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, "no CSRF field in the page"
        return found[1]

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.base + path, **kwargs)

    def post(
        self, path: str, data: dict[str, Any] | None = None, **kwargs: Any
    ) -> requests.Response:
        return self.http.post(self.base + path, data={"csrf": self.csrf, **(data or {})}, **kwargs)


def charted(browser: ConsoleBrowser, series: str) -> int:
    """The total a server page's request chart states for `series` (in its aria-label)."""
    page = browser.get("/servers/shared")
    assert page.status_code == 200
    found = re.search(
        rf'aria-label="Requests per minute[^"]*{re.escape(series)}: (\d+) in all', page.text
    )
    assert found, f"no {series} total in the chart's label"
    return int(found[1])
