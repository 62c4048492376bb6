"""How fast the app answers: first page load, Apply and Export of digits_resnet, redrawing another layer.

Not a timed test. ``python benchmarks/app.py`` measures this checkout and writes
``benchmarks/results/app.md`` and ``app.json``; ``python benchmarks/app.py --before DIR`` measures
another checkout of the project (a ``git worktree`` of an earlier commit) too, alternating between the
two in fresh processes round by round, so that both see the same machine load, and writes them side
by side. Every step goes through ``AppTest`` (the script's own time, without the browser's drawing),
so the same steps run on any commit whose pages have the same buttons.

Apply and Export are timed as a user meets them, from empty caches each time: pick digits_resnet
(the Model page measures it), set 8 bits on every Conv layer, click Apply on the Tune page (timed),
then Build artifacts on the Export page with the default int8 options (timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MODEL = "digits_resnet"
STEPS = {
    "load": "first page load (AppTest run: load digits_cnn, inventory, metrics, Model page)",
    "apply": f"Apply on the Tune page ({MODEL}, 8 bits on every Conv layer, metrics with zipped ONNX size)",
    "export": f"Build artifacts on the Export page ({MODEL}, right after Apply, with static int8)",
    "layer_first": "select another layer, first time (digits_cnn: quantize, SVD, mask, Layers page)",
    "layer_again": "select another layer again (cached)",
}


def _seconds(action: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def measure(tree: Path, repeats: int) -> dict[str, list[float]]:
    """Every step's times, in seconds, with the app and engine of ``tree`` (run in a process of its own)."""
    sys.path.insert(0, str(tree))
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    app_file = str(tree / "app.py")

    def fresh_app() -> AppTest:
        st.cache_resource.clear()
        st.cache_data.clear()
        return AppTest.from_file(app_file, default_timeout=600)

    def click(app: AppTest, label: str) -> None:
        next(item for item in app.button if item.label == label).click().run()
        assert not app.exception and not app.error, (label, app.exception, [error.value for error in app.error])

    def select_layer(app: AppTest, name: str) -> None:
        next(widget for widget in app.selectbox if widget.label == "Layer").set_value(name).run()
        assert not app.exception, app.exception

    times: dict[str, list[float]] = {step: [] for step in STEPS}
    app = fresh_app()
    times["load"].append(_seconds(app.run))
    for _ in range(repeats):
        app = fresh_app()
        app.run()
        app.sidebar.selectbox[0].set_value(MODEL).run()
        app.switch_page("pages/tune.py").run()
        click(app, "All Conv layers")
        times["apply"].append(_seconds(click, app, "Apply"))
        app.switch_page("pages/export.py").run()
        times["export"].append(_seconds(click, app, "Build artifacts"))
        assert any(item.key == "download-model_int8.onnx" for item in app.get("download_button")), (
            "no int8 file was built"
        )
    app = fresh_app()
    app.run()
    app.switch_page("pages/layers.py").run()
    box = next(widget for widget in app.selectbox if widget.label == "Layer")
    names = [*box.options[1:], box.options[0]]
    for step in ("layer_first", "layer_again"):
        times[step].extend(_seconds(select_layer, app, name) for name in names)
    return times


def run_worker(tree: Path, repeats: int) -> dict[str, list[float]]:
    """``measure`` in a fresh process with ``tree`` as its working folder, and a scratch temp folder for its exports."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--repeats", str(repeats)]
        done = subprocess.run(
            command, cwd=tree, env={**os.environ, "TMPDIR": scratch}, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"the benchmark of {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtime() -> dict:
    """The machine record of ``compress_core.ort.cpu`` (CPU, int8 features, ORT version; the app's
    sessions use ORT's default threads). Imported here, not at the top: a worker measuring another
    checkout must import that checkout's engine, not this one's."""
    sys.path.insert(0, str(REPO))
    from compress_core.ort.runtime import runtime_record

    return runtime_record(None)


def _commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown commit"


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}, {len(values)})"


def report(columns: dict[str, dict[str, list[float]]], command: str, rounds: int, record: dict) -> str:
    """The results as Markdown: the machine (``record``, from ``runtime``) first, then one row per
    step, one column per measured checkout (median, range, runs)."""
    from compress_core.ort.runtime import runtime_line

    names = list(columns)
    header = (
        "| step | "
        + " | ".join(f"{name}: median s (min-max, runs)" for name in names)
        + (" | speed-up |" if len(names) == 2 else " |")
    )
    lines = [
        "# App benchmark",
        "",
        f"{runtime_line(record)}; Python {platform.python_version()}; "
        f"`{command}`, {time.strftime('%Y-%m-%d')}, {rounds} round{'s' if rounds != 1 else ''}"
        f"{' alternating between the checkouts' if len(names) == 2 else ''}.",
        "",
        header,
        "|---|" + "---|" * len(names) + ("---|" if len(names) == 2 else ""),
    ]
    for step, label in STEPS.items():
        row = f"| {label} | " + " | ".join(_cell(columns[name][step]) for name in names) + " |"
        if len(names) == 2:
            before, after = (statistics.median(columns[name][step]) for name in names)
            row += f" {before / after:.2f}x |"
        lines.append(row)
    lines += ["", "Times are the script's own (AppTest), without the browser's drawing of the charts."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure (this checkout, and ``--before`` when given, alternating), print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure alongside this one")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="Apply + Export flows per process (default 2)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker.resolve(), args.repeats)))
        return
    trees = {f"after ({_commit(REPO)})": REPO}
    if args.before:
        trees = {f"before ({_commit(args.before)})": args.before.resolve(), **trees}
    columns: dict[str, dict[str, list[float]]] = {name: {step: [] for step in STEPS} for name in trees}
    for index in range(args.rounds):
        order = list(trees) if index % 2 == 0 else list(reversed(trees))
        for name in order:
            for step, values in run_worker(trees[name], args.repeats).items():
                columns[name][step].extend(values)
            print(f"round {index + 1}/{args.rounds}: {name} measured", file=sys.stderr)
    command = (
        "python benchmarks/app.py"
        + (f" --before {args.before}" if args.before else "")
        + f" --rounds {args.rounds} --repeats {args.repeats}"
    )
    record = runtime()
    text = report(columns, command, args.rounds, record)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "app.md").write_text(text, encoding="utf-8")
    (RESULTS / "app.json").write_text(
        json.dumps({"runtime": record, "command": command, "times": columns}, indent=1) + "\n", encoding="utf-8"
    )
    print(text)


if __name__ == "__main__":
    main()
