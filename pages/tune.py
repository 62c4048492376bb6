"""Tune page: edit the per-layer plan as a table, apply it, and compare with the original and the last try."""

import streamlit as st

from compress_core import CompressError
from compress_core.ops.quantize import GRANULARITIES, SCHEMES
from compress_core.plan import Plan
from explorer_ui import cache, figures, recover_panel, state, tuning

session = st.session_state
source, handle = state.page_model(session)
layers = cache.inventory(source.key, handle)
plan = state.plan(session)

st.title(f"Tune {handle.name}")
st.caption(
    "One row per layer. bits: float keeps the layer float; prune ratio with kind unstructured or structured "
    "(whole output channels), or an N:M kind (its ratio is implied); rank: empty for no factorization, a number with "
    "a decimal point for a fraction of full rank (0.5; 1.0 is full rank), an integer for a rank (8); smooth: the int8 "
    "export's input smoothing of a MatMul or Gemm layer (empty for none). "
    "Order of application: low rank, pruning, quantization."
)

with st.expander("Bulk edits and recipes", expanded=True):
    bits_column, all_column, conv_column, reset_column = st.columns(4, vertical_alignment="bottom")
    regex_column, match_column = st.columns([3, 1], vertical_alignment="bottom")
    bulk_bits = bits_column.selectbox("Bits", tuning.BITS_OPTIONS, index=tuning.BITS_OPTIONS.index("8"))
    pattern = regex_column.text_input(
        "Layers matching (regex)", placeholder=r"e.g. fc\d|head", help="RE2 syntax, matched against the whole name"
    )
    conv_names = tuning.conv_layers(layers)
    no_conv = "this model has no Conv layer" if not conv_names else None
    no_pattern = "type a regex first" if not pattern.strip() else None
    try:
        if all_column.button(
            "All layers", width="stretch", help=f"Set these bits on all {len(layers)} layers of the table."
        ):
            state.replace_plan(session, tuning.with_bits(plan, layers, tuning.all_layers(layers), bulk_bits))
        if conv_column.button(
            "All Conv layers",
            width="stretch",
            disabled=no_conv is not None,
            help=no_conv or f"Set these bits on the {len(conv_names)} Conv layers.",
        ):
            state.replace_plan(session, tuning.with_bits(plan, layers, conv_names, bulk_bits))
        if match_column.button(
            "Matching layers",
            width="stretch",
            disabled=no_pattern is not None,
            help=no_pattern or "Set these bits on the layers the regex matches.",
        ):
            state.replace_plan(
                session, tuning.with_bits(plan, layers, tuning.matching_layers(layers, pattern), bulk_bits)
            )
        if reset_column.button("Reset plan", width="stretch", help="Every layer back to float, nothing pruned."):
            state.replace_plan(session, Plan())
    except CompressError as exc:
        st.error(str(exc))
    reasons = [
        f"{label} is off: {reason}."
        for label, reason in (("All Conv layers", no_conv), ("Matching layers", no_pattern))
        if reason
    ]
    if reasons:
        st.caption(" ".join(reasons))

    upload_column, download_column = st.columns([3, 1], vertical_alignment="bottom")
    recipe_file = upload_column.file_uploader(
        "Recipe (YAML or JSON)", type=["yaml", "yml", "json"], key="recipe_upload"
    )
    no_recipe = "choose a recipe file above first" if recipe_file is None else None
    if upload_column.button("Load recipe", disabled=no_recipe is not None, help=no_recipe) and recipe_file is not None:
        try:
            state.replace_plan(session, tuning.load_recipe(recipe_file.getvalue(), recipe_file.name, handle, layers))
        except CompressError as exc:
            st.error(str(exc))
    if no_recipe:
        upload_column.caption(f"Load recipe is off: {no_recipe}.")
    plan = state.plan(session)
    download_column.download_button(
        "Download recipe",
        plan.to_yaml(),
        file_name=f"{handle.name}-recipe.yaml",
        mime="application/yaml",
        width="stretch",
    )

rows = tuning.plan_rows(plan, layers)
key = state.editor_key(session)
st.data_editor(
    rows,
    key=key,
    on_change=state.on_plan_edit,
    args=(key, rows),
    hide_index=True,
    disabled=("layer", "type", "params"),
    column_config={
        "bits": st.column_config.SelectboxColumn("bits", options=tuning.BITS_OPTIONS, required=True),
        "scheme": st.column_config.SelectboxColumn("scheme", options=SCHEMES, required=True),
        "granularity": st.column_config.SelectboxColumn("granularity", options=GRANULARITIES, required=True),
        "params": st.column_config.NumberColumn("params", format="localized"),
        "smooth": st.column_config.NumberColumn(
            "smooth",
            min_value=0.05,
            max_value=1.0,
            step=0.05,
            help="int8 export only: empty for none; 0.5-0.9 moves that share of a MatMul / Gemm layer's input "
            "outliers into its weights (SmoothQuant), for layers whose activations one grid rounds badly",
        ),
        "prune_ratio": st.column_config.NumberColumn("prune ratio", min_value=0.0, max_value=0.95, step=0.05),
        "prune_kind": st.column_config.SelectboxColumn("prune kind", options=tuning.PRUNE_KIND_OPTIONS, required=True),
        "rank": st.column_config.TextColumn(
            "rank", help="empty: no factorization; 0.5 or 1.0: a fraction of full rank; 8: a rank"
        ),
    },
)

empty_plan = (
    "Apply is off: the plan changes no layer yet. Set bits, pruning or a rank in the table, or use a bulk edit above."
    if not plan.layers
    else None
)
apply_column, reason_column = st.columns([1, 5], vertical_alignment="center")
if apply_column.button("Apply", type="primary", disabled=empty_plan is not None, help=empty_plan):
    try:
        with st.spinner(f"Applying the plan and measuring on {len(handle.data):,} samples ..."):
            result = tuning.apply_and_measure(cache.compressed(source.key, plan, handle))
        state.add_history(session, tuning.history_entry(state.history(session), result))
    except CompressError as exc:
        st.error(str(exc))
if empty_plan:
    reason_column.caption(empty_plan)

entries = state.history(session)
if entries:
    original = cache.baseline_metrics(source.key, handle)
    current = entries[-1]
    columns = {
        "original": original,
        **({f"previous ({entries[-2]['label']})": entries[-2]["metrics"]} if len(entries) > 1 else {}),
    }
    columns[f"current ({current['label']})"] = current["metrics"]
    metrics = current["metrics"]
    size_column, quality_column = st.columns(2)
    size_column.metric(
        "Size at the plan's bit widths",
        f"{metrics['plan_bytes'] / 1024:,.1f} KiB",
        delta=f"{metrics['plan_bytes'] / original['plan_bytes'] - 1:+.1%} vs original",
        delta_color="inverse",
    )
    title, value, change = tuning.quality_figure(handle, metrics, original)
    quality_column.metric(title, value, delta=f"{change} vs original")
    st.dataframe(tuning.summary_table(columns, handle), hide_index=True)
    for note in metrics["notes"]:
        st.info(note)
    if metrics["layer_sqnr"]:
        st.plotly_chart(figures.layer_sqnr(metrics["layer_sqnr"]))
    st.subheader("History")
    st.dataframe(tuning.history_table(entries), hide_index=True)

recover_panel.render_recover_panel()
