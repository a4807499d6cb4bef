"""The links the service hands out, opened in a real browser: Debian's chromium, driven by
Playwright, in a fresh profile (no MLflow UI state from an earlier visit).

One small digits sweep runs through a real API process (session Ray, session MLflow server);
then its MLflow comparison link must show every trial and their curves drawn, the sweep's
metric first, and ``/docs`` must list the API's operations without reaching any CDN.
Screenshots land in the test's directory and, to look at afterwards, in
``.sweeps/test-output/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from service.config import STATE_DIR, Settings
from tests.conftest import free_port
from tests.service.helpers import Api, make_settings, mlflow_runs, wait_for, wait_tracked
from tests.specs import digits_body
from workers.tracking import OBJECTIVE

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (``make tools`` installs it); Playwright never downloads a browser here."""
SCREENSHOTS = STATE_DIR / "test-output"
"""Where the screenshots are copied for a person to look at (gitignored)."""
PAGE_TIMEOUT_MS = 60_000
"""Until MLflow's single-page app has fetched and drawn the runs (two slow cores)."""


@pytest.fixture
def api(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Iterator[Api]:
    """The API as ``sweeps up`` serves it: loopback, no token (a browser sends none)."""
    port = free_port()
    settings: Settings = make_settings(
        tmp_path, ray_cluster, mlflow_server,
        port=port, public_url=f"http://127.0.0.1:{port}", api_token=None,
    )  # fmt: skip
    server = Api(settings, tmp_path / "api.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make tools` (apt-get install chromium)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.mark.slow
def test_the_mlflow_link_shows_every_trial_with_its_curves_and_docs_work_offline(
    api: Api, browser: Browser, mlflow_server: Any, tmp_path: Path
) -> None:
    body = digits_body({"optim.lr": [0.02, 0.05, 0.2]}, method="grid", name="browser-sweep")
    created = api.http.post("/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    wait_for(lambda: api.get(f"/sweeps/{sweep_id}"), _ended, 420, "the sweep to end")
    sweep = wait_tracked(api.get, sweep_id)
    assert sweep["status"] == "completed", sweep
    _, _, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    names = sorted(c.info.run_name for c in children)
    assert len(names) == 3

    links = sweep["links"]
    page = _fresh_page(browser)
    page.goto(links["mlflow_experiment"])
    for name in names:  # each trial is a row of its own, not folded under the sweep's run
        page.get_by_text(name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    # Plotly draws one trace per run and chart: every trial's curve is on the page.
    traces = page.locator(".js-plotly-plot .scatterlayer .trace")
    wait_for(traces.count, lambda n: n >= len(names), 60, "the trials' curves to be drawn")
    # The sweep's metric is the first section and the first chart, before epoch_seconds & co.
    sections = page.locator("[data-testid='experiment-view-compare-runs-section-header']")
    assert sections.first.inner_text().startswith("objective"), sections.all_inner_texts()
    cards = page.locator("[data-testid='experiment-view-compare-runs-card']")
    first = cards.first.inner_text().splitlines()[0]
    assert first == f"{OBJECTIVE}/val_accuracy", cards.all_inner_texts()[:3]
    _screenshot(page, tmp_path / "mlflow-comparison.png")

    _check_artifact_links(links)
    page = _fresh_page(browser)  # the sweep's pictures, in MLflow's artifact view
    page.goto(links["mlflow_artifacts"])
    page.get_by_text("curves.png").first.click(timeout=PAGE_TIMEOUT_MS)
    page.locator("img[src^='blob:']").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    assert (
        page.get_by_text("Model training").count()
        and not page.get_by_text("Evaluation runs").count()
    )
    _screenshot(page, tmp_path / "mlflow-curves.png")

    page = _fresh_page(browser)
    page.goto(f"{api.settings.api_url}/docs")
    submit = page.locator(".opblock-post .opblock-summary-path[data-path='/sweeps']")
    submit.wait_for(timeout=PAGE_TIMEOUT_MS)  # "POST /sweeps", drawn by Swagger UI
    _screenshot(page, tmp_path / "api-docs.png")


def _ended(sweep: dict[str, Any]) -> bool:
    return sweep["status"] in ("completed", "failed", "cancelled")


def _fresh_page(browser: Browser) -> Page:
    """A page in a new context: nothing from an earlier visit, as on a first visit. Requests
    beyond loopback fail at once: the pages must not need a CDN."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.route(lambda url: not url.startswith("http://127.0.0.1:"), lambda route: route.abort())
    return context.new_page()


def _check_artifact_links(links: dict[str, Any]) -> None:
    """The run's artifacts page answers, and every file it links is there (the sweep is
    tracked: its pictures were uploaded before its run was closed)."""
    assert httpx.get(links["mlflow_artifacts"]).status_code == 200
    assert set(links["artifacts"]) >= {"curves.png", "parameters.png", "summary.md"}
    for name, url in links["artifacts"].items():
        answer = httpx.get(url)
        assert answer.status_code == 200, url
        if name.endswith(".png"):
            assert answer.content.startswith(b"\x89PNG"), url


def _screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    kept = shutil.copy(path, SCREENSHOTS / path.name)
    print(f"screenshot: {Path(kept).resolve()}")
