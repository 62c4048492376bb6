"""Layers page: the layer table and, for one layer, its weights under quantization, pruning and low rank.

The five views of the chosen layer are tabs that rerun the page when switched, and only the open
tab is computed (each view is cached per layer and setting): picking a layer costs what its open
tab costs. The views' settings are kept in the session, so switching tabs or layers keeps them.
"""

import streamlit as st

from compress_core import CompressError
from compress_core.ops.quantize import ALLOWED_BITS, GRANULARITIES, SCHEMES
from explorer_ui import cache, figures, layer_data, state

PRUNE_KINDS = ("unstructured", "2:4", "4:8", "1:4")
TABS = ("Quantization", "Channel ranges", "Low rank", "Pruning", "Graph")
TAB_KEY = "layers_tab"
PREFIX = "layers_"  # the keys of this page's settings, kept while their widgets are not drawn
TABLE_COLUMNS = {
    "params": st.column_config.NumberColumn("params", format="localized"),
    "macs": st.column_config.NumberColumn("MACs", format="localized"),
    **{
        key: st.column_config.NumberColumn(key.replace("_", " "), format="%.3g")
        for key in ("min", "max", "mean", "std", "abs_mean")
    },
    "kurtosis": st.column_config.NumberColumn("kurtosis", format="%.2f"),
    "sparsity": st.column_config.NumberColumn("sparsity", format="percent"),
}  # counts with separators, weight statistics to 3 significant digits, sparsity as a percentage


session = st.session_state


def kept(key: str, default: object) -> str:
    """The session key ``key`` of a setting, holding ``default`` until the user changes it; the value
    outlives a run in which its widget is not drawn (another tab open)."""
    session[key] = session.get(key, default)
    return key


source, handle = state.page_model(session)
state.keep_settings(session, PREFIX, TAB_KEY)
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
st.dataframe(
    layer_data.table_rows(shown),
    hide_index=True,
    height=min(38 + 35 * len(shown), 400),
    column_config=TABLE_COLUMNS,
)

layer = state.pick_layer(session, layers, layers[0].name, "layer_widget")
name = layer.name
st.caption(
    f"{layer.type}, {layer.precision}, weight `{layer.weight_name}` {list(layer.weight_shape)}, "
    f"{layer.params:,} parameters, {layer.macs:,} MACs"
)
note = layer_data.precision_note(layer)
if note:
    st.warning(note)

quantization, channels, low_rank, pruning, graph = st.tabs(TABS, key=TAB_KEY, on_change="rerun")

if quantization.open is not False:
    with quantization:
        bits_column, scheme_column, granularity_column, channel_column = st.columns(4)
        bits = bits_column.selectbox("Bits", ALLOWED_BITS, key=kept(f"{PREFIX}bits", 4))
        scheme = scheme_column.selectbox("Scheme", SCHEMES, key=kept(f"{PREFIX}scheme", SCHEMES[0]))
        granularity = granularity_column.selectbox(
            "Granularity", GRANULARITIES, key=kept(f"{PREFIX}granularity", GRANULARITIES[0])
        )
        per_channel = granularity == "channel"
        channel = channel_column.number_input(
            "Output channel",
            0,
            layer.weight_shape[layer.out_axis] - 1,
            key=kept(f"{PREFIX}channel_{name}", 0),
            disabled=not per_channel,
            help="Per-channel grids differ: the histogram and levels are those of this channel."
            if per_channel
            else "Off: with per-tensor granularity one grid covers every channel.",
        )
        if not per_channel:
            channel_column.caption("One grid for the whole tensor: no channel to pick.")
        try:
            with st.spinner("Quantizing ..."):
                view = cache.quantization_view(source.key, handle, name, bits, scheme, granularity, int(channel))
        except CompressError as exc:
            st.error(str(exc))
        else:
            histogram_column, error_column = st.columns(2)
            histogram_column.plotly_chart(figures.weight_histogram(view["values"], view["levels"], view["scope"]))
            error_column.plotly_chart(figures.error_histogram(view["errors"], view["sqnr_db"]))

if channels.open:
    with channels:
        st.plotly_chart(figures.channel_ranges(layer_data.channel_view(layer)))
        st.caption(
            f"Red channels span more than {layer_data.OUTLIER_FACTOR:g}x the median range: with one grid per tensor "
            "they would take most of its levels; per-channel quantization gives each channel its own."
        )

if low_rank.open:
    with low_rank:
        with st.spinner("Computing singular values ..."):
            spectrum = cache.spectrum_view(source.key, handle, name)
        full = len(spectrum["singular_values"])
        rank_key = kept(f"{PREFIX}rank_{name}", max(1, min(spectrum["break_even"], full)))
        if full == 1:
            rank = 1
            st.caption("Rank 1 of 1: this weight matrix has a single row or column, so there is no rank to choose.")
        else:
            rank = st.slider("Rank", 1, full, key=rank_key)
        st.plotly_chart(figures.spectrum(spectrum, rank))
        factors, dense = layer_data.factor_params(spectrum["shape"], rank)
        st.caption(
            f"Rank {rank} of {full}: two factors of {factors:,} parameters in all, against {dense:,} for the full "
            f"matrix; below the break-even rank ({spectrum['break_even']}) factorizing saves parameters."
        )

if pruning.open:
    with pruning:
        kind_column, ratio_column = st.columns(2)
        kind = kind_column.selectbox(
            "Pattern",
            PRUNE_KINDS,
            key=kept(f"{PREFIX}prune_kind", PRUNE_KINDS[0]),
            help="N:M keeps N of every M consecutive input weights.",
        )
        unstructured = kind == "unstructured"
        ratio = ratio_column.slider(
            "Ratio pruned",
            0.0,
            0.95,
            step=0.05,
            key=kept(f"{PREFIX}prune_ratio", 0.5),
            disabled=not unstructured,
        )
        if not unstructured:
            ratio_column.caption(
                f"Off: the {kind} pattern fixes the ratio at {layer_data.pattern_ratio(kind):.0%} of weights pruned."
            )
        try:
            mask = cache.mask_view(source.key, handle, name, ratio, kind)
        except CompressError as exc:
            st.error(str(exc))
        else:
            st.plotly_chart(figures.mask_heatmap(mask, f"{kind} pruning"))

if graph.open:
    with graph:
        server = cache.netron_server()
        viewer: str | None
        with st.spinner("Exporting the graph to ONNX ..."):
            try:
                viewer = server.publish(f"{handle.name}.onnx", cache.onnx_bytes(source.key, handle))
                node = cache.onnx_node_names(source.key, handle).get(name)
            except CompressError as exc:
                st.error(str(exc))
                viewer = None
        if viewer is not None:
            if node:
                st.markdown(
                    f"Layer `{name}` is the ONNX node **`{node}`**: the graph opens with it selected and in view "
                    "(if it is not, find it with Ctrl+F in the graph)."
                )
            else:
                st.markdown(
                    f"Layer `{name}` has no node of its own in the exported graph (its weight is transformed first); "
                    f"search for its weight `{layer.weight_name}` with Ctrl+F in the graph."
                )
            st.iframe(
                server.viewer_url(viewer, st.context.headers.get("Host"), node),
                height=640,
                alt=f"netron graph of {handle.name}",
            )
