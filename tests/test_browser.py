"""The app in headless Chromium: every page renders its key elements and no request leaves the machine.

Starts ``streamlit run app.py`` on a free port, visits each page with Playwright, saves a full-page
screenshot per page to ``artefacts/screenshots/``, and records every request of every page and
frame (the embedded netron viewer included) to assert that all of them go to 127.0.0.1/localhost.
"""

from __future__ import annotations

import os
import re
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
# Every wait below is on state (a text, a button, the script's running indicator), never a fixed
# sleep: these are only upper bounds, generous for a busy 2-core machine, and a fast one does not wait them.
STARTUP_SECONDS = 300
PAGE_TIMEOUT_MS = 180_000  # an element appearing after a rerun that computes little
COMPUTE_TIMEOUT_MS = 900_000  # a rerun or a job that computes: Apply, sensitivity, export, latency, recovery
EFFECT_TIMEOUT_MS = 30_000  # a finished rerun's output reaching the page; longer means the click was lost
RERUN_START_MS = 3_000  # the running indicator shows at once on a click; none by then: that rerun already ended
STATUS_WIDGET = '[data-testid="stStatusWidget"]'
# Run in every page and frame before its own scripts: notes on <html data-outside> every request the
# page tries that a Content-Security-Policy refuses (so the context's request log never sees it) and
# every beacon it sends (netron's telemetry goes out by navigator.sendBeacon).
OUTSIDE_WATCH = """
(() => {
  const seen = [];
  const note = (text) => {
    seen.push(text);
    document.documentElement.setAttribute('data-outside', seen.join(' '));
  };
  document.addEventListener('securitypolicyviolation', (event) => note('refused ' + event.blockedURI));
  if (navigator.sendBeacon) {
    const send = navigator.sendBeacon.bind(navigator);
    navigator.sendBeacon = (url, data) => {
      note('beacon ' + url);
      return send(url, data);
    };
  }
})();
"""


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
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # polling a server that is starting: the loop waits on its answer
    raise TimeoutError(f"streamlit did not answer at {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app served by a ``streamlit run`` subprocess, at http://localhost:<free port>.

    Its temp folder and caches are this module's own, and it does not watch its source files: a
    file edited while the tests run would otherwise put a "Rerun" prompt in the status widget.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    port = _free_port()
    private = tmp_path_factory.mktemp("streamlit")
    (private / "tmp").mkdir()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
    ]
    env = {**os.environ, "TMPDIR": str(private / "tmp"), "XDG_CACHE_HOME": str(private / "cache")}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://localhost:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser_context():
    """A Chromium context that records the URL of every request any of its pages or frames makes."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=PAGE_TIMEOUT_MS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
        context.requests = []
        context.on("request", lambda request: context.requests.append(request.url))
        context.add_init_script(OUTSIDE_WATCH)
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


def _settle(page, timeout: int = COMPUTE_TIMEOUT_MS) -> None:
    """Wait until Streamlit has finished running the script (its running indicator is gone)."""
    page.wait_for_function(f"!document.querySelector('{STATUS_WIDGET}')", timeout=timeout)


def _pause(page) -> None:
    """Wait for the rerun a widget has just asked for to start and end: a click that lands while one
    is pending can be merged into it and lost, as a user clicking that fast would see too."""
    try:
        page.locator(STATUS_WIDGET).wait_for(state="attached", timeout=RERUN_START_MS)
    except PlaywrightTimeout:
        pass  # the rerun has already ended
    _settle(page)


def _shoot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so grow the viewport first."""
    _settle(page)
    page.wait_for_timeout(1500)  # paint only: tables and charts draw after the script has finished
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(1000, int(height))})
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _click(page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def _shown(page, shown):
    """A locator for what an action shows: a locator as is, else the first element with that text."""
    return page.get_by_text(shown).first if isinstance(shown, (str, re.Pattern)) else shown.first


def _click_until(page, labels: str | tuple[str, ...], shown, attempts: int = 3) -> None:
    """Click the buttons ``labels`` (each idempotent) in order until ``shown`` is on the page.

    Each click's rerun is waited for to the end (however long it computes); ``shown`` missing once
    the script is idle means a click landed while a rerun was pending and was merged into it."""
    labels = (labels,) if isinstance(labels, str) else labels
    target = _shown(page, shown)
    for attempt in range(attempts):
        for label in labels:
            _click(page, label)
            _pause(page)
        try:
            target.wait_for(timeout=EFFECT_TIMEOUT_MS)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise


def _start_job(page, label: str, done: str) -> None:
    """Start a page's background job with ``label`` and wait for ``done``: the job runs while the
    page shows its Stop button, so the click is retried only when neither shows."""
    running = page.get_by_role("button", name="Stop", exact=True).or_(page.get_by_text(done))
    _click_until(page, label, running)
    _shown(page, done).wait_for(timeout=COMPUTE_TIMEOUT_MS)
    _settle(page)


def _edit_first_bits_cell(page, editor, value: str, attempts: int = 3) -> None:
    """Open the plan grid's first bits cell (conv1) and pick ``value``; the grid is a canvas, so the
    cell is found by position, and the whole gesture is retried until the choices show."""
    option = page.get_by_role("option", name=value, exact=True)
    for attempt in range(attempts):
        box = editor.bounding_box()
        page.mouse.click(box["x"] + 20, box["y"] + 35 + 17)  # the first data cell (conv1's name)
        for _ in range(3):  # to the bits column
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Enter")
        try:
            option.wait_for(timeout=EFFECT_TIMEOUT_MS)
            break
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
            _settle(page)
    option.click()


def _select_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


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
        _select_tab(page, tab)
        _shoot(page, f"layers-{tab.lower().replace(' ', '-')}")
    page.get_by_role("tab", name="Graph").click()
    frame = page.frame_locator('iframe[title="netron graph of digits_cnn"]')
    frame.locator("#canvas text", has_text="Conv").first.wait_for()
    assert frame.locator("#canvas g.node").count() >= 5
    assert not frame.get_by_text("This app uses cookies").is_visible()
    assert page.get_by_text("/conv1/Conv").is_visible()
    _shoot(page, "layers-graph")
    page.close()


def test_the_netron_frame_opens_at_the_layer_and_asks_nothing_outside(app_url, browser_context):
    """netron inside the Layers page: opened at the chosen layer's node, no telemetry started (not
    even tried and refused), and no request of the page or the frame leaving the machine."""
    first = len(browser_context.requests)
    page = _open(browser_context, f"{app_url}/layers")
    page.wait_for_selector('[data-testid="stDataFrame"]')
    _settle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Layer").click()
    page.get_by_role("option", name="conv2", exact=True).click()
    _pause(page)
    _select_tab(page, "Graph")
    page.get_by_text("/conv2/Conv").first.wait_for()
    frame = page.wait_for_selector('iframe[src*="node=%2Fconv2%2FConv"]').content_frame()
    frame.wait_for_selector('body[data-focused-node="/conv2/Conv"]')  # set by focus.js once selected
    assert frame.locator("g.node.select").first.get_attribute("id") == "node-name-/conv2/Conv"
    assert frame.locator("html").get_attribute("data-outside") is None  # no beacon, nothing refused
    assert page.locator("html").get_attribute("data-outside") is None
    requests = browser_context.requests[first:]
    assert any(url.startswith(f"http://localhost:{urllib.parse.urlparse(frame.url).port}/") for url in requests)
    outside = [url for url in requests if urllib.parse.urlparse(url).hostname not in LOCAL_HOSTS | {None}]
    assert not outside, f"requests left the machine: {outside}"
    page.close()


def test_tune_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/tune")
    page.get_by_text("Tune digits_cnn").wait_for()
    editor = page.locator('[data-testid="stDataFrame"]')
    editor.wait_for()
    _settle(page)
    _edit_first_bits_cell(page, editor, "4")
    apply = page.get_by_role("button", name="Apply", exact=True)
    expect(apply).to_be_enabled()  # the edit has reached the plan (Apply is disabled for an empty plan)
    page.locator("h1").first.click()  # leave the grid
    _pause(page)
    _click_until(page, "Apply", "157.8 KiB")  # conv1 alone at 4 bits
    _click_until(page, ("All Conv layers", "Apply"), "90.7 KiB")  # every Conv at 8 bits
    page.locator('th[role="columnheader"]', has_text="previous (#").wait_for(
        state="attached"
    )  # the table's a11y header
    page.wait_for_selector(".js-plotly-plot")
    assert page.locator('th[role="columnheader"]', has_text="previous (#").count() == 1
    _shoot(page, "tune")
    page.close()


def test_sensitivity_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/sensitivity")
    page.get_by_text("Sensitivity of digits_cnn").wait_for()
    _settle(page)
    _start_job(page, "Run sensitivity", "Most fragile layers")
    page.wait_for_selector(".js-plotly-plot")
    _settle(page)
    _shoot(page, "sensitivity")
    page.close()


def test_export_page(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/export")
    page.get_by_role("button", name="Build artifacts", exact=True).wait_for()
    _settle(page)
    _click_until(page, "Build artifacts", "Run latency benchmark")
    # On a loaded machine the buttons can paint after the text below them: wait for the seventh.
    page.locator('[data-testid="stDownloadButton"]').nth(6).wait_for()
    assert page.locator('[data-testid="stDownloadButton"]').count() >= 7
    _click_until(page, "Run latency benchmark", "Slowest nodes per candidate")
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
        _select_tab(page, tab)
        _shoot(page, f"learn-{tab.lower().replace(' ', '-')}")
    page.close()


def test_recover_panel(app_url, browser_context):
    page = _open(browser_context, f"{app_url}/tune")
    page.get_by_text("Tune digits_cnn").wait_for()
    _settle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Bits").click()
    page.get_by_role("option", name="2", exact=True).click()
    _pause(page)
    # A fresh session's plan is empty, so Apply is disabled until "All Conv layers" has filled it.
    _click_until(
        page, "All Conv layers", page.get_by_role("button", name="Apply", exact=True).and_(page.locator(":enabled"))
    )
    _click_until(page, "Apply", page.get_by_role("button", name="Recover", exact=True))
    epochs = page.get_by_label("Epochs")
    epochs.fill("2")
    epochs.press("Enter")
    _pause(page)
    expect(epochs).to_have_value("2")
    _start_job(page, "Recover", "Accuracy after recovery")
    assert (
        "points vs before"
        in page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy after recovery").inner_text()
    )
    _shoot(page, "tune-recover")
    page.close()


def test_every_request_stays_local(app_url, browser_context):
    """Runs last: every request recorded while the other tests visited the pages."""
    hosts = {
        urllib.parse.urlparse(url).hostname
        for url in browser_context.requests
        if not url.startswith(("data:", "blob:"))
    }
    assert browser_context.requests, "no requests were recorded"
    outside = [
        url for url in browser_context.requests if urllib.parse.urlparse(url).hostname not in LOCAL_HOSTS | {None}
    ]
    assert hosts <= LOCAL_HOSTS, f"requests left the machine: {outside}"
