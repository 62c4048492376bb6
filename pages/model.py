"""Model page: what is loaded (size, compute, accuracy, layers by type) and loading your own file."""

import streamlit as st

from compress_core.models.samples import digits_names
from explorer_ui import cache, layer_data, state
from explorer_ui.sources import DATA_EXTENSIONS, MODEL_EXTENSIONS

NO_ARCHITECTURE = "(not a state_dict)"
TRUST_LABEL = "I trust this file: it may run code (full pickles, TorchScript, .pt2 with pickled parts)"

session = st.session_state
source, handle = state.page_model(session)

st.title(f"Model: {handle.name}")
st.caption(
    f"{handle.kind} model, {handle.backend} backend, input {handle.input_spec.dtype}{list(handle.input_spec.shape)} "
    f"per sample; evaluation data: {handle.data.origin} ({len(handle.data)} samples). Pick another model in the sidebar."
)
with st.spinner("Measuring the model ..."):
    layers = cache.inventory(source.key, handle)
    metrics = cache.baseline_metrics(source.key, handle)

columns = st.columns(4)
columns[0].metric("Parameters", f"{metrics['params']:,}")
columns[1].metric("MACs per sample", f"{metrics['macs']:,}")
columns[2].metric(
    "Size (float32)",
    f"{metrics['float_bytes'] / 1024:,.1f} KiB",
    help=f"zipped ONNX: {metrics['zip_bytes'] / 1024:,.1f} KiB",
)
if metrics["accuracy"] is not None:
    columns[3].metric("Accuracy", f"{metrics['accuracy']:.2%}", help=f"on the {handle.data.origin}")
else:
    columns[3].metric("Accuracy", "n/a")
    st.info(
        "This evaluation data has no labels, so the metrics of a compressed model are fidelity only: how close its "
        "outputs stay to the original's (cosine similarity, SQNR, and top-1 agreement for class outputs)."
    )

st.subheader("Layers by type")
st.dataframe(layer_data.layers_by_type(layers), hide_index=True, width="content")

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
        "Evaluation data (optional .npz with 'inputs' and optional 'labels')",
        type=list(DATA_EXTENSIONS),
        key=state.UPLOAD_DATA,
    )
    left, right = st.columns(2)
    shape_text = left.text_input("Input shape of one sample (only if the file does not say)", placeholder="e.g. 1,8,8")
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
