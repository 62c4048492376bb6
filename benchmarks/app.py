"""How fast the app answers: first page load, Apply and Export of digits_resnet, redrawing another layer;
and, against the targets of issue 14, the same steps on a large real model (ddddocr's ``common_det.onnx``).

Not a timed test. ``python benchmarks/app.py`` measures this checkout and writes
``benchmarks/results/app.md`` and ``app.json``; ``python benchmarks/app.py --before DIR`` measures
another checkout of the project (a ``git worktree`` of an earlier commit) too, alternating between the
two in fresh processes round by round, so that both see the same machine load, and writes them side
by side. Every step goes through ``AppTest`` (the script's own time, without the browser's drawing),
so the same steps run on any commit whose pages have the same buttons.

Apply and Export are timed as a user meets them, from empty caches each time: pick digits_resnet
(the Model page measures it), set 8 bits on every Conv layer, click Apply on the Tune page (timed),
then Build artifacts on the Export page with the default int8 options (timed).

The large model (``LARGE_MODEL``, 20 MB, 83 Conv, one 416x416 image per sample, about 3.2 G MACs)
is measured once per run in a process of its own, each figure next to its target (``LARGE_STEPS``):
uploaded with a ``--samples``-sample ``.npz`` (30 by default, as the issue's user had) on the Model
page's form; every layer picked with the Quantization and the Low rank tab open, the largest ones
with the other tabs open; an all-8-bit plan (All layers) applied; each long step started and
stopped (``STOP_AFTER`` seconds in) where its page offers a Stop. ``--large-only`` measures only
this part and keeps the digits table of the last results file; ``--no-large`` skips it.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MODEL = "digits_resnet"
STEPS = {
    "load": "first page load (AppTest run: load digits_cnn, inventory, metrics, Model page)",
    "apply": f"Apply on the Tune page ({MODEL}, 8 bits on every Conv layer, metrics with zipped ONNX size)",
    "export": f"Build artifacts on the Export page ({MODEL}, right after Apply, with static int8)",
    "layer_first": "select another layer, first time (digits_cnn, Layers page: the open tab, Quantization)",
    "layer_again": "select another layer again (cached)",
}


RECOVERY_MODEL = MODEL  # a torch model: recovery fine-tunes torch models only
LARGE_MODEL = "common_det.onnx"
LARGE_SAMPLES = 30
LARGEST_LAYERS = 8  # layers picked with the cheaper tabs open: the largest weights, the worst case
STOP_AFTER = 3.0  # seconds a long step runs before its Stop is clicked
ANY_LAYER = "picking a layer"
LARGE_STEPS = {
    # key: (label, target in seconds or None; the largest time measured is held to it)
    "large_load": ("first load of the Model page (Load model of the upload, until the page is drawn)", 5.0),
    "large_layers": ("opening the Layers page (first layer, Quantization tab)", None),
    "large_pick_quantization": (f"{ANY_LAYER}, Quantization tab open (every layer, first time)", 1.5),
    "large_pick_low_rank": (f"{ANY_LAYER}, Low rank tab open (every layer, first time)", 1.5),
    "large_pick_pruning": (f"{ANY_LAYER}, Pruning tab open (the {LARGEST_LAYERS} largest layers)", 1.5),
    "large_pick_channel_ranges": (
        f"{ANY_LAYER}, Channel ranges tab open (the {LARGEST_LAYERS} largest layers)",
        1.5,
    ),
    "large_pick_graph": (f"{ANY_LAYER}, Graph tab open (the {LARGEST_LAYERS} largest layers)", 1.5),
    "large_pick_again": (f"{ANY_LAYER} again (cached), Quantization tab open", 1.5),
    "large_apply": ("Apply of an all-8-bit plan (All layers), the first: runs the original too", 5.0),
    "large_apply_again": ("Apply of another all-layer plan (6 bits), the original's run cached", 5.0),
    "stop_sensitivity": ("stopping sensitivity (Run sensitivity, Stop)", 3.0),
    "stop_recovery": (f"stopping recovery (Recover after Apply, Stop; on {MODEL}: needs torch)", 3.0),
    "stop_export": ("stopping export (Build artifacts, Stop)", 3.0),
    "stop_latency": ("stopping the latency benchmark (Run latency benchmark, Stop)", 3.0),
}
STOPS = {  # step: (page, the button that starts it); recovery last, as it switches to the torch sample
    "stop_sensitivity": ("pages/sensitivity.py", "Run sensitivity"),
    "stop_export": ("pages/export.py", "Build artifacts"),
    "stop_latency": ("pages/export.py", "Run latency benchmark"),
    "stop_recovery": ("pages/tune.py", "Recover"),
}
KEPT_RUNS = 4  # earlier large-model runs kept in the results, newest first
LATENCY_BUDGET_ROW = "the default latency benchmark (target: within its stated budget + 10%)"


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


def large_model_path() -> Path:
    """``common_det.onnx`` in the installed ddddocr wheel (``pip install --no-deps ddddocr==1.6.1``)."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ddddocr is not installed: pip install --no-deps ddddocr==1.6.1")
    return Path(next(iter(spec.submodule_search_locations))) / LARGE_MODEL


