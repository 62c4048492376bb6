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
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

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

    expect.set_options(timeout=PAGE_TIMEOUT_MS)

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


def _pause(page) -> None:
    """Give a rerun that a widget has just asked for time to start and end: a click that lands while
    one is pending can be merged into it and lost, as a user clicking that fast would see too."""
    page.wait_for_timeout(2000)
    _settle(page)


def _shoot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so grow the viewport first."""
    _settle(page)
    page.wait_for_timeout(1500)  # let tables and charts paint after the script has finished
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(1000, int(height))})
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _click(page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def _click_until(page, label: str, text: str, attempts: int = 3) -> None:
    """Click a button whose effect is idempotent until ``text`` shows: on a loaded machine a click
    can land while a rerun is pending and be merged into it."""
    for attempt in range(attempts):
        _click(page, label)
        try:
            page.get_by_text(text).first.wait_for(timeout=PAGE_TIMEOUT_MS // attempts)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            _settle(page)


def test_a_page_url_on_a_fresh_server_opens_the_app(app_url, browser_context):
    """Runs first: before st.navigation has run once, Streamlit would run a page file alone."""
    page = _open(browser_context, f"{app_url}/tune")
    page.get_by_text("Model: digits_cnn").wait_for()
    assert not page.locator('[data-testid="stException"]').count()
    page.goto(f"{app_url}/tune")
    page.get_by_text("Tune digits_cnn").wait_for()
    page.close()


def test_model_page(app_url, browser_context):
    page = _open(browser_context, app_url)
    page.get_by_text("Model: digits_cnn").wait_for()
    page.get_by_text("40,506").wait_for()
    page.get_by_text("files up to 200 MB each").wait_for()
    _settle(page)
    _shoot(page, "model")
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').click()
    page.get_by_role("option", name="digits_mlp").click()
    page.get_by_text("Model: digits_mlp").wait_for()
    page.get_by_text("18,986").wait_for()
    page.get_by_role("link", name="Layers").click()
    page.get_by_text("Layers of digits_mlp").wait_for()
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
    editor = page.locator('[data-testid="stDataFrame"]')
    editor.wait_for()
    _settle(page)
    box = editor.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 35 + 17)  # the first data cell (conv1's name)
    for _ in range(3):  # to the bits column
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.get_by_role("option", name="4", exact=True).click()
    apply = page.get_by_role("button", name="Apply", exact=True)
    expect(apply).to_be_enabled()  # the edit has reached the plan (Apply is disabled for an empty plan)
    page.locator("h1").first.click()  # leave the grid
    _pause(page)
    _click_until(page, "Apply", "157.8 KiB")  # conv1 alone at 4 bits
    _pause(page)
    _click(page, "All Conv layers")
    _pause(page)
    _click_until(page, "Apply", "90.7 KiB")  # every Conv at 8 bits
    page.locator('th[role="columnheader"]', has_text="previous (#").wait_for(state="attached")  # the table's a11y header
    page.wait_for_selector(".js-plotly-plot")
    assert page.locator('th[role="columnheader"]', has_text="previous (#").count() == 1
    _shoot(page, "tune")
    page.close()


def test_sensitivity_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/sensitivity")
    _settle(page)
    _click(page, "Run sensitivity")
    page.get_by_text("Most fragile layers").first.wait_for()
    page.wait_for_selector(".js-plotly-plot")
    _settle(page)
    _shoot(page, "sensitivity")
    page.close()


def test_export_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/export")
    _settle(page)
    _click(page, "Build artifacts")
    page.get_by_text("Run latency benchmark").wait_for()
    # On a loaded machine the buttons can paint after the text below them: wait for the seventh.
    page.locator('[data-testid="stDownloadButton"]').nth(6).wait_for()
    assert page.locator('[data-testid="stDownloadButton"]').count() >= 7
    _click(page, "Run latency benchmark")
    page.wait_for_selector(".js-plotly-plot")
    _settle(page)
    assert page.get_by_text("Slowest nodes per candidate").is_visible()
    _shoot(page, "export")
    page.close()


def test_learn_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/learn")
    page.get_by_text("Learn with digits_cnn").wait_for()
    page.wait_for_selector(".js-plotly-plot")
    _settle(page)
    assert page.locator(".js-plotly-plot").count() >= 4
    _shoot(page, "learn-quantization")
    for tab in ("Pruning", "Low rank", "Calibration", "Distillation"):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(500)
        _shoot(page, f"learn-{tab.lower().replace(' ', '-')}")
    page.close()


def test_recover_panel(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/tune")
    page.get_by_text("Tune digits_cnn").wait_for()
    _settle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Bits").click()
    page.get_by_role("option", name="2", exact=True).click()
    _pause(page)
    _click(page, "All Conv layers")
    _pause(page)
    _click(page, "Apply")
    page.get_by_role("button", name="Recover", exact=True).wait_for()
    epochs = page.get_by_label("Epochs")
    epochs.fill("2")
    epochs.press("Enter")
    _pause(page)
    _click(page, "Recover")
    page.get_by_text("Accuracy after recovery").wait_for()
    _settle(page)
    assert "points vs before" in page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy after recovery").inner_text()
    _shoot(page, "tune-recover")
    page.close()


def test_every_request_stays_local(app_url, browser_context):
    """Runs last: every request recorded while the other tests visited the pages."""
    hosts = {urllib.parse.urlparse(url).hostname for url in browser_context.requests if not url.startswith(("data:", "blob:"))}
    assert browser_context.requests, "no requests were recorded"
    outside = [url for url in browser_context.requests if urllib.parse.urlparse(url).hostname not in LOCAL_HOSTS | {None}]
    assert hosts <= LOCAL_HOSTS, f"requests left the machine: {outside}"
