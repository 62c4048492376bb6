"""Plotly figures of the Learn page, each a pure function of ``compress_core.analysis.teaching``'s plain data.

No Streamlit and no engine calls: the page computes the teaching data (cached) and draws what these
functions build. Shared layout and colours come from ``figures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .figures import ALERT_COLOR, KEPT_COLOR, MAX_DRAWN_LEVELS, MUTED_COLOR, layout, mask_figure

MAX_MASK_ROWS = 64
MAX_MASK_COLUMNS = 288
"""Masks larger than this are drawn as their top-left window (a 384x1536 heatmap is unreadable anyway)."""
METHOD_STYLES = (
    ("#2ca02c", "solid"),
    ("#ff7f0e", "dash"),
    ("#9467bd", "dot"),
    ("#d62728", "dashdot"),
    ("#8c564b", "longdash"),
)
"""Colour and dash of each calibration method's lines: dashes keep coinciding ranges visible."""
MAX_LEVEL_TICKS = 24
"""Up to this many class names (short ids) stand level under the distillation bars; more are tilted."""
STAGGER = 2.5
"""Each calibration method's lines end this many times lower (log axis) than the previous one's, so equal ranges stay apart."""


def _histogram_bars(histogram: dict[str, list[float]], name: str, color: str) -> go.Bar:
    """A bar trace of a teaching histogram (``edges``, ``counts``)."""
    edges = np.asarray(histogram["edges"])
    return go.Bar(
        x=(edges[:-1] + edges[1:]) / 2, y=histogram["counts"], width=np.diff(edges), name=name, marker_color=color
    )


def _vertical_lines(xs: Sequence[float], top: float) -> tuple[np.ndarray, np.ndarray]:
    """x and y of one scatter trace drawing a vertical line from 0 to ``top`` at each x."""
    x = np.repeat(np.asarray(xs, dtype=float), 3)
    x[2::3] = np.nan
    return x, np.tile([0.0, top, np.nan], len(xs))


def quantization_grid(view: dict[str, Any], channel: int) -> go.Figure:
    """The channel's weight histogram with the quantization levels (the grid) drawn over it."""
    figure = go.Figure(_histogram_bars(view["weight_histogram"], "weights", KEPT_COLOR))
    levels = view["levels"]
    if len(levels) <= MAX_DRAWN_LEVELS:
        x, y = _vertical_lines(levels, max(view["weight_histogram"]["counts"]))
        figure.add_trace(
            go.Scatter(x=x, y=y, mode="lines", name=f"{len(levels)} levels", line=dict(color=ALERT_COLOR, width=1))
        )
    title = f"{view['bits']}-bit {view['scheme']} grid, weights of channel {channel} (step {view['step']:.3g})"
    return layout(figure, title, "weight value", "count")


def quantization_error(view: dict[str, Any]) -> go.Figure:
    """Histogram of the channel's rounding error q(w) - w."""
    figure = go.Figure(_histogram_bars(view["error_histogram"], "error", MUTED_COLOR))
    title = f"Rounding error (max {view['max_error']:.3g}); SQNR of the whole weight {view['sqnr_db']:.1f} dB"
    return layout(figure, title, "quantized - original", "count")


def sqnr_against_bits(curve: dict[str, Any], bits: int) -> go.Figure:
    """SQNR against bit width, the least-squares line with its slope (about 6 dB per bit), ``bits`` marked."""
    x = np.asarray(curve["bits"], dtype=float)
    y = np.asarray(curve["sqnr_db"])
    intercept = float(np.mean(y - curve["db_per_bit"] * x))
    figure = go.Figure(go.Scatter(x=x, y=y, mode="markers", name="measured", marker=dict(color=KEPT_COLOR, size=9)))
    figure.add_trace(
        go.Scatter(
            x=x,
            y=curve["db_per_bit"] * x + intercept,
            mode="lines",
            name=f"fit: {curve['db_per_bit']:.2f} dB per bit",
            line=dict(color=ALERT_COLOR, dash="dash"),
        )
    )
    if bits in curve["bits"]:
        chosen = curve["sqnr_db"][curve["bits"].index(bits)]
        figure.add_trace(
            go.Scatter(
                x=[bits],
                y=[chosen],
                mode="markers",
                name=f"{bits} bits: {chosen:.1f} dB",
                marker=dict(color=ALERT_COLOR, size=14, symbol="circle-open", line=dict(width=3)),
            )
        )
    return layout(figure, "SQNR against bits (theory: 6.02 dB per bit)", "bits", "SQNR (dB)")