def measure_large(tree: Path, samples: int) -> dict[str, list[float] | str]:
    """Each of ``LARGE_STEPS``: its times in seconds, or a sentence saying why it has none."""
    sys.path.insert(0, str(tree))
    import numpy as np
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    results: dict[str, list[float] | str] = {}
    model = large_model_path()
    data = Path(tempfile.mkdtemp()) / "det.npz"
    np.savez(data, images=np.random.default_rng(0).random((samples, 3, 416, 416), dtype=np.float32))
    st.cache_resource.clear()
    st.cache_data.clear()
    app = AppTest.from_file(str(tree / "app.py"), default_timeout=1800)
    app.run()
    app.file_uploader(key="upload_model").upload(model.name, model.read_bytes())
    app.file_uploader(key="upload_data").upload(data.name, data.read_bytes())
    load = next(item for item in app.button if item.label == "Load model")
    results["large_load"] = [_seconds(lambda: load.click().run())]
    _check(app, "Load model")
    if not app.title[0].value.endswith(model.stem):
        raise SystemExit(f"the upload did not load: {app.title[0].value}, {[error.value for error in app.error]}")

    results["large_layers"] = [_seconds(lambda: app.switch_page("pages/layers.py").run())]
    _check(app, "Layers page")
    box = next(widget for widget in app.selectbox if widget.label == "Layer")
    names = list(box.options)
    from compress_core import load_model
    from compress_core.models.inventory import layer_inventory

    sizes = {layer.name: layer.params for layer in layer_inventory(load_model(model, data=data))}
    largest = sorted(names, key=lambda name: -sizes.get(name, 0))[:LARGEST_LAYERS]

    def pick(name: str) -> float:
        seconds = _seconds(lambda: next(w for w in app.selectbox if w.label == "Layer").set_value(name).run())
        _check(app, f"layer {name}")
        return seconds

    def open_tab(tab: str) -> None:
        app.session_state["layers_tab"] = tab
        app.run()
        _check(app, f"tab {tab}")

    order = [*names[1:], names[0]]
    results["large_pick_quantization"] = [pick(name) for name in order]
    for step, tab, picked in (
        ("large_pick_low_rank", "Low rank", order),
        ("large_pick_pruning", "Pruning", largest),
        ("large_pick_channel_ranges", "Channel ranges", largest),
        ("large_pick_graph", "Graph", largest),
    ):
        open_tab(tab)
        results[step] = [pick(name) for name in picked if name != _current_layer(app)] or [pick(names[0])]
    open_tab("Quantization")
    results["large_pick_again"] = [pick(name) for name in largest]

    app.switch_page("pages/tune.py").run()
    for bits, step in (("8", "large_apply"), ("6", "large_apply_again")):
        next(widget for widget in app.selectbox if widget.label == "Bits").set_value(bits).run()
        next(item for item in app.button if item.label == "All layers").click().run()
        apply = next(item for item in app.button if item.label == "Apply")
        results[step] = [_seconds(lambda button: button.click().run(), apply)]
        _check(app, f"Apply {bits} bits")

    try:
        _built(app)
        results["latency_budget"], results["latency_budget_s"] = _latency_run(app)
    except Exception as exc:  # noqa: BLE001 - a page another change broke: say so, measure the rest
        results["latency_budget"] = (
            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        )
    for step, (page, label) in STOPS.items():
        try:
            if step == "stop_latency":
                _built(app)
            if step == "stop_recovery":  # fine-tuning needs a torch model: stopped on the torch sample
                results[step] = _stop_recovery(app)
                continue
            results[step] = _stop_time(app, page, label)
        except Exception as exc:  # noqa: BLE001 - a page another change broke: say so, measure the rest
            results[step] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return results


