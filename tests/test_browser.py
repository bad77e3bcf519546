"""The MLflow UI in a real browser (Debian's Chromium), opened through a presigned URL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from mlflow import MlflowClient

from support.console import SCREENSHOTS, launch, needs_chromium
from support.daemon import Daemon

pytestmark = needs_chromium


def test_presigned_url_opens_mlflow_ui(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect, sync_playwright

    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    experiment = f"seen-in-browser-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(tracking_uri=shared_server["TrackingServerUrl"])
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="visible-run")
    client.log_metric(run.info.run_id, "loss", 0.25)

    url = daemon.client().create_presigned_mlflow_tracking_server_url(TrackingServerName="shared")[
        "AuthorizedUrl"
    ]
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            assert page.url.rstrip("/").endswith("/mlflow/shared")
            link = page.get_by_text(experiment).first
            expect(link).to_be_visible(timeout=60_000)
            page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-home.png"))
            page.goto(f"{shared_server['TrackingServerUrl']}/#/experiments/{experiment_id}/runs")
            expect(page.get_by_text("visible-run").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-experiment.png"))

            # The link was single-use: a second browser context is refused.
            other = browser.new_context().new_page()
            response = other.goto(url)
            assert response is not None and response.status == 403
        finally:
            browser.close()
