"""Sensitivity page: compress one layer at a time over a sweep of levels and see which layers are fragile."""

import streamlit as st

from compress_core import CompressError
from compress_core.analysis.sweep import KINDS, Sweep
from compress_core.ops.quantize import ALLOWED_BITS
from compress_core.ort.budget import format_seconds
from explorer_ui import cache, figures, sensitivity_view, state

PRUNE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RANK_LEVELS = (0.9, 0.75, 0.5, 0.25, 0.1)

DEFAULT_BUDGET_S = 120
RAY_CONNECTION = "sensitivity_ray_connection"  # {"address", "text", "workers"} of the Ray cluster connected

session = st.session_state
source, handle = state.page_model(session)
label = session[state.CURRENT]

st.title(f"Sensitivity of {handle.name}")
st.caption(
    "Each layer is compressed alone, every other layer left as it is, at each level of the sweep; the table gives "
    f"the model's quality on {len(handle.data)} samples ({handle.data.origin}). Results are cached on disk."
)
kinds = st.multiselect("Kinds", KINDS, default=["bits", "prune"])
level_columns = iter(st.columns(max(1, len([kind for kind in ("bits", "prune", "rank") if kind in kinds]))))
bits = (
    next(level_columns).multiselect("Bit widths", ALLOWED_BITS[:-1], default=[8, 6, 4, 3, 2])
    if "bits" in kinds
    else [8]
)
prune = (
    next(level_columns).multiselect("Prune ratios", PRUNE_LEVELS, default=[0.3, 0.5, 0.7, 0.9])
    if "prune" in kinds or "structured" in kinds
    else [0.5]
)
ranks = (
    next(level_columns).multiselect("Rank fractions", RANK_LEVELS, default=[0.75, 0.5, 0.25])
    if "rank" in kinds
    else [0.5]
)
budget = st.number_input(
    "Time budget (s)",
    min_value=5,
    value=DEFAULT_BUDGET_S,
    step=30,
    help=f"The sweep stops when this time is spent (default {DEFAULT_BUDGET_S} s) and keeps the cells it measured; "
    "a rerun takes the finished sweep from the cache.",
)
run_on = st.radio(
    "Run on",
    sensitivity_view.RUN_ON,
    horizontal=True,
    help="Cells run one after another in this process (with the activation cache), in local worker processes "
    "started for the sweep, or on a Ray cluster (pip install 'compression-explorer[ray]'). Finished cells are "
    "cached wherever they ran.",
)
workers, address = 1, "local"
if run_on == sensitivity_view.RUN_ON[1]:
    workers = int(st.number_input("Local workers", min_value=1, max_value=64, value=2))
    st.caption(sensitivity_view.local_workers_text(workers))
elif run_on == sensitivity_view.RUN_ON[2]:
    address = st.text_input(
        "Ray address", value="local", help="auto (a cluster 'ray start' started here), ray://HOST:10001, or local"
    )
    if st.button("Connect", help="Connects to the cluster and counts its workers; Run connects by itself too."):
        try:
            text, count = sensitivity_view.connect(address)
        except CompressError as exc:
            st.error(str(exc))
        else:
            session[RAY_CONNECTION] = {"address": address, "text": text, "workers": count}
    connection = session.get(RAY_CONNECTION)
    if connection is not None and connection["address"] == address:
        workers = connection["workers"]
        st.caption(f"Connected to {connection['text']}.")
    else:
        st.caption("Not connected yet: Connect shows how many workers the cluster has.")
sweep: Sweep | None
sweep_error: str | None
try:
    sweep = Sweep(
        bits=tuple(sorted(bits, reverse=True)),
        prune=tuple(sorted(prune)),
        ranks=tuple(sorted(ranks, reverse=True)),
        kinds=tuple(kinds),
    )
except CompressError as exc:
    sweep, sweep_error = None, str(exc)
else:
    sweep_error = None
    layer_count = len(cache.inventory(source.key, handle))
    with st.spinner("Timing one evaluation pass for the estimate ..."):
        seconds = sensitivity_view.estimate_seconds(sweep, layer_count, cache.pass_seconds(source.key, handle), workers)
    cells = sensitivity_view.cell_count(sweep, layer_count)
    fits = (
        "fits the budget"
        if seconds <= budget
        else f"over the budget: about {int(cells * budget / seconds)} of the {cells} cells fit; fewer layers, kinds "
        "or levels, or a larger budget, measure more"
    )
    spread = f", over {workers} workers" if workers > 1 else ""
    st.caption(f"{cells} cells, estimated {format_seconds(seconds)} (one evaluation pass per cell{spread}; {fits}).")

running = session.get(state.SENSITIVITY_JOB)
reason = "a sweep is running" if running is not None else sweep_error
if st.button("Run sensitivity", type="primary", disabled=reason is not None, help=reason):
    assert sweep is not None
    running = session[state.SENSITIVITY_JOB] = {
        "label": label,
        "job": sensitivity_view.start(handle, sweep, float(budget), sensitivity_view.runner(run_on, workers, address)),
    }
    st.rerun()
if reason is not None and running is None:
    st.caption(f"Run is off: {reason}.")


@st.fragment(run_every=0.5)
def _progress() -> None:
    """Redraws the running sweep's progress; stores its result and reruns the page when it ends."""
    sweep_label, job = session[state.SENSITIVITY_JOB]["label"], session[state.SENSITIVITY_JOB]["job"]
    st.progress(job.fraction, text=f"{sweep_label}: {job.text}")
    if st.button(
        "Stop",
        help="Stops after the current cells (outstanding ones are cancelled); the rows measured so far are kept.",
    ):
        job.cancel.set()
    if job.done:
        del session[state.SENSITIVITY_JOB]
        if job.error:
            session[state.ERROR] = job.error
        else:
            session[state.SENSITIVITY][sweep_label] = job.result
        st.rerun()


if running is not None:
    _progress()

state.show_error(session)
result = session[state.SENSITIVITY].get(label)
if result is not None:
    st.caption(
        f"{len(result['rows'])} cells in {result['seconds']:.1f} s ({result['strategy']}{', from the cache' if result['cached'] else ''})"
        f"{'; stopped at the time budget' if result.get('budget_spent') else ('; stopped early' if result['cancelled'] else '')}. "
        f"Baseline {result['metric_name']}: {result['baseline']:.2f} %."
    )
    measured = sensitivity_view.kinds(result)
    tabs = st.tabs(measured) if measured else []
    for kind, tab in zip(measured, tabs):
        with tab:
            grid = sensitivity_view.grid(result, kind)
            levels = [str(level) for level in grid["levels"]]
            st.plotly_chart(
                figures.heatmap(
                    grid["metric"],
                    grid["layers"],
                    levels,
                    f"{result['metric_name']} (%) with one layer at each {kind} level",
                    kind,
                    "%",
                )
            )
            st.plotly_chart(
                figures.curves(
                    levels,
                    dict(zip(grid["layers"], grid["metric"])),
                    f"{result['metric_name']} per layer",
                    kind,
                    f"{result['metric_name']} (%)",
                )
            )
            st.subheader("Most fragile layers")
            st.dataframe(sensitivity_view.fragile(result, kind), hide_index=True)
    if result["skipped"]:
        with st.expander(f"{len(result['skipped'])} cells skipped"):
            st.dataframe(result["skipped"], hide_index=True)
    if result.get("failed"):
        st.warning(
            f"{len(result['failed'])} cells failed twice and are not in the table; running the sweep again tries "
            "only them (the other cells come from the cache)."
        )
        st.dataframe(result["failed"], hide_index=True)
