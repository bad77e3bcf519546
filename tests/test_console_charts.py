"""The last hour's charts on a tracking server's console page, fed by real gateway traffic."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import aiohttp
import pytest
from mlflow import MlflowClient

from support.console import (
    ConsoleBrowser,
    charted,
    launch,
    needs_chromium,
    screenshot,
    sign_in_page,
)
from support.daemon import Daemon
from support.waiting import wait_for

# A Small server has one worker taking max_inflight_per_worker (2) API requests at a time: more
# at once must wait for a slot, which is what the chart calls throttled.
CONCURRENT = 24


async def _at_once(url: str, key: str, secret: str) -> list[int]:
    authorization = {"Authorization": aiohttp.encode_basic_auth(key, secret)}
    async with aiohttp.ClientSession(headers=authorization) as http:

        async def one() -> int:
            async with http.get(
                f"{url}/api/2.0/mlflow/experiments/get-by-name",
                params={"experiment_name": "Default"},
            ) as answer:
                return answer.status

        return await asyncio.gather(*(one() for _ in range(CONCURRENT)))


def test_server_page_charts_the_requests_made_through_the_gateway(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    browser = ConsoleBrowser(daemon)
    # The daemon is shared with other tests: compare with what the chart said before.
    requests_before = charted(browser, "Requests")
    throttled_before = charted(browser, "Throttled")

    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    experiment_id = client.create_experiment(f"charted-{uuid.uuid4().hex[:6]}")
    run_id = client.create_run(experiment_id).info.run_id
    for step in range(5):
        client.log_metric(run_id, "loss", 1 / (step + 1), step=step)
    statuses = asyncio.run(_at_once(shared_server["TrackingServerUrl"], key, secret))
    assert statuses == [200] * CONCURRENT

    # Calls a worker served on a handed-over connection reach the figures a batch at a time.
    wait_for(
        lambda: charted(browser, "Requests") - requests_before >= 2 + 5 + CONCURRENT,
        10,
        what="every request in the chart",
    )
    assert charted(browser, "Throttled") > throttled_before
    page = browser.get("/servers/shared").text
    assert '<h2 id="last-hour">Last hour</h2>' in page
    assert 'aria-label="Latency (ms), last 60 minutes. p50: highest' in page
    # The figures by minute, as a table with headers, for reading instead of looking.
    assert '<th scope="col">Throttled</th>' in page


@needs_chromium
def test_server_charts_in_a_browser(daemon: Daemon, shared_server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chromium = launch(p)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            sign_in_page(page, daemon)
            page.goto(f"{daemon.url}/console/servers/shared")
            requests_chart = page.get_by_role("img", name=re.compile(r"^Requests per minute"))
            expect(requests_chart).to_be_visible()
            expect(page.get_by_role("img", name=re.compile(r"^Latency \(ms\)"))).to_be_visible()
            page.get_by_text("Table: Requests per minute").click()
            expect(page.get_by_role("columnheader", name="Throttled")).to_be_visible()
            page.get_by_role("heading", name="Last hour").scroll_into_view_if_needed()
            screenshot(page, "server-charts")
        finally:
            chromium.close()