def scheme_levels(rows: list[dict[str, Any]], extremes: dict[str, dict[str, Any]], bits: int) -> go.Figure:
    """The levels each scheme puts on channel 0 at ``bits`` bits, one row per scheme, then binary and ternary.

    Each row's label carries its SQNR, so the spacing of the points and the number side by side.
    """
    labelled = [(f"{row['scheme']} {bits}b: {row['sqnr_db']:.1f} dB", row["levels"]) for row in rows]
    labelled += [(f"{name}: {data['sqnr_db']:.1f} dB", data["levels"]) for name, data in extremes.items()]
    figure = go.Figure()
    for index, (label, levels) in enumerate(labelled):
        color = KEPT_COLOR if index < len(rows) else ALERT_COLOR
        figure.add_trace(
            go.Scatter(
                x=levels,
                y=[label] * len(levels),
                mode="markers",
                name=label,
                showlegend=False,
                marker=dict(symbol="line-ns-open", size=16, color=color, line=dict(width=2)),
            )
        )
    figure.update_yaxes(autorange="reversed", type="category")
    return layout(
        figure,
        "Where each scheme puts its levels (channel 0), and its SQNR on the whole weight",
        "level",
        "",
        height=360,
    )


def pruning_mask(view: dict[str, Any], title: str) -> go.Figure:
    """The keep-mask as an image (rows: output channels; columns: inputs), its top-left window if large
    (``mask_window`` says which)."""
    figure = mask_figure([row[:MAX_MASK_COLUMNS] for row in view["mask"][:MAX_MASK_ROWS]])
    kept = view["kept"] / (view["kept"] + view["zeros"])
    return layout(figure, f"{title}: {kept:.0%} kept", "input (flattened)", "output channel", height=300)


def mask_window(view: dict[str, Any]) -> str | None:
    """A caption naming the part of a large mask that ``pruning_mask`` draws; None when it draws all of it."""
    rows, columns = view["shape"]
    if rows <= MAX_MASK_ROWS and columns <= MAX_MASK_COLUMNS:
        return None
    shown_rows, shown_columns = min(rows, MAX_MASK_ROWS), min(columns, MAX_MASK_COLUMNS)
    return (
        f"Each mask shows the top-left {shown_rows}x{shown_columns} of the {rows:,}x{columns:,} weight "
        "(output channels x flattened inputs); the share kept is over the whole weight."
    )


def singular_values(profile: dict[str, Any], rank: int) -> go.Figure:
    """The singular values as bars, those kept at ``rank`` in colour, the break-even rank marked."""
    values = profile["singular_values"]
    colors = [KEPT_COLOR if r <= rank else MUTED_COLOR for r in profile["ranks"]]
    figure = go.Figure(go.Bar(x=profile["ranks"], y=values, marker_color=colors, name="singular value"))
    figure.add_vline(
        x=profile["break_even_rank"] + 0.5,
        line_dash="dot",
        line_color=ALERT_COLOR,
        annotation_text=f"break-even {profile['break_even_rank']}",
        annotation_position="top right",
    )
    figure.update_yaxes(type="log", **log_ticks(values))
    return layout(figure, f"Singular values: the first {rank} kept", "index", "singular value (log)")


def log_ticks(values: Any) -> dict[str, Any]:
    """Tick values and labels for a log axis over ``values``: 1, 2 and 5 of each decade over less than
    two decades, powers of ten over more, written plainly (``0.5``, not plotly's small ``5``)."""
    positive = np.asarray(values, dtype=float)
    positive = positive[positive > 0]
    if not positive.size:
        return {}
    low, high = positive.min(), positive.max()
    steps = (1,) if np.log10(high / low) >= 2 else (1, 2, 5)
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks = [step * 10.0**decade for decade in decades for step in steps]
    shown = [tick for tick in ticks if low / 1.5 <= tick <= high * 1.5] or [low, high]
    return {"tickvals": shown, "ticktext": [f"{tick:g}" for tick in shown]}


