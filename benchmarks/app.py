"""How fast the app answers on digits_cnn: first page load, Apply + metrics, and redrawing another layer.

Not a timed test: ``python benchmarks/app.py`` prints a table and writes ``benchmarks/results/app.md``.
Page loads and redraws go through ``AppTest`` (the script's own time, without the browser's drawing).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

import compress_core  # noqa: E402
from compress_core.plan import LayerConfig, Plan  # noqa: E402
from explorer_ui import tuning  # noqa: E402

APP = str(REPO / "app.py")
RESULT = REPO / "benchmarks" / "results" / "app.md"
REPEATS = 5


def _seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def first_page_load() -> float:
    """A fresh app's first run: load digits_cnn, list its layers, measure its accuracy, draw the Model page."""
    app = AppTest.from_file(APP, default_timeout=120)
    seconds = _seconds(app.run)
    assert not app.exception, app.exception
    return seconds


def apply_and_metrics() -> list[float]:
    """Apply an 8-bit plan to every layer and evaluate it (accuracy, fidelity, sizes, zipped ONNX)."""
    handle = compress_core.load_model("digits_cnn")
    layers = compress_core.layer_inventory(handle)
    plan = Plan(layers={layer.name: LayerConfig(bits=8) for layer in layers})
    return [_seconds(lambda: tuning.apply_and_measure(handle, plan, layers)) for _ in range(REPEATS)]


def layer_redraws() -> tuple[list[float], list[float]]:
    """Select each other layer on the Layers page: first visit (computed) and second visit (cached)."""
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    app.switch_page("pages/layers.py").run()
    box = next(widget for widget in app.selectbox if widget.label == "Layer")
    names = box.options[1:]
    first, again = [], []
    for times in (first, again):
        for name in [*names, box.options[0]]:
            box = next(widget for widget in app.selectbox if widget.label == "Layer")
            times.append(_seconds(lambda: box.set_value(name).run()))
            assert not app.exception, app.exception
    return first, again


def _row(name: str, values: list[float]) -> str:
    return f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} | {len(values)} |"


def main() -> None:
    """Measure, print and write the results table."""
    load = [first_page_load()]
    apply = apply_and_metrics()
    first, again = layer_redraws()
    lines = [
        "# App benchmark (digits_cnn)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"`python benchmarks/app.py`, {time.strftime('%Y-%m-%d')}.",
        "",
        "| step | median s | min s | max s | runs |",
        "|---|---|---|---|---|",
        _row("first page load (AppTest run: load model, inventory, metrics, Model page)", load),
        _row("Apply + metrics (8 bits everywhere, with zipped ONNX size)", apply),
        _row("select another layer, first time (quantize, SVD, mask, Layers page)", first),
        _row("select another layer again (cached)", again),
        "",
        "Times are the script's own (AppTest), without the browser's drawing of the charts.",
    ]
    text = "\n".join(lines) + "\n"
    RESULT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
