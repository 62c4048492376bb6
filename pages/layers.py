"""Layers page: the layer table and, for one layer, its weights under quantization, pruning and low rank."""

import streamlit as st

from compress_core import CompressError
from compress_core.ops.quantize import ALLOWED_BITS, GRANULARITIES, SCHEMES
from explorer_ui import cache, figures, layer_data, state

PRUNE_KINDS = ("unstructured", "2:4", "4:8", "1:4")

session = st.session_state
source, handle = state.page_model(session)
with st.spinner("Reading the layers ..."):
    layers = cache.inventory(source.key, handle)

st.title(f"Layers of {handle.name}")
summary = layer_data.precision_summary(layers)
if summary:
    st.info(summary)
left, right = st.columns([2, 1])
text = left.text_input("Filter by name", placeholder="e.g. conv or blocks.0")
types = right.multiselect("Types", sorted({layer.type for layer in layers}))
shown = layer_data.filter_layers(layers, text, types)
st.dataframe([layer.to_dict(channels=False) for layer in shown], hide_index=True, height=min(38 + 35 * len(shown), 400))

layer = state.pick_layer(session, layers, layers[0].name, "layer_widget")
name = layer.name
st.caption(
    f"{layer.type}, {layer.precision}, weight `{layer.weight_name}` {list(layer.weight_shape)}, "
    f"{layer.params:,} parameters, {layer.macs:,} MACs"
)
note = layer_data.precision_note(layer)
if note:
    st.warning(note)

quantization, channels, low_rank, pruning, graph = st.tabs(
    ["Quantization", "Channel ranges", "Low rank", "Pruning", "Graph"]
)

with quantization:
    bits_column, scheme_column, granularity_column, channel_column = st.columns(4)
    bits = bits_column.selectbox("Bits", ALLOWED_BITS, index=ALLOWED_BITS.index(4))
    scheme = scheme_column.selectbox("Scheme", SCHEMES)
    granularity = granularity_column.selectbox("Granularity", GRANULARITIES)
    channel = channel_column.number_input(
        "Output channel",
        0,
        layer.weight_shape[layer.out_axis] - 1,
        disabled=granularity != "channel",
        help="Per-channel grids differ: the histogram and levels are those of this channel.",
    )
    try:
        with st.spinner("Quantizing ..."):
            view = cache.quantization_view(source.key, handle, name, bits, scheme, granularity, int(channel))
    except CompressError as exc:
        st.error(str(exc))
    else:
        histogram_column, error_column = st.columns(2)
        histogram_column.plotly_chart(figures.weight_histogram(view["values"], view["levels"], view["scope"]))
        error_column.plotly_chart(figures.error_histogram(view["errors"], view["sqnr_db"]))

with channels:
    st.plotly_chart(figures.channel_ranges(layer_data.channel_view(layer)))
    st.caption(
        f"Red channels span more than {layer_data.OUTLIER_FACTOR:g}x the median range: with one grid per tensor "
        "they would take most of its levels; per-channel quantization gives each channel its own."
    )

with low_rank:
    with st.spinner("Computing singular values ..."):
        spectrum = cache.spectrum_view(source.key, handle, name)
    full = len(spectrum["singular_values"])
    rank = st.slider("Rank", 1, full, max(1, min(spectrum["break_even"], full)), disabled=full == 1)
    st.plotly_chart(figures.spectrum(spectrum, rank))
    factors, dense = layer_data.factor_params(spectrum["shape"], rank)
    st.caption(
        f"Rank {rank} of {full}: two factors of {factors:,} parameters in all, against {dense:,} for the full matrix; "
        f"below the break-even rank ({spectrum['break_even']}) factorizing saves parameters."
    )

with pruning:
    kind_column, ratio_column = st.columns(2)
    kind = kind_column.selectbox("Pattern", PRUNE_KINDS, help="N:M keeps N of every M consecutive input weights.")
    ratio = ratio_column.slider("Ratio pruned", 0.0, 0.95, 0.5, 0.05, disabled=kind != "unstructured")
    try:
        mask = cache.mask_view(source.key, handle, name, ratio, kind)
    except CompressError as exc:
        st.error(str(exc))
    else:
        st.plotly_chart(figures.mask_heatmap(mask, f"{kind} pruning"))

with graph:
    server = cache.netron_server()
    with st.spinner("Exporting the graph to ONNX ..."):
        try:
            viewer = server.publish(f"{handle.name}.onnx", cache.onnx_bytes(source.key, handle))
            node = cache.onnx_node_names(source.key, handle).get(name)
        except CompressError as exc:
            st.error(str(exc))
            viewer = None
    if viewer is not None:
        if node:
            st.markdown(f"Layer `{name}` is the ONNX node **`{node}`**: find it with Ctrl+F in the graph.")
        else:
            st.markdown(
                f"Layer `{name}` has no node of its own in the exported graph (its weight is transformed first)."
            )
        st.iframe(
            server.viewer_url(viewer, st.context.headers.get("Host")), height=640, alt=f"netron graph of {handle.name}"
        )