def _check(app: Any, what: str) -> None:
    exception, errors = app.exception, [error.value for error in app.error]
    if exception or errors:
        raise SystemExit(f"{what}: {exception or errors}")


def _current_layer(app: Any) -> str:
    return next(w for w in app.selectbox if w.label == "Layer").value


def _running_job(app: Any) -> Any:
    """The background job a page keeps in the session (``BackgroundJob``, alone or in a dict), if one runs."""
    for key in app.session_state:
        value = app.session_state[key]
        job = value.get("job") if isinstance(value, dict) else value
        if hasattr(job, "cancel") and hasattr(job, "done") and not job.done:
            return job
    return None


def _stop_recovery(app: Any) -> list[float] | str:
    """``_stop_time`` of Recover on ``RECOVERY_MODEL`` (4 bits on every layer, applied) in a fresh
    session of the same app: ONNX models such as the large one cannot be fine-tuned."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(app._script_path, default_timeout=1800)
    app.run()
    app.sidebar.selectbox[0].set_value(RECOVERY_MODEL).run()
    app.switch_page("pages/tune.py").run()
    next(widget for widget in app.selectbox if widget.label == "Bits").set_value("4").run()
    next(item for item in app.button if item.label == "All layers").click().run()
    next(item for item in app.button if item.label == "Apply").click().run()
    _check(app, f"Apply on {RECOVERY_MODEL}")
    result = _stop_time(app, "pages/tune.py", "Recover")
    return result if isinstance(result, list) else f"{RECOVERY_MODEL}: {result}"


def _built(app: Any) -> None:
    """The Export page with its files built (Build artifacts run to its end), for the latency benchmark."""
    app.switch_page("pages/export.py").run()
    if any(item.label == "Run latency benchmark" for item in app.button):
        return
    next(item for item in app.button if item.label == "Build artifacts").click().run()
    job = _running_job(app)
    if job is not None:
        job.wait(1800)
    for _ in range(3):
        app.run()
    _check(app, "Build artifacts")


def _latency_run(app: Any) -> tuple[list[float], float]:
    """The default latency benchmark of the built files, run to its end: its seconds from the click
    to the job's end, and the budget the page stated (its default)."""
    app.switch_page("pages/export.py").run()
    start = next(item for item in app.button if item.label == "Run latency benchmark")
    started = time.perf_counter()
    start.click().run()
    job = _running_job(app)
    if job is not None:
        job.wait(1800)
    seconds = time.perf_counter() - started
    for _ in range(3):  # the page takes the job's result on its next runs
        app.run()
    _check(app, "Run latency benchmark")
    measured = next(iter(app.session_state["latency"].values()))
    if measured["stopped"]:
        raise SystemExit("the latency benchmark stopped on its own before its end")
    return [seconds], float(measured["budget_s"])


