"""Export & latency page: write the compressed model's files, download them, and time them side by side."""

from pathlib import Path

import streamlit as st

from compress_core import CompressError
from compress_core.ort.int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, Int8Options
from explorer_ui import cache, exporting, figures, recover_panel, state

session = st.session_state
source, handle = state.page_model(session)
layers = cache.inventory(source.key, handle)
plan = state.plan(session)
label = session[state.CURRENT]
fine_tuned = recover_panel.fine_tuned_for(session, plan)

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
dynamic = mode_column.toggle(
    "Dynamic (weights only)", disabled=not with_int8, help="The usual choice for transformers."
)
method = method_column.selectbox("Calibration", CALIBRATION_METHODS, disabled=not with_int8 or dynamic)
activations = activation_column.selectbox("Activations", ACTIVATION_TYPES, disabled=not with_int8 or dynamic)

if st.button("Build artifacts", type="primary"):
    try:
        options = Int8Options(method=method, activations=activations, dynamic=dynamic) if with_int8 else None
        with st.status("Building artifacts ...", expanded=True) as status:
            folder = exporting.export_folder(source.key, plan, fine_tuned=fine_tuned is not None)
            model = fine_tuned if fine_tuned is not None else cache.compressed(source.key, plan, handle)
            built = exporting.build(model, folder, options, status.write)
            status.update(label="Artifacts built", state="complete", expanded=False)
        session[state.EXPORTS][label] = built
        session[state.LATENCY].pop(label, None)
    except CompressError as exc:
        st.error(str(exc))

built = session[state.EXPORTS].get(label)
if built is not None and not exporting.still_on_disk(built):
    del session[state.EXPORTS][label]
    session[state.LATENCY].pop(label, None)
    built = None
    st.info(
        f"The files built earlier were removed to save disk space (the app keeps the newest {exporting.KEPT_EXPORTS} builds): build them again."
    )
if built is not None:
    st.subheader("Files")
    st.caption(f"In `{built['folder']}`")
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

    st.subheader("Latency")
    cpu_title, cpu_notes = exporting.this_cpu()
    with st.expander(cpu_title):
        st.markdown("\n".join(f"- {note}" for note in cpu_notes))
        st.caption(
            "Speed-ups of int8 over fp32, and the accuracy of U8S8 int8 files, depend on the CPU: the figures "
            "below hold for this one. The export's metrics.json and report.md record it too."
        )
    threads_column, batch_column, runs_column = st.columns(3)
    threads = threads_column.number_input("Threads", 1, 8, 2)
    batch = batch_column.number_input("Batch", 1, 512, 32)
    runs = runs_column.number_input("Timed runs per candidate", 5, 500, 50)
    if st.button("Run latency benchmark", type="primary"):
        bar = st.progress(0.0, text="Timing the candidates, interleaved ...")
        try:
            session[state.LATENCY][label] = exporting.benchmark(
                built["folder"],
                int(threads),
                int(batch),
                int(runs),
                lambda fraction: bar.progress(fraction, text="Timing the candidates, interleaved ..."),
            )
        except CompressError as exc:
            st.error(str(exc))
        bar.empty()

    rows = session[state.LATENCY].get(label)
    if rows:
        st.dataframe(exporting.latency_table(rows), hide_index=True)
        st.plotly_chart(
            figures.latency_bars(
                [row["name"] for row in rows],
                [row["median_ms"] for row in rows],
                [row["p10_ms"] for row in rows],
                [row["p90_ms"] for row in rows],
            )
        )
        st.subheader("Slowest nodes per candidate")
        st.dataframe(exporting.layer_times(rows), hide_index=True)
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
