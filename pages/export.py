"""Export & latency page: write the compressed model's files, download them, and time them side by side.

Both long steps run in the background with an estimate, a progress bar with the time left and a Stop
button: building the files (a stop leaves the destination as it was) and the latency benchmark (it
fits a time budget; a stop keeps what was measured). The bit-width table and the integer-kernel
warnings say what the int8 file really stores and runs, before the build, after it and after the
benchmark.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from compress_core import CompressError
from compress_core.ort.budget import DEFAULT_BUDGET_S, format_seconds
from compress_core.ort.int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, Int8Options, options_path
from compress_core.ort.nbits import COMPUTE_MEANS, NBITS_BLOCK_SIZES, NBITS_COMPUTE, NBitsOptions
from explorer_ui import cache, exporting, figures, recover_panel, state, tuning

POLL_S = 0.25  # how often the run that started a job redraws its progress

session = st.session_state
source, handle = state.page_model(session)
layers = cache.inventory(source.key, handle)
plan = state.plan(session)
label = session[state.CURRENT]
fine_tuned = recover_panel.fine_tuned_for(session, plan)


def _set_to_8_bits(names: list[str]) -> None:
    """Callback of the 8-bit-path buttons: the named layers at 8 bits in the plan, all else kept."""
    current = state.plan(st.session_state)
    state.replace_plan(st.session_state, tuning.with_bits(current, layers, names, "8"))


def _eight_bit_button(names: list[str], key: str) -> None:
    st.button(
        f"Set {'this layer' if len(names) == 1 else f'these {len(names)} layers'} to 8 bits",
        key=key,
        on_click=_set_to_8_bits,
        args=(names,),
        help="Changes the plan (see the Tune page); build the files again to export it.",
    )


def _show_message(key: str) -> None:
    """How the job under ``key`` ended, when it was stopped or failed (shown once)."""
    message = session.pop(f"{key}_message", None)
    if message is not None:
        (st.error if message[0] == "error" else st.info)(message[1])


def _follow(key: str, title: str, stop_help: str, store: Callable[[dict[str, Any], Any], None]) -> None:
    """The progress bar and Stop button of the job under ``key``. The page run that started the job
    waits for it until its ``until``; once the job has ended, its result is stored (``store``) or its
    error kept for ``_show_message``, and the page reruns."""
    running = session.get(key)
    if running is None:
        return
    job = running["job"]
    bar = st.progress(job.fraction, text=f"{title}: {job.text}")
    if st.button("Stop", key=f"{key}_stop", help=stop_help):
        job.cancel.set()
    while not job.done and time.monotonic() < running["until"]:
        time.sleep(POLL_S)
        bar.progress(job.fraction, text=f"{title}: {job.text}")
    if job.done:
        del session[key]
        if job.error:
            session[f"{key}_message"] = ("error", job.error)
        else:
            store(running, job.result)
        st.rerun()


def _store_export(running: dict[str, Any], result: dict[str, Any]) -> None:
    if result.get("stopped"):
        session[f"{exporting.EXPORT_JOB}_message"] = (
            "info",
            f"Build stopped after {format_seconds(result['seconds'])}: no file was written (the destination keeps "
            "what an earlier build put there).",
        )
        return
    session[state.EXPORTS][running["label"]] = result
    session[state.LATENCY].pop(running["label"], None)


def _store_bench(running: dict[str, Any], result: dict[str, Any]) -> None:
    if not result["rows"]:
        session[f"{exporting.BENCH_JOB}_message"] = (
            "info",
            f"Benchmark stopped after {format_seconds(result['seconds'])}, before any file was timed.",
        )
        return
    session[state.LATENCY][running["label"]] = result


@st.fragment(run_every=0.5)
def _follow_export() -> None:
    running = session.get(exporting.EXPORT_JOB)
    title = f"Building {running['label']}" if running else "Building"
    _follow(exporting.EXPORT_JOB, title, "Stops before the next step; no file is written.", _store_export)


@st.fragment(run_every=0.5)
def _follow_bench() -> None:
    running = session.get(exporting.BENCH_JOB)
    title = f"Benchmarking {running['label']}" if running else "Benchmarking"
    _follow(
        exporting.BENCH_JOB,
        title,
        "Stops at the next run; the runs timed so far and the files already analysed are kept.",
        _store_bench,
    )


def _path_overrides(with_int8: bool, dynamic: bool) -> dict[str, Any]:
    """The "Override this CPU's int8 path" expander: ``Int8Options`` fields, None where the rule decides."""
    overrides: dict[str, Any] = {}
    with st.expander("Override this CPU's int8 path"):
        columns = st.columns(1 + len(exporting.PATH_SWITCHES))
        overrides["weights"] = columns[0].selectbox(
            "Weights",
            [None, *ACTIVATION_TYPES],
            format_func=exporting.path_choice_text,
            disabled=not with_int8,
            help="uint8: U8U8, exact without VNNI and slower; int8: U8S8 everywhere, even where it saturates",
        )
        for column, (field, (label, text, static_only)) in zip(columns[1:], exporting.PATH_SWITCHES.items()):
            off = not with_int8 or (static_only and dynamic)
            choice = column.selectbox(
                label, [None, True, False], format_func=exporting.path_choice_text, disabled=off, help=text
            )
            overrides[field] = None if off else choice
    return overrides


export_running = session.get(exporting.EXPORT_JOB)
bench_running = session.get(exporting.BENCH_JOB)

st.title(f"Export {handle.name}")
st.caption(
    f"Exports the current plan ({len(plan.layers)} layer{'s' if len(plan.layers) != 1 else ''} changed; edit it on the Tune page): "
    "ONNX fp32 of the original and the compressed model, optionally int8 through ONNX Runtime, the torch weights, "
    "the recipe, the evaluation data, metrics and a report. Every ONNX file is checked in ONNX Runtime first."
)
if fine_tuned is not None:
    st.info("The Recover panel fine-tuned this plan: the fine-tuned model is what gets exported.")
if not exporting.quantizes_any_layer(plan, layers):
    st.warning(
        "The current plan sets no bit width, so the int8 file would keep every layer float. Set bits on the Tune page."
    )
with_int8 = st.checkbox("Also build an int8 model (ONNX Runtime)", value=True)
mode_column, method_column, activation_column = st.columns(3)
smoothed = exporting.smooths_any_layer(plan, layers)
dynamic = mode_column.toggle(
    "Dynamic (weights only)",
    value=smoothed,
    disabled=not with_int8,
    help="The usual choice for transformers."
    + (
        " On for this plan: it smooths layers' inputs (smooth), which acts on dynamic exports only." if smoothed else ""
    ),
)
method = method_column.selectbox("Calibration", CALIBRATION_METHODS, disabled=not with_int8 or dynamic)
activations = activation_column.selectbox(
    "Activations",
    [None, *ACTIVATION_TYPES],
    format_func=exporting.path_choice_text,
    disabled=not with_int8 or dynamic,
)
overrides = _path_overrides(with_int8, dynamic)
options = Int8Options(method=method, activations=activations, dynamic=dynamic, **overrides) if with_int8 else None
if options is not None:
    st.caption(f"{exporting.this_cpu()[0]}. int8 path: {options_path(options).describe()}.")
weight_only_column, block_column = st.columns(2)
weight_only = weight_only_column.checkbox(
    "Also build a weight-only model (MatMulNBits)",
    help="model_nbits.onnx: the plan's 2-4-bit MatMul/Gemm layers and embedding tables stored block-wise in 4 bits, "
    "5-8-bit ones in 8, by ONNX Runtime's MatMulNBits.",
)
size_column, compute_column = block_column.columns(2)
block_size = size_column.selectbox(
    "Block size", NBITS_BLOCK_SIZES, index=NBITS_BLOCK_SIZES.index(NBitsOptions.block_size), disabled=not weight_only
)
compute = compute_column.selectbox(
    "Compute",
    tuple(NBITS_COMPUTE),
    index=tuple(NBITS_COMPUTE).index(NBitsOptions.compute),
    disabled=not weight_only,
    help="; ".join(COMPUTE_MEANS.values()) + " (ONNX Runtime's MatMulNBits accuracy_level).",
)
nbits = NBitsOptions(block_size, compute) if weight_only else None

built = session[state.EXPORTS].get(label)
if built is not None and not exporting.still_on_disk(built):
    del session[state.EXPORTS][label]
    session[state.LATENCY].pop(label, None)
    built = None
    st.info(
        f"The files built earlier were removed to save disk space (the app keeps the newest {exporting.KEPT_EXPORTS} builds): build them again."
    )
current_build = built is not None and built.get("plan") == plan.to_dict()

# What the int8 file stores and runs, layer by layer
census = built.get("census") if current_build and built is not None else None
built_dynamic = census is not None and built is not None and built["metrics"]["int8"]["mode"] == "dynamic"
bit_rows = exporting.bit_width_rows(plan, layers, built_dynamic if census is not None else dynamic, census)
counts: dict[str, int] = {}
for row in bit_rows:
    counts[row["planned bits"]] = counts.get(row["planned bits"], 0) + 1
summary = ", ".join(f"{count} at {bits if bits == 'float' else f'{bits} bits'}" for bits, count in counts.items())
with st.expander(f"Bit widths of the plan: {summary}"):
    st.table(bit_rows)
    st.caption(
        ("Measured in the built int8 file (ONNX Runtime's optimized graph). " if census is not None else "")
        + f"This CPU: {exporting.cpu_int8_note()}"
    )
planned = sum(1 for row in bit_rows if row["planned bits"] != "float")
foreseen = exporting.foreseen_float_layers(plan, layers, dynamic) if with_int8 and census is None else {}
if foreseen:
    st.warning(exporting.foreseen_warning(foreseen, planned))
    _eight_bit_button(sum(foreseen.values(), []), "eight_bits_plan")

# Building
cost = exporting.forward_cost(source.key, handle)
prepared = fine_tuned is not None or any(entry["plan"] == plan.to_dict() for entry in state.history(session))
steps = exporting.export_estimate(cost, len(handle.data), options, prepared)
st.caption(
    f"Building takes about {format_seconds(sum(step.seconds for step in steps))} "
    f"(estimated from one run of the model in ONNX Runtime: {format_seconds(cost['forward_s'])} per sample). "
    "Stop leaves the destination as it was."
)
if export_running is None:
    building_blocked = bench_running is not None
    if st.button(
        "Build artifacts",
        type="primary",
        disabled=building_blocked,
        help="Off while the latency benchmark runs: it reads the built files." if building_blocked else None,
    ):
        try:
            folder = exporting.export_folder(source.key, plan, fine_tuned=fine_tuned is not None)
            model = fine_tuned if fine_tuned is not None else cache.compressed(source.key, plan, handle)
            export_running = session[exporting.EXPORT_JOB] = {
                "label": label,
                "job": exporting.start_export(model, folder, options, steps, plan, nbits),
                "until": exporting.follow_until(sum(step.seconds for step in steps)),
            }
        except CompressError as exc:
            st.error(str(exc))
    if building_blocked:
        st.caption("Build artifacts is off while the latency benchmark runs: the benchmark reads the built files.")
if export_running is not None:
    _follow_export()
_show_message(exporting.EXPORT_JOB)

if built is not None:
    st.subheader("Files")
    if not current_build:
        st.info("These files were built from an earlier plan: build again to export the current one.")
    took = f"; built in {format_seconds(built['seconds'])}" if "seconds" in built else ""
    estimated = f" (estimated {format_seconds(built['estimated_s'])})" if "estimated_s" in built else ""
    st.caption(f"In `{built['folder']}`{took}{estimated}")
    for name, file in built["files"].items():
        name_column, size_column, button_column = st.columns([3, 2, 1], vertical_alignment="center")
        name_column.markdown(f"`{name}`")
        size_column.caption(f"{file['bytes']:,} bytes ({file['zip_bytes']:,} zipped)")
        button_column.download_button(
            "Download",
            Path(file["path"]).read_bytes(),
            file_name=name,
            mime=exporting.mime_type(name),
            key=f"download-{name}",
            width="stretch",
        )
    with st.expander("Report"):
        st.markdown(Path(built["files"]["report.md"]["path"]).read_text(encoding="utf-8"))
    built_float = exporting.measured_float_layers(built) if current_build else []
    if built_float:
        st.warning(exporting.measured_warning(built_float, built["census"]))
        _eight_bit_button(built_float, "eight_bits_built")

    st.subheader("Latency")
    cpu_title, cpu_notes = exporting.this_cpu()
    with st.expander(cpu_title):
        st.markdown("\n".join(f"- {note}" for note in cpu_notes))
        st.caption(
            "Speed-ups of int8 over fp32, and the accuracy of U8S8 int8 files, depend on the CPU: the figures "
            "below hold for this one. The export's metrics.json and report.md record it too."
        )
    has_int8, has_nbits = "model_int8.onnx" in built["files"], "model_nbits.onnx" in built["files"]
    absent = {name for name, present in (("compressed_int8", has_int8), ("compressed_nbits", has_nbits)) if not present}
    st.markdown(
        "\n".join(f"- **{name}**: {note}" for name, note in exporting.CANDIDATE_NOTES.items() if name not in absent)
    )
    threads_column, batch_column, runs_column, budget_column = st.columns(4)
    threads = threads_column.number_input("Threads", 1, 8, exporting.BENCH_THREADS)
    batch = batch_column.number_input(
        "Batch",
        1,
        512,
        None,
        placeholder="auto",
        help="Empty: the largest up to 32 that fits the budget. A model with a static batch always runs at it.",
    )
    runs = runs_column.number_input(
        "Timed runs per candidate",
        1,
        500,
        None,
        placeholder="auto",
        help="Empty: as many as fit the budget (5 to 100).",
    )
    budget = budget_column.number_input(
        "Budget (s)",
        5.0,
        3600.0,
        DEFAULT_BUDGET_S,
        5.0,
        format="%.0f",
        help=f"Seconds the whole benchmark may take (default {DEFAULT_BUDGET_S:.0f} s): opening the files, "
        "ONNX Runtime's default quantization, the timed runs, each file's quality, op census and profile.",
    )
    estimate = exporting.bench_estimate(
        cost,
        len(handle.data),
        handle.fixed_batch,
        float(budget),
        None if batch is None else int(batch),
        None if runs is None else int(runs),
        has_int8,
        has_nbits,
    )
    st.caption(
        f"Estimate: {estimate.summary()}. The benchmark times one run of each file first and settles batch and "
        "runs from it; Stop keeps what was measured."
    )
    if bench_running is None:
        bench_blocked = export_running is not None
        if st.button(
            "Run latency benchmark",
            type="primary",
            disabled=bench_blocked,
            help="Off while the files are being built." if bench_blocked else None,
        ):
            bench_running = session[exporting.BENCH_JOB] = {
                "label": label,
                "job": exporting.start_benchmark(
                    built["folder"],
                    int(threads),
                    None if batch is None else int(batch),
                    None if runs is None else int(runs),
                    float(budget),
                ),
                "until": exporting.follow_until(estimate.estimated_s),
            }
        if bench_blocked:
            st.caption("Run latency benchmark is off while the files are being built.")
    if bench_running is not None:
        _follow_bench()
        bench_running = None  # followed here
    _show_message(exporting.BENCH_JOB)

    result = session[state.LATENCY].get(label)
    if result and result["rows"]:
        rows = result["rows"]
        st.caption(exporting.bench_caption(result))
        quality = next((row["quality"] for row in rows if row["quality"]), None)
        st.dataframe(
            exporting.latency_table(rows),
            hide_index=True,
            column_config={  # times to the microsecond, speed-ups to 0.01x, quality in % as on every page
                **{name: st.column_config.NumberColumn(format="%.3f") for name in ("median ms", "p10 ms", "p90 ms")},
                "speed-up": st.column_config.NumberColumn(format="%.2fx"),
                **({quality: st.column_config.NumberColumn(format="percent")} if quality else {}),
            },
        )
        st.plotly_chart(
            figures.latency_bars(
                [row["name"] for row in rows],
                [row["median_ms"] for row in rows],
                [row["p10_ms"] for row in rows],
                [row["p90_ms"] for row in rows],
            )
        )
        bench_float, bench_census, speedup = exporting.bench_float_layers(result, built)
        if bench_float and bench_census is not None and current_build:
            st.warning(exporting.measured_warning(bench_float, bench_census, speedup))
            _eight_bit_button(bench_float, "eight_bits_bench")
        analysed = [row for row in rows if row["complete"]]
        if analysed:
            st.subheader("Slowest nodes per candidate")
            st.dataframe(exporting.layer_times(analysed), hide_index=True)
        per_layer = exporting.layer_speedups(rows)
        if per_layer:
            st.subheader("Per layer: compressed fp32 against int8")
            st.caption(exporting.unassigned_caption(rows))
            slower = [row["layer"] for row in per_layer if row["speed-up"] < 1]
            if slower:
                st.warning(
                    f"int8 is slower than fp32 on {', '.join(slower)}: consider keeping {'it' if len(slower) == 1 else 'them'} float in the plan."
                )
            st.plotly_chart(
                figures.layer_speedups([row["layer"] for row in per_layer], [row["speed-up"] for row in per_layer])
            )
            st.dataframe(per_layer, hide_index=True)

if bench_running is not None:  # a benchmark of another model's files, or of files since removed
    _follow_bench()
    _show_message(exporting.BENCH_JOB)