def rank_tradeoff(profile: dict[str, Any], rank: int) -> go.Figure:
    """Relative reconstruction error and the factors' share of the dense parameters against rank."""
    ranks = profile["ranks"]
    share = np.asarray(profile["params"]) / profile["dense_params"]
    error = profile["relative_error"][rank - 1]
    figure = go.Figure(
        go.Scatter(
            x=ranks,
            y=profile["relative_error"],
            mode="lines",
            name="relative error ||W - W_r|| / ||W||",
            line=dict(color=ALERT_COLOR),
        )
    )
    figure.add_trace(
        go.Scatter(x=ranks, y=share, mode="lines", name="parameters / dense parameters", line=dict(color=KEPT_COLOR))
    )
    figure.add_hline(y=1.0, line_color=MUTED_COLOR, line_dash="dot")
    figure.add_vline(
        x=profile["break_even_rank"],
        line_dash="dot",
        line_color=MUTED_COLOR,
        annotation_text=f"break-even {profile['break_even_rank']}",
        annotation_position="bottom right",
    )
    figure.add_trace(
        go.Scatter(
            x=[rank, rank],
            y=[error, share[rank - 1]],
            mode="markers",
            name=f"rank {rank}",
            marker=dict(color="black", size=10),
        )
    )
    title = f"Rank {rank}: error {error:.1%}, {share[rank - 1]:.0%} of the dense parameters"
    return layout(figure, title, "rank r", "fraction")


def calibration_ranges(ranges: dict[str, Any], layer: str) -> go.Figure:
    """The activation histogram (log counts) with each method's clipping range [-t, t] as two lines (staggered heights)."""
    histogram = ranges["histogram"]
    figure = go.Figure(_histogram_bars(histogram, "activations", MUTED_COLOR))
    top = max(histogram["counts"])
    for index, (method, (color, dash)) in enumerate(zip(ranges["methods"], METHOD_STYLES)):
        x, y = _vertical_lines(method["range"], top * STAGGER**-index)
        name = f"{method['method']}: ±{method['threshold']:.3g}, {method['sqnr_db']:.1f} dB"
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=dict(color=color, width=2, dash=dash)))
    figure.update_yaxes(type="log")
    title = f"Inputs of {layer}: {ranges['samples']:,} values and the {ranges['bits']}-bit range each method picks"
    return layout(figure, title, "activation value", "count (log)", height=380)


def position_phrase(view: dict[str, Any]) -> str:
    """Where in the sample's output the distribution is: ``""``, ``"step 7 of 20"`` or ``"pixel (3, 5) of 16x16"``."""
    names, position, grid = view["position_names"], view["position"], view["positions"]
    if not names:
        return ""
    if len(names) == 1:
        return f"{names[0]} {position[0]} of {grid[0]}"
    return f"pixel ({', '.join(map(str, position))}) of {'x'.join(map(str, grid))}"


def softened_outputs(view: dict[str, Any], classes: Sequence[str] | None = None) -> go.Figure:
    """Teacher and student probabilities at temperature T of the classes shown (``view["classes"]``,
    named by ``classes``, by default their ids) as grouped bars, the label's class outlined."""
    names = [str(index) for index in view["classes"]] if classes is None else list(classes)
    outline = [3 if index == view["label"] else 0 for index in view["classes"]]
    figure = go.Figure(
        [
            go.Bar(
                x=names,
                y=view[role],
                name=f"{role} (entropy {view[f'{role}_entropy']:.2f} nats)",
                marker=dict(color=color, line=dict(color="black", width=outline)),
                hovertemplate="class %{x}: %{y:.3g}<extra>" + role + "</extra>",
            )
            for role, color in (("teacher", KEPT_COLOR), ("student", ALERT_COLOR))
        ]
    )
    figure.update_layout(barmode="group")
    figure.update_xaxes(
        type="category",
        categoryorder="array",
        categoryarray=names,
        tickangle=0 if len(names) <= MAX_LEVEL_TICKS else -45,
    )
    where = position_phrase(view)
    parts = [f"T = {view['temperature']:g}", *([where] if where else [])]
    if view["label"] is not None:
        parts.append(f"label {view['label']}")
    count, top = view["class_count"], view["top"]
    x_title = (
        "class"
        if top == count
        else f"class (the teacher's top {top} of {count:,}{', and the label' if len(names) > top else ''})"
    )
    return layout(figure, f"Probabilities at {', '.join(parts)}", x_title, "probability")
