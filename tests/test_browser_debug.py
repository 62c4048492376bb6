"""The Debug int8 page in headless Chromium: the ranked table, Model Explorer's overlay graph side by
side, a fix with its before and after, and no request leaving the machine.

Reuses ``test_browser``'s app server, recording browser context and waits. Model Explorer's page
draws with WebGL; headless Chromium renders it in software. Screenshots go to
``artefacts/screenshots/debug_*.png``.
"""

from __future__ import annotations

import urllib.parse

import pytest
from test_browser import (  # noqa: F401 (fixtures used by name)
    LOCAL_HOSTS,
    _click_until,
    _open,
    _pause,
    _settle,
    _shoot,
    app_url,
    browser_context,
)

pytestmark = pytest.mark.browser


def test_debug_page_overlay_fix_and_nothing_outside(app_url, browser_context):  # noqa: F811 (fixtures)
    first = len(browser_context.requests)
    page = _open(browser_context, f"{app_url}/debug")  # a fresh server opens the default page first
    page.get_by_text("Model: digits_cnn").wait_for()
    page.goto(f"{app_url}/debug")
    page.get_by_role("heading", name="Debug int8").wait_for()
    _settle(page)
    _click_until(page, "Set every layer to 8 bits", "Debug the int8 model")
    _click_until(page, "Debug the int8 model", "Layers, worst first")
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    frame = page.frame_locator('iframe[src*="graphs%3A%2F%2F"]')
    frame.get_by_text("own error (SQNR) (dB)").first.wait_for()  # the overlay is loaded in a pane
    frame.get_by_text("Sync").first.wait_for()  # two panes, navigation synced
    assert frame.locator("canvas").count() >= 2
    _shoot(page, "debug_overlay")

    page.get_by_text("switch granularity", exact=True).click()  # the radio's label (the input is covered)
    _pause(page)
    _click_until(page, "Apply the fix and re-export", "Before and after")
    rows = page.locator('[data-testid="stDataFrame"]').nth(1)
    rows.wait_for()
    _shoot(page, "debug_fix")

    requests = browser_context.requests[first:]
    assert any("/api/v1/load_node_data" in url for url in requests)
    outside = [url for url in requests if urllib.parse.urlparse(url).hostname not in LOCAL_HOSTS | {None}]
    assert not outside, f"requests left the machine: {outside}"
    assert page.locator("html").get_attribute("data-outside") is None
    assert frame.locator("html").get_attribute("data-outside") is None  # no font or call refused by the CSP
