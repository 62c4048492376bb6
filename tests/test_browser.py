"""The app in headless Chromium: every page renders its key elements and no request leaves the machine.

Starts ``streamlit run app.py`` on a free port, visits each page with Playwright, saves a full-page
screenshot per page to ``artefacts/screenshots/``, and records every request of every page and
frame (the embedded netron viewer included) to assert that all of them go to 127.0.0.1/localhost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artefacts" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 90
PAGE_TIMEOUT_MS = 90_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def app_url():
    """The app served by a ``streamlit run`` subprocess, at http://localhost:<free port>."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    port = _free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
        "--server.headless", "true", "--server.port", str(port), "--browser.gatherUsageStats", "false",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://localhost:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_context():
    """A Chromium context that records the URL of every request any of its pages or frames makes."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.requests = []
        context.on("request", lambda request: context.requests.append(request.url))
        try:
            yield context
        finally:
            context.close()
            browser.close()


def _open(context, url: str):
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector('[data-testid="stSidebar"]')
    return page


def _settle(page) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=PAGE_TIMEOUT_MS)


def _shoot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_model_page(app_url, browser_context):
    page = _open(browser_context, app_url)
    page.wait_for_selector('[data-testid="stMetric"]')
    _settle(page)
    assert page.get_by_text("Model: digits_cnn").is_visible()
    assert page.get_by_text("40,506").is_visible()
    assert "200 MB" in page.inner_text("body")
    _shoot(page, "model")
    page.close()


def test_layers_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/layers")
    page.wait_for_selector('[data-testid="stDataFrame"]')
    page.wait_for_selector(".js-plotly-plot")
    _settle(page)
    assert page.locator(".js-plotly-plot").count() >= 2
    _shoot(page, "layers-quantization")
    for tab in ("Channel ranges", "Low rank", "Pruning"):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(500)
        _shoot(page, f"layers-{tab.lower().replace(' ', '-')}")
    page.get_by_role("tab", name="Graph").click()
    frame = page.frame_locator('iframe[title="netron graph of digits_cnn"]')
    frame.locator("#canvas text", has_text="Conv").first.wait_for()
    assert frame.locator("#canvas g.node").count() >= 5
    assert not frame.get_by_text("This app uses cookies").is_visible()
    assert page.get_by_text("/conv1/Conv").is_visible()
    _shoot(page, "layers-graph")
    page.close()


def test_tune_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/tune")
    page.wait_for_selector('[data-testid="stDataFrame"]')
    _settle(page)
    _shoot(page, "tune")
    page.close()


def test_every_request_stays_local(app_url, browser_context):
    """Runs last: every request recorded while the other tests visited the pages."""
    hosts = {urllib.parse.urlparse(url).hostname for url in browser_context.requests if not url.startswith(("data:", "blob:"))}
    assert browser_context.requests, "no requests were recorded"
    outside = [url for url in browser_context.requests if urllib.parse.urlparse(url).hostname not in LOCAL_HOSTS | {None}]
    assert hosts <= LOCAL_HOSTS, f"requests left the machine: {outside}"