def _stop_time(app: Any, page: str, label: str) -> list[float] | str:
    """Seconds from clicking Stop to the job's end, ``STOP_AFTER`` s after ``label`` started it on
    ``page``; or why there is none (no such button, no Stop, finished first)."""
    app.switch_page(page).run()
    starts = [item for item in app.button if item.label == label and not item.disabled]
    if not starts:
        return f"no enabled '{label}' button on {page}"
    started = time.perf_counter()
    starts[0].click().run()
    blocking = time.perf_counter() - started
    job = _running_job(app)
    if job is None:
        _check(app, label)
        return f"no Stop: '{label}' ran to its end in the page's run ({blocking:.1f} s)"
    time.sleep(max(0.0, STOP_AFTER - blocking))
    app.run()
    stops = [item for item in app.button if item.label == "Stop"]
    if job.done:
        app.run()
        return f"finished within {time.perf_counter() - started:.1f} s, before its Stop was clicked"
    if not stops:
        job.wait()
        return f"no Stop button while '{label}' ran ({time.perf_counter() - started:.1f} s)"
    clicked = time.perf_counter()
    stops[0].click().run()
    job.wait(600)
    seconds = time.perf_counter() - clicked
    for _ in range(3):  # the page takes the job's partial result on its next runs
        app.run()
    _check(app, f"after stopping {label}")
    return [seconds]


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


def run_large_worker(tree: Path, samples: int) -> dict[str, list[float] | str]:
    """``measure_large`` in a fresh process, its uploads and exports in a scratch temp folder."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker-large",
            str(tree),
            "--samples",
            str(samples),
        ]
        done = subprocess.run(
            command, cwd=tree, env={**os.environ, "TMPDIR": scratch}, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"the large-model benchmark of {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def latency_budget_row(results: dict[str, Any]) -> str:
    """The table row of the default latency benchmark run to its end, held to its stated budget + 10%."""
    budget = results.get("latency_budget_s")
    value = results.get("latency_budget", "not measured")
    if budget is None:
        return f"| {LATENCY_BUDGET_ROW} | budget + 10% | {value} | - |"
    cell, verdict = _verdict(value, 1.1 * budget)
    return f"| {LATENCY_BUDGET_ROW} | < {1.1 * budget:g} s (budget {budget:g} s + 10%) | {cell} | {verdict} |"


def _verdict(value: list[float] | str, target: float | None) -> tuple[str, str]:
    """A step's cell (max, median, runs; or the sentence why there is no time) and its verdict."""
    if isinstance(value, str):
        return value, "-"
    worst = max(value)
    verdict = "" if target is None else ("yes" if worst < target else "**no**")
    return f"{worst:.2f} ({statistics.median(value):.2f}, {len(value)})", verdict


