"""Plotly figures, each a pure function of plain data (arrays, dicts): no Streamlit, no engine calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

MAX_DRAWN_LEVELS = 1024
"""Above this many quantization levels (16-bit grids) the levels are not drawn one by one."""
MAX_CHANNEL_BARS = 1024  # more output channels than this are drawn in groups (a browser draws 30k bars slowly)
BINS = 80
MIN_BINS = 10
KEPT_COLOR = "#1f77b4"
ALERT_COLOR = "#d62728"
MUTED_COLOR = "#9aa5b1"
LABEL_BACKGROUND = "rgba(255, 255, 255, 0.85)"  # behind a line's label, so that the lines under it do not hide it


def layout(figure: go.Figure, title: str, x: str, y: str, height: int = 320) -> go.Figure:
    """The common look: title, axis titles, height, tight margins, legend below."""
    figure.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.25),
    )
    return figure


def weight_histogram(values: np.ndarray, levels: np.ndarray, scope: str) -> go.Figure:
    """Histogram of weights with every quantization level drawn as a vertical line over it."""
    counts, edges = np.histogram(values, bins=int(np.clip(len(values) // 4, MIN_BINS, BINS)))
    figure = go.Figure(
        go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name="weights", marker_color=KEPT_COLOR)
    )
    if len(levels) <= MAX_DRAWN_LEVELS:
        top = float(counts.max()) if len(counts) else 1.0
        xs = np.repeat(levels, 3).astype(float)
        xs[2::3] = np.nan
        ys = np.tile([0.0, top, np.nan], len(levels))
        figure.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", name=f"{len(levels)} levels", line=dict(color=ALERT_COLOR, width=1))
        )
        title = f"Weights of the {scope} and the {len(levels)} quantization levels"
    else:
        title = f"Weights of the {scope} ({len(levels):,} levels: too dense to draw)"
    return layout(figure, title, "weight value", "count")


def error_histogram(errors: np.ndarray, sqnr_db: float) -> go.Figure:
    """Histogram of rounding errors (quantized - original) over the whole weight, binned here (a large
    weight's errors are not sent to the browser one by one)."""
    counts, edges = np.histogram(errors, bins=BINS)
    figure = go.Figure(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            marker_color=MUTED_COLOR,
            name="error",
            hovertemplate="error %{x:.3g}: %{y:,} weights<extra></extra>",
        )
    )
    return layout(figure, f"Rounding error, whole weight (SQNR {sqnr_db:.1f} dB)", "quantized - original", "count")


