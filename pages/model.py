"""Model page: what is loaded (size, compute, accuracy, layers by type) and loading your own file."""

import streamlit as st

from compress_core.analysis.quality import AUTO, TASKS, describe_task
from compress_core.analysis.report import format_value
from compress_core.analysis.suggest_latency import suggest_latency
from compress_core.errors import CompressError
from compress_core.models.inventory import total_params
from compress_core.models.samples import digits_names
from compress_core.plan import Plan
from explorer_ui import cache, layer_data, state
from explorer_ui.sources import DATA_EXTENSIONS, MODEL_EXTENSIONS

NO_ARCHITECTURE = "(not a state_dict)"
LATENCY_SUGGESTION = "latency_suggestion"  # model key -> LatencySuggestion.to_dict()
TRUST_LABEL = "I trust this file: it may run code (full pickles, TorchScript, .pt2 with pickled parts)"

session = st.session_state
source, handle = state.page_model(session)

st.title(f"Model: {handle.name}")
inputs_text = "; ".join(spec.describe() for spec in handle.input_specs)
st.caption(
    f"{handle.kind} model, {handle.backend} backend, input{'s' if len(handle.input_specs) > 1 else ''} {inputs_text}"
    f"{f' (static batch {handle.fixed_batch}: run one batch at a time)' if handle.fixed_batch else ''}; "
    f"evaluation data: {handle.data.origin} ({len(handle.data):,} samples). Pick another model in the sidebar."
)
# Everything below the caption that describes the model is drawn into this one slot. While it is
# measured the slot holds a placeholder, so the figures of the model shown before never stand under
# this model's title (Streamlit keeps a previous run's elements on screen until they are replaced).
body = st.empty()
body.info(f"Measuring {handle.name} ...", icon=":material/hourglass_top:")
labelled = handle.data.labels is not None
with st.spinner("Reading the layers ..."):
    layers = cache.inventory(source.key, handle)
    params = total_params(handle)
if labelled:  # accuracy needs one run over the evaluation data; unlabelled data has no figure to show here
    with st.spinner(f"Measuring accuracy on {len(handle.data):,} samples ..."):
        metrics = cache.baseline_metrics(source.key, handle)

with body.container():
    columns = st.columns(4)
    columns[0].metric("Parameters", f"{params:,}")
    columns[1].metric("MACs per sample", f"{sum(layer.macs for layer in layers):,}")
    columns[2].metric(
        "Size (float32)",
        f"{params * 4 / 1024:,.1f} KiB",
        help=f"zipped ONNX: {metrics['zip_bytes'] / 1024:,.1f} KiB"
        if labelled
        else "The zipped ONNX size is measured with the first Apply on the Tune page.",
    )
    if labelled and metrics["accuracy"] is not None:
        columns[3].metric("Accuracy", format_value(metrics["accuracy"], "percent"), help=f"on the {handle.data.origin}")
    else:
        columns[3].metric("Accuracy", "n/a")
        st.info(
            "This evaluation data has no labels, so the metrics of a compressed model are fidelity only: how close its "
            "outputs stay to the original's (the task's agreement below, cosine similarity and SQNR)."
        )

    st.subheader("How quality is measured")
    st.markdown(
        f"Task: **{describe_task(handle.task)}**"
        f"{' (detected from the output)' if source.task == AUTO and handle.kind != 'sample' else ''}. "
        f"Ranked output: {handle.quality.output}"
        f"{f'; CTC repeats and blank {handle.quality.ctc_blank} are collapsed' if handle.quality.ctc_blank is not None else ''}. "
        "Sensitivity and suggestions rank layers by this figure. Your own metric function is a CLI option "
        "(`--metric path.py:function`)."
    )
    with st.form("quality"):
        left, middle, right = st.columns(3)
        task_choices = [AUTO, *TASKS]
        task = left.selectbox(
            "Task",
            task_choices,
            index=task_choices.index(source.task),
            format_func=lambda t: t if t == AUTO else describe_task(t),
        )
        output = middle.number_input("Ranked output (index)", min_value=0, value=source.output, step=1)
        blank_text = right.text_input(
            "CTC blank id (sequences and ids; empty: compare as they are)",
            value="" if source.ctc_blank is None else str(source.ctc_blank),
        )
        if st.form_submit_button("Measure this way"):
            changed = state.measure_as(session, source, task, int(output), blank_text)
            if changed:
                st.rerun()
            state.show_error(session)

    st.subheader("Layers by type")
    st.dataframe(
        layer_data.layers_by_type(layers),
        hide_index=True,
        width="content",
        column_config={
            "params": st.column_config.NumberColumn("params", format="localized"),
            "macs": st.column_config.NumberColumn("MACs", format="localized"),
        },
    )