def large_report(large: dict[str, Any], earlier: list[dict[str, Any]]) -> str:
    """The large model's figures as Markdown: step, target, measured (max, median, runs), verdict;
    then the same steps' largest times in the ``earlier`` runs, with each run's machine load."""
    loads = large["load"]
    lines = [
        f"## {LARGE_MODEL} (ddddocr 1.6.1): the targets of issue 14",
        "",
        f"20 MB ONNX, 83 Conv, one 3x416x416 image per sample (about 3.2 G MACs), static batch 1; uploaded on "
        f"the Model page with a {large['samples']}-sample .npz of random images (no labels). One fresh process, "
        f"{large.get('date', 'undated')}; machine load average {loads[0]:.1f} at the start and {loads[1]:.1f} at "
        "the end (2 cores: when other work runs alongside, the steps that run the model or call multi-threaded "
        "torch / LAPACK kernels slow down several times; see the earlier runs below).",
        "",
        "| step | target | measured: max s (median, runs) | met |",
        "|---|---|---|---|",
    ]
    for step, (label, target) in LARGE_STEPS.items():
        cell, verdict = _verdict(large["results"].get(step, "not measured"), target)
        lines.append(f"| {label} | {'< ' + format(target, 'g') + ' s' if target else ''} | {cell} | {verdict} |")
    lines.append(latency_budget_row(large["results"]))
    lines += ["", f"Command: `{large['command']}`."]
    if earlier:
        lines += [
            "",
            "Earlier runs of this step list (largest time in s; load average at start and end):",
            "",
            "| step | target | "
            + " | ".join(
                f"{run.get('date', 'undated')}, load {run['load'][0]:.1f}-{run['load'][1]:.1f}" for run in earlier
            )
            + " |",
            "|---|---|" + "---|" * len(earlier),
        ]
        for step, (label, target) in LARGE_STEPS.items():
            cells = []
            for run in earlier:
                value = run["results"].get(step, "not measured")
                cell, verdict = _verdict(value, target)
                cells.append(
                    cell.split(" (")[0] + (" (**no**)" if verdict == "**no**" else "")
                    if not isinstance(value, str)
                    else cell
                )
            lines.append(
                f"| {label} | {'< ' + format(target, 'g') + ' s' if target else ''} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def runtime() -> dict:
    """The machine record of ``compress_core.ort.cpu`` (CPU, int8 features, ORT version; the app's
    sessions use ORT's default threads). Imported here, not at the top: a worker measuring another
    checkout must import that checkout's engine, not this one's."""
    sys.path.insert(0, str(REPO))
    from compress_core.ort.runtime import runtime_record

    return runtime_record(None)


def _commit(tree: Path) -> str:
    """The short hash of ``tree``'s HEAD, with ``+ changes`` when its working tree differs from it."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True, text=True, check=False
    )
    return (done.stdout.strip() or "unknown commit") + (" + changes" if dirty.stdout.strip() else "")


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}, {len(values)})"


def report(
    columns: dict[str, dict[str, list[float]]], command: str, rounds: int, record: dict, date: str | None = None
) -> str:
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
        f"`{command}`, {date or time.strftime('%Y-%m-%d')}, {rounds} round{'s' if rounds != 1 else ''}"
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
    """Measure (this checkout, and ``--before`` when given, alternating; then the large model), print
    and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure alongside this one")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="Apply + Export flows per process (default 2)")
    parser.add_argument("--samples", type=int, default=LARGE_SAMPLES, help="evaluation samples of the large model")
    parser.add_argument("--large-only", action="store_true", help="measure the large model only; keep the digits table")
    parser.add_argument("--no-large", action="store_true", help="skip the large model")
    parser.add_argument("--report-only", action="store_true", help="rewrite app.md from app.json, measuring nothing")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-large", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker.resolve(), args.repeats)))
        return
    if args.worker_large:
        print(json.dumps(measure_large(args.worker_large.resolve(), args.samples)))
        return
    previous = json.loads((RESULTS / "app.json").read_text()) if (RESULTS / "app.json").exists() else {}
    if (args.large_only or args.report_only) and "times" in previous:
        columns, command, date = previous["times"], previous["command"], previous.get("date")
        rounds = int(command.split("--rounds ")[1].split()[0]) if "--rounds " in command else 1
    else:
        columns, command, rounds = measure_digits(args)
        date = time.strftime("%Y-%m-%d")
    record = runtime()
    text = report(columns, command, rounds, record, date)
    large, earlier = previous.get("large"), previous.get("large_earlier", [])
    if not (args.no_large or args.report_only):
        started = os.getloadavg()[0]
        results = run_large_worker(REPO, args.samples)
        if large:
            earlier = [large, *earlier][:KEPT_RUNS]
        large = {
            "samples": args.samples,
            "load": [started, os.getloadavg()[0]],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": f"python benchmarks/app.py --large-only --samples {args.samples}",
            "results": results,
        }
    if large:
        text += "\n" + large_report(large, earlier)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "app.md").write_text(text, encoding="utf-8")
    results_json = {"runtime": record, "command": command, "date": date, "times": columns}
    results_json |= {"large": large, "large_earlier": earlier}
    (RESULTS / "app.json").write_text(json.dumps(results_json, indent=1) + "\n", encoding="utf-8")
    print(text)


def measure_digits(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], str, int]:
    """The digits steps of this checkout (and ``--before``), alternating round by round."""
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
    return columns, command, args.rounds


if __name__ == "__main__":
    main()
