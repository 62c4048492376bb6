"""Charts of the Layers page that depend on a layer's size (``explorer_ui.figures``)."""

from __future__ import annotations

import numpy as np

from explorer_ui import figures


def _view(count: int, outlier: int | None = None) -> dict:
    rng = np.random.default_rng(0)
    low, high = -rng.uniform(0.5, 1.0, count), rng.uniform(0.5, 1.0, count)
    if outlier is not None:
        high[outlier] = 9.0
    spread = high - low
    return {
        "min": low,
        "max": high,
        "range": spread,
        "median": float(np.median(spread)),
        "outliers": spread > 3 * np.median(spread),
    }


def test_a_small_layer_has_one_bar_per_channel():
    figure = figures.channel_ranges(_view(10, outlier=3))
    bar = figure.data[0]
    assert len(bar.x) == 10 and list(bar.marker.color).count(figures.ALERT_COLOR) == 1
    assert "per bar" not in figure.layout.title.text


def test_an_embedding_tables_rows_are_drawn_in_groups_that_keep_their_extremes():
    view = _view(30_522, outlier=20_000)
    figure = figures.channel_ranges(view)
    bar = figure.data[0]
    assert len(bar.x) == 1018 and "30,522 channels, 30 per bar" in figure.layout.title.text
    assert bar.base[0] == view["min"][:30].min() and bar.base[0] + bar.y[0] == view["max"][:30].max()
    red = [int(start) for start, color in zip(bar.x, bar.marker.color, strict=True) if color == figures.ALERT_COLOR]
    assert red == [19_980]  # the group holding channel 20,000
    assert bar.customdata[-1] == 30_521  # the last group is cut short at the last channel