st.subheader("Suggest a plan for speed on this CPU")
st.caption(
    "Profiles the model with every layer in int8 and in fp32 in ONNX Runtime, keeps float the layers whose int8 "
    "kernel is slower on this CPU, then exports that plan and measures its speed and accuracy "
    "(as `suggest --objective latency`). Takes one export and about a minute on a large model."
)
found = session.get(LATENCY_SUGGESTION, {}).get(source.key)
if st.button("Suggest for latency"):
    try:
        with st.spinner("Profiling, exporting and timing ..."):
            found = suggest_latency(handle).to_dict()
        session.setdefault(LATENCY_SUGGESTION, {})[source.key] = found
    except CompressError as exc:
        st.error(str(exc))
if found is not None:
    st.dataframe(
        [{**row, "plan": "float" if row["layer"] in found["float_layers"] else "8 bits"} for row in found["layers"]],
        hide_index=True,
    )
    st.markdown(
        f"Predicted speed-up over fp32: **{found['predicted_speedup']:.2f}x** (every layer int8: "
        f"{found['all_int8_predicted']:.2f}x); measured on the exported file: "
        + "; ".join(
            f"{name} {timing['speedup']:.2f}x, {found['metric']} {format_value(found['quality'][name], 'percent')}"
            for name, timing in found["measured"].items()
        )
        + f" (batch {found['batch']}, {found['threads']} threads)."
    )
    if st.button("Use this plan", help="Replaces the current plan; edit it on the Tune page."):
        state.replace_plan(session, Plan.from_dict(found["plan"], "suggested plan"))
        st.success("The plan is set: see it on the Tune page.")

st.subheader("Load your own model")
limit = st.get_option("server.maxUploadSize")
st.caption(
    f"ONNX, a state_dict of a built-in architecture, TorchScript, torch.export (.pt2) or a fully pickled module; files up "
    f"to {limit} MB each. TorchScript, pickles and .pt2 files with pickled parts can run code from the file, so they "
    "load only if you say you trust the file. A failed load keeps the current model."
)
with st.form("upload"):
    model_file = st.file_uploader("Model file", type=list(MODEL_EXTENSIONS), key=state.UPLOAD_MODEL)
    data_file = st.file_uploader(
        "Evaluation data (optional .npz: one array per input name, or 'inputs' for one input; optional 'labels')",
        type=list(DATA_EXTENSIONS),
        key=state.UPLOAD_DATA,
    )
    left, right = st.columns(2)
    shape_text = left.text_input(
        "Input shapes or values (only what the file leaves open)",
        placeholder="1,8,8  or  input1=1,64,160; sr=16000",
        help="One sample's shape without the batch axis for a single input, or NAME=SHAPE per input, and "
        "NAME=VALUE for a scalar input such as a sample rate; separate entries with ';'. An .npz holds one array "
        "per input name ('inputs' for a single input).",
    )
    architecture = right.selectbox("Architecture (for a state_dict)", [NO_ARCHITECTURE, *digits_names()])
    trust_code = st.checkbox(
        TRUST_LABEL,
        value=False,
        help="Loading TorchScript or a torch.export (.pt2) file, or unpickling a full module, can run code that the file "
        "carries, with your permissions. Leave this off unless you made the file or trust whoever did. ONNX files and "
        "state_dicts load without it.",
    )
    submitted = st.form_submit_button("Load model", type="primary")
if submitted:
    with st.spinner("Loading the uploaded model ..."):
        loaded = state.load_upload(
            session,
            model_file,
            data_file,
            shape_text,
            None if architecture == NO_ARCHITECTURE else architecture,
            trust_code,
        )
    if loaded:
        st.rerun()
    state.show_error(session)
