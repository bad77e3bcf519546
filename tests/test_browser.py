"""The MLflow UI in a real browser (Debian's Chromium), opened through a presigned URL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking._tracking_service.utils import _get_store

from support.console import SCREENSHOTS, launch, needs_chromium
from support.daemon import Daemon
from support.fake_llm import FakeLlm, gateway_endpoint
from support.waiting import wait_for

pytestmark = needs_chromium

# The UI's error toast: MLflow's Utils.displayGlobalErrorNotification, a Du Bois (Ant Design)
# notification. It fades after three seconds, so each page records every one that appears.
ERROR_TOAST = "du-bois-light-notification-notice-error"
RECORD_ERROR_TOASTS = f"""
window.errorToasts = [];
new MutationObserver(() => {{
  for (const toast of document.getElementsByClassName("{ERROR_TOAST}")) {{
    if (!toast.dataset.seen) {{
      toast.dataset.seen = "1";
      window.errorToasts.push(toast.textContent);
    }}
  }}
}}).observe(document, {{childList: true, subtree: true}});
"""
CALLS = ("fetch", "xhr")


def logged_run(
    daemon: Daemon, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, prefix: str
) -> tuple[str, str, Run]:
    """A new experiment with one run that logged a metric: its name, its id and the run."""
    key, secret = daemon.credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    experiment = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(tracking_uri=server["TrackingServerUrl"])
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="visible-run")
    client.log_metric(run.info.run_id, "loss", 0.25)
    return experiment, experiment_id, run


def presigned_url(daemon: Daemon) -> str:
    answer = daemon.client().create_presigned_mlflow_tracking_server_url(
        TrackingServerName="shared"
    )
    return str(answer["AuthorizedUrl"])


def test_presigned_url_opens_mlflow_ui(
    daemon: Daemon, shared_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect, sync_playwright

    experiment, experiment_id, _ = logged_run(daemon, shared_server, monkeypatch, "seen-in-browser")
    url = presigned_url(daemon)
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


def test_ui_pages_show_no_error_and_meet_no_refusal(
    daemon: Daemon,
    shared_server: dict[str, Any],
    fake_llm: FakeLlm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs, a run, the models, the AI gateway's endpoints and keys, an experiment's judges and
    the prompts, each loaded afresh: every call the UI makes on its own (the endpoint list of
    gateway-proxy, the Assistant's settings, users/current, the gateway's providers) is
    answered by MLflow or as MLflow answers it, so no error toast shows and mlfleet refuses
    nothing."""
    from playwright.sync_api import expect, sync_playwright

    _, experiment_id, run = logged_run(daemon, shared_server, monkeypatch, "no-toast")
    base = shared_server["TrackingServerUrl"]
    model = f"no-toast-model-{uuid.uuid4().hex[:6]}"
    MlflowClient(tracking_uri=base).create_registered_model(model)
    endpoint = gateway_endpoint(_get_store(base), fake_llm.url)
    pages = {
        f"#/experiments/{experiment_id}/runs": "visible-run",
        f"#/experiments/{experiment_id}/runs/{run.info.run_id}": "loss",
        "#/models": model,
        "#/gateway": endpoint,
        "#/gateway/api-keys": endpoint,
        f"#/experiments/{experiment_id}/judges": "Judges",
        "#/prompts": "Prompts",
    }
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            refused: list[str] = []
            pending: set[Any] = set()
            # The UI's calls (a web worker's script never reports its end to the page).
            page.on("request", lambda r: pending.add(r) if r.resource_type in CALLS else None)
            page.on("requestfinished", lambda r: pending.discard(r))
            page.on("requestfailed", lambda r: pending.discard(r))
            page.on(
                "response",
                lambda r: (
                    refused.append(f"{r.request.method} {r.url}") if r.status == 403 else None
                ),
            )
            page.add_init_script(RECORD_ERROR_TOASTS)
            page.goto(presigned_url(daemon))
            for fragment, shown in pages.items():
                page.goto(f"{base}/{fragment}")
                page.reload()  # a hash change alone would not load the page's calls again
                expect(page.get_by_text(shown).first).to_be_visible(timeout=60_000)
                # Every call the page has made answered, and a moment for the UI to show what
                # it made of the answers (the UI polls, so the network is never idle for long).
                # (Playwright tells of requests only while it waits, hence wait_for_timeout.)
                wait_for(
                    lambda: page.wait_for_timeout(100) or not pending,
                    60,
                    what=f"the calls of {fragment} answered",
                )
                page.wait_for_timeout(1000)
                assert page.evaluate("window.errorToasts") == [], fragment
            assert refused == []
        finally:
            browser.close()
