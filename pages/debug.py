"""Debug int8: which layer of the real int8 model loses quality or time, on the graph, with a one-click fix."""

import pandas as pd
import streamlit as st

from compress_core.debug.fix import FIX_ACTIONS, Fix
from compress_core.errors import CompressError
from compress_core.plan import Plan
from explorer_ui import cache, debug_view, state, tuning
from explorer_ui.debug_view import DEBUG, DEBUG_FIX

FIX_LABELS = {
    "float": "keep float",
    "bits": "8 bits",
    "granularity": "switch granularity",
    "calibration": "entropy calibration",
}
TABLE_COLUMNS = {
    "rank": "rank",
    "layer": "layer",
    "bits": "bits",
    "storage": "stored as",
    "restore_gain_db": "restore gain dB",
    "own_sqnr_db": "own dB",
    "own_output_sqnr_db": "own at output dB",
    "weight_sqnr_db": "weight dB",
    "activation_sqnr_db": "activation dB",
    "output_sqnr_db": "output dB",
    "fp32_ms": "fp32 ms",
    "int8_ms": "int8 ms",
    "speedup": "speed-up",
    "verdict": "verdict",
    "suggestion": "suggested fix",
}

TABLE_FORMATS = {  # dB to a tenth, times to the microsecond, speed-ups to two decimals
    **{
        TABLE_COLUMNS[key]: st.column_config.NumberColumn(format="%.1f") for key in TABLE_COLUMNS if key.endswith("_db")
    },
    TABLE_COLUMNS["fp32_ms"]: st.column_config.NumberColumn(format="%.3f"),
    TABLE_COLUMNS["int8_ms"]: st.column_config.NumberColumn(format="%.3f"),
    TABLE_COLUMNS["speedup"]: st.column_config.NumberColumn(format="%.2fx"),
}

session = st.session_state
source, handle = state.page_model(session)
layers = cache.inventory(source.key, handle)
names = [layer.name for layer in layers]
plan = state.plan(session)
label = session[state.CURRENT]
session.setdefault(DEBUG, {})
session.setdefault(DEBUG_FIX, {})


def _set_all_to_8_bits() -> None:
    state.replace_plan(st.session_state, tuning.with_bits(state.plan(st.session_state), layers, names, "8"))


def _keep_fix() -> None:
    result = st.session_state[DEBUG_FIX].get(st.session_state[state.CURRENT])
    if result is not None:
        state.replace_plan(st.session_state, Plan.from_dict(result["plan"]))


st.title("Debug int8")
st.caption(
    "Quantizes the current plan to static int8 (ONNX Runtime, QDQ) and measures every layer of the real int8 "
    "model against fp32: its own error, what it costs the output, its time, and a verdict. See the README's "
    "*Reading the debug overlay*."
)
if not any((config := plan.config_for(name)) is not None and config.bits is not None for name in names):
    st.info("The plan quantizes no layer: there is no int8 model to debug.")
    st.button("Set every layer to 8 bits", on_click=_set_all_to_8_bits, key="debug_all_8")
    st.stop()

model = cache.compressed(source.key, plan, handle)
if st.button("Debug the int8 model", type="primary", key="debug_run"):
    try:
        with st.spinner("Quantizing, measuring each layer and profiling ..."):
            session[DEBUG][label] = debug_view.run_debug(model, plan)
            session[DEBUG_FIX].pop(label, None)
    except CompressError as exc:
        st.error(str(exc))

entry = session[DEBUG].get(label)
if entry is None:
    st.info("Press *Debug the int8 model* to rank the layers of the current plan.")
    st.stop()
if entry["plan"] != plan.to_dict():
    st.warning("The plan has changed since this run: debug again to see the current plan.")
value = entry["quality"]["int8"]
quality = entry["quality"]
st.metric(f"int8 {quality['key']}", "n/a" if value is None else f"{100 * value:.2f}%")
st.caption(
    f"On {quality['samples']} evaluation samples ({'against the labels' if quality['key'] == 'accuracy' else 'against fp32'}); "
    f"the layers' figures on {quality['measured']} of them."
)

st.subheader("Layers, worst first")
table = pd.DataFrame(entry["rows"])[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
st.dataframe(table, hide_index=True, key="debug_table", column_config=TABLE_FORMATS)

st.subheader("On the graph: fp32 and int8 side by side")
st.caption(
    "Navigation is synced by node name. Pick an overlay under *Node data providers*: own error, restore gain, "
    "output error, int8 and fp32 ms, speed-up, planned bits (red is worst)."
)
st.iframe(debug_view.viewer_url(entry, st.context.headers.get("Host")), height=720)

st.subheader("Fix one layer")
left, right = st.columns(2)
layer = left.selectbox("Layer (ranked)", [row["layer"] for row in entry["rows"]], key="debug_fix_layer")
action = right.radio("Fix", FIX_ACTIONS, horizontal=True, key="debug_fix_action", format_func=FIX_LABELS.__getitem__)
if st.button("Apply the fix and re-export", key="debug_fix_button"):
    try:
        with st.spinner("Re-exporting and measuring ..."):
            session[DEBUG_FIX][label] = debug_view.try_fix(model, entry, Fix(action, layer), names)
    except CompressError as exc:
        st.error(str(exc))
result = session[DEBUG_FIX].get(label)
if result is not None:
    st.markdown(f"**Before and after: {result['fix']}** (ms per batch of {result['batch']}, timed side by side)")
    st.dataframe(pd.DataFrame(debug_view.before_after_rows(result)), hide_index=True, key="debug_before_after")
    st.button("Keep this fix in the plan", on_click=_keep_fix, key="debug_keep")