def channel_ranges(view: dict, max_bars: int = MAX_CHANNEL_BARS) -> go.Figure:
    """Per-output-channel min..max bars; outlier channels (range > 3x median) in red.

    More than ``max_bars`` channels (an embedding table's 30,522 rows) are drawn in groups of
    consecutive channels: each bar spans its group's lowest min to highest max, red when the group
    holds an outlier, and the title says how many channels a bar stands for."""
    low, high, outlier = (np.asarray(view[key]) for key in ("min", "max", "outliers"))
    count = len(low)
    group = max(1, -(-count // max_bars))
    starts = np.arange(0, count, group)
    low, high = np.minimum.reduceat(low, starts), np.maximum.reduceat(high, starts)
    flagged = np.logical_or.reduceat(outlier, starts)
    ends = np.minimum(starts + group, count) - 1
    hover = "channel %{x}" if group == 1 else "channels %{x}-%{customdata}"
    figure = go.Figure(
        go.Bar(
            x=starts,
            y=high - low,
            base=low,
            customdata=ends,
            width=group,
            offset=0 if group > 1 else None,
            marker_color=np.where(flagged, ALERT_COLOR, KEPT_COLOR),
            name="min..max",
            hovertemplate=hover + "<br>min %{base:.3g}<br>range %{y:.3g}<extra></extra>",
        )
    )
    outliers = int(np.sum(outlier))
    title = f"Weight range per output channel ({outliers} outlier{'s' if outliers != 1 else ''}, median range {view['median']:.3g})"
    if group > 1:
        title += f"; {count:,} channels, {group} per bar"
    return layout(figure, title, "output channel", "weight value")


def spectrum(view: dict, rank: int) -> go.Figure:
    """Singular values (bars) and the cumulative energy kept (line, right axis), the rank marked."""
    values = view["singular_values"]
    ranks = np.arange(1, len(values) + 1)
    figure = go.Figure()
    figure.add_trace(go.Bar(x=ranks, y=values, name="singular value", marker_color=KEPT_COLOR))
    figure.add_trace(
        go.Scatter(
            x=ranks, y=view["energy"], name="energy kept", yaxis="y2", mode="lines", line=dict(color=ALERT_COLOR)
        )
    )
    at_break_even = rank == view["break_even"]
    if at_break_even:
        rank_side = "top right" if rank <= len(values) / 2 else "top left"
    else:  # the two labels on opposite sides of their lines, so that they do not overlap
        rank_side = "top right" if rank > view["break_even"] else "top left"
    figure.add_vline(
        x=rank,
        line_dash="dash",
        annotation_text=f"rank {rank}{' (break-even)' if at_break_even else ''}: {view['energy'][rank - 1]:.1%} energy",
        annotation_position=rank_side,
        annotation_bgcolor=LABEL_BACKGROUND,
    )
    if view["break_even"] >= 1 and not at_break_even:
        figure.add_vline(
            x=view["break_even"],
            line_dash="dot",
            line_color=MUTED_COLOR,
            annotation_text="break-even",
            annotation_position="top left" if rank_side == "top right" else "top right",
            annotation_bgcolor=LABEL_BACKGROUND,
        )
    figure.update_layout(
        yaxis2=dict(overlaying="y", side="right", range=[0, 1.15], dtick=0.25, tickformat=".0%", title="energy kept")
    )
    return layout(
        figure, f"Singular values of the {view['shape'][0]}x{view['shape'][1]} weight matrix", "rank", "singular value"
    )


def mask_figure(mask: Any, x: Sequence[int] | None = None, y: Sequence[int] | None = None) -> go.Figure:
    """A keep-mask (1 kept, 0 pruned; a block's share kept in between) as a heatmap: rows are output
    channels, columns the flattened inputs (``x`` / ``y``: the first input / channel of each column / row)."""
    figure = go.Figure(
        go.Heatmap(
            z=mask,
            x=None if x is None else list(x),
            y=None if y is None else list(y),
            colorscale=[[0, "#f0f0f0"], [1, KEPT_COLOR]],
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="out %{y}, in %{x}: %{z:.0%} kept<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    return figure


def mask_heatmap(view: dict, label: str) -> go.Figure:
    """The keep-mask as a heatmap: rows are output channels, columns the flattened inputs; a large mask
    as blocks, each shaded by the share of its weights kept."""
    rows, columns = view.get("block", (1, 1))
    shape = np.shape(view["mask"])
    whole = rows == columns == 1
    figure = mask_figure(
        view["mask"],
        None if whole else np.arange(shape[1]) * columns,
        None if whole else np.arange(shape[0]) * rows,
    )
    blocks = "" if whole else f"; each cell a block of {rows}x{columns} weights, shaded by the share kept"
    return layout(
        figure,
        f"{label}: {view['kept']:.1%} of weights kept{blocks}",
        "input (flattened)",
        "output channel",
        height=360,
    )


def layer_sqnr(sqnr: dict[str, float | None]) -> go.Figure:
    """SQNR (dB) of each planned layer's effective weight; layers with removed channels are left out."""
    measured = {name: value for name, value in sqnr.items() if value is not None}
    names, values = list(measured), [min(value, 120.0) for value in measured.values()]
    figure = go.Figure(go.Bar(x=names, y=values, marker_color=KEPT_COLOR))
    return layout(figure, "Weight SQNR per planned layer (higher is closer to the original)", "layer", "SQNR (dB)")


def heatmap(
    z: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    x_title: str,
    colorbar: str,
) -> go.Figure:
    """A labelled heatmap (rows x columns, both categorical) with the values written in the cells."""
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(columns),
            y=list(rows),
            colorscale="RdYlGn",
            colorbar=dict(title=colorbar),
            texttemplate="%{z:.1f}",
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(type="category")
    return layout(figure, title, x_title, "", height=max(320, 28 * len(rows) + 120))


def curves(x: Sequence, series: dict[str, Sequence[float]], title: str, x_title: str, y_title: str) -> go.Figure:
    """One line per named series over shared x values (categorical, in the order given)."""
    figure = go.Figure(
        [go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=name) for name, y in series.items()]
    )
    figure.update_xaxes(type="category")
    return layout(figure, title, x_title, y_title, height=380)


def latency_bars(
    names: Sequence[str], median: Sequence[float], p10: Sequence[float], p90: Sequence[float]
) -> go.Figure:
    """Median latency per artifact, with whiskers from p10 to p90."""
    median_array = np.asarray(median, dtype=float)
    figure = go.Figure(
        go.Bar(
            x=list(names),
            y=median_array,
            marker_color=KEPT_COLOR,
            error_y=dict(
                type="data",
                symmetric=False,
                array=np.asarray(p90) - median_array,
                arrayminus=median_array - np.asarray(p10),
            ),
        )
    )
    return layout(figure, "Latency per artifact: median, whiskers p10..p90", "artifact", "ms per batch")


def layer_speedups(layers: Sequence[str], speedups: Sequence[float]) -> go.Figure:
    """Profiled int8 speed-up over fp32 per layer; red where int8 is slower (below the 1x line)."""
    colors = [ALERT_COLOR if value < 1 else KEPT_COLOR for value in speedups]
    figure = go.Figure(go.Bar(x=list(layers), y=list(speedups), marker_color=colors))
    figure.add_hline(y=1.0, line_dash="dash", line_color=MUTED_COLOR)
    return layout(figure, "int8 speed-up over fp32 per layer (ORT profiler)", "layer", "fp32 ms / int8 ms")
