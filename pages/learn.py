"""Learn page: each compression technique explained, with its formula and a live plot on the current model.

The techniques are tabs that rerun the page when switched, and only the open tab is computed, as on the
Layers page: a large layer's SVD or calibration is paid only when its tab is opened."""

from typing import Any

import numpy as np
import streamlit as st

from compress_core import CompressError, ModelHandle
from compress_core.analysis import teaching
from compress_core.analysis.calibration import PERCENTILES, calibration_ranges, layer_input_activations
from compress_core.ops.quantize import SCHEMES
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig
from explorer_ui import cache, figures, learn_figures, recover_panel, sensitivity_view, state

TABS = ("Quantization", "Pruning", "Low rank", "Calibration", "Distillation")
TAB_KEY = "learn_tab"
LAYER_WIDGET = "learn_layer_widget"
PREFIX = "learn_"  # the keys of this page's settings, kept while their widgets are not drawn
NM_PATTERNS = ("2:4", "4:8", "1:4")
PERCENTILE_OPTIONS = (99.0, 99.9, 99.99, 99.999)
DEMO_STUDENT = Plan(
    default=LayerConfig(bits=2, granularity="tensor")
)  # the distillation demo's student before any apply
PRUNE_KINDS = {"prune": "unstructured", "structured": "structured"}  # sensitivity kinds that prune, and how
POSITION_HINTS = {  # the distillation demo on outputs with one distribution per step or pixel
    "sequence": "A sequence output has one distribution over the classes at each step: pick the step to look at.",
    "dense": "A dense output has one distribution over the classes at each pixel: pick its row and column.",
}
DEMO_MIN_PARAMS = 1024  # the layer shown first: the first one this big, so the histograms have something to show


@st.cache_data(show_spinner=False, max_entries=256)
def _weight_demo(key: str, _handle: ModelHandle, layer: str, demo: str, **options: Any) -> Any:
    """``teaching.<demo>(weight of layer, **options)``, cached per model, layer, demo and options."""
    return getattr(teaching, demo)(teaching.layer_weight(_handle, layer), **options)


@st.cache_data(show_spinner=False, max_entries=8)
def _activations(key: str, _handle: ModelHandle, layer: str) -> np.ndarray:
    """The values reaching ``layer``'s input on the evaluation data."""
    return layer_input_activations(_handle, layer)


@st.cache_data(show_spinner=False, max_entries=32)
def _calibration(
    key: str, _handle: ModelHandle, layer: str, bits: int, percentiles: tuple[float, ...]
) -> dict[str, Any]:
    """``calibration_ranges`` of ``layer``'s input activations."""
    return calibration_ranges(_activations(key, _handle, layer), bits, percentiles)


@st.cache_data(show_spinner=False, max_entries=8)
def _positions(key: str, _handle: ModelHandle) -> tuple[int, ...]:
    """The positions of one sample's output that each hold a distribution over the classes."""
    return teaching.distillation_positions(_handle)


def _class_name(index: int, blank: int | None) -> str:
    """A class id as a short axis label, the CTC blank named."""
    return f"{index} (blank)" if index == blank else str(index)


session = st.session_state
source, handle = state.page_model(session)
state.keep_settings(session, PREFIX, TAB_KEY, LAYER_WIDGET)
layers = cache.inventory(source.key, handle)
label = session[state.CURRENT]

st.title(f"Learn with {handle.name}")
st.caption(
    "Each technique on the real weights and activations of the loaded model: pick a layer, move the controls, "
    "and watch what the technique does to it."
)
first = next((layer.name for layer in layers if layer.params >= DEMO_MIN_PARAMS), layers[0].name)
layer = state.pick_layer(session, layers, first, LAYER_WIDGET)
name = layer.name
out_channels = layer.weight_shape[layer.out_axis]
st.caption(f"{layer.type}, weight `{layer.weight_name}` {list(layer.weight_shape)}, {layer.params:,} parameters")

quantization, pruning, low_rank, calibration, distillation = st.tabs(TABS, key=TAB_KEY, on_change="rerun")

if quantization.open is not False:
    with quantization:
        st.markdown(
            "**Linear (affine) quantization** maps the range [r_min, r_max] of real values onto 2^b evenly spaced integers. "
            "*Symmetric* centres the grid on zero (r_min = -r_max, zero is exact); *asymmetric* fits the grid to the actual "
            "range. *Per-tensor* uses one grid for the whole weight, *per-channel* one per output channel."
        )
        st.latex(
            r"q = \operatorname{round}\!\left(\frac{r - r_{\min}}{r_{\max} - r_{\min}}\,(Q_{\max} - Q_{\min}) + Q_{\min}\right)"
        )
        bits_column, scheme_column, granularity_column, channel_column = st.columns(4)
        bits = bits_column.slider("Bits", min(teaching.TEACHING_BITS), max(teaching.TEACHING_BITS), 4, key="learn_bits")
        scheme = scheme_column.radio("Scheme", SCHEMES, horizontal=True, key="learn_scheme")
        granularity = granularity_column.radio(
            "Granularity",
            ("tensor", "channel"),
            horizontal=True,
            format_func=lambda value: f"per-{value}",
            key="learn_granularity",
        )
        channel = int(channel_column.number_input("Output channel", 0, out_channels - 1, 0, key="learn_channel"))
        try:
            with st.spinner("Quantizing ..."):
                view = _weight_demo(
                    source.key,
                    handle,
                    name,
                    "quantization_view",
                    bits=bits,
                    scheme=scheme,
                    granularity=granularity,
                    channel=channel,
                )
                curve = _weight_demo(source.key, handle, name, "sqnr_by_bits", scheme=scheme, granularity=granularity)
                schemes = _weight_demo(
                    source.key, handle, name, "scheme_comparison", bits=bits, granularity=granularity
                )
                extremes = _weight_demo(source.key, handle, name, "extreme_quantization")
        except CompressError as exc:
            st.error(str(exc))
        else:
            grid_column, error_column = st.columns(2)
            grid_column.plotly_chart(learn_figures.quantization_grid(view, channel))
            error_column.plotly_chart(learn_figures.quantization_error(view))
            st.markdown(
                "Every extra bit halves the step, so the noise power falls fourfold: the SQNR rises by about **6 dB per bit**."
            )
            st.latex(r"\mathrm{SQNR} = 10 \log_{10} \frac{\sum w^2}{\sum (\hat w - w)^2} \approx 6.02\, b + c")
            st.plotly_chart(learn_figures.sqnr_against_bits(curve, bits))
            st.markdown(
                "**Non-uniform grids** at the same bit width: *pow2* puts its levels at powers of two (fine near zero, coarse "
                "for large weights; multiplications become shifts), *kmeans* learns a codebook that follows the weights. "
                "At the extreme, **binary** keeps sign(w) scaled by mean|w| and **ternary** adds a zero."
            )
            st.plotly_chart(learn_figures.scheme_levels(schemes, extremes, bits))

if pruning.open:
    with pruning:
        st.markdown(
            "**Pruning** multiplies the weight by a keep-mask. *Unstructured* drops the smallest magnitudes anywhere; "
            "*N:M* keeps the N largest of every M consecutive inputs (what sparse tensor cores run fast); *structured* "
            "drops whole output channels (lowest L2 norm), so the layer really shrinks."
        )
        st.latex(r"W' = W \odot M, \qquad M_{ij} \in \{0, 1\}")
        ratio_column, pattern_column = st.columns(2)
        ratio = ratio_column.slider("Ratio pruned", 0.05, 0.95, 0.5, 0.05, key="learn_prune_ratio")
        pattern = pattern_column.selectbox("N:M pattern", NM_PATTERNS, key="learn_nm", help="Its ratio is 1 - N/M.")
        window = None  # the part of a large mask drawn, said once under the three
        for column, kind, title in zip(
            st.columns(3), ("unstructured", pattern, "structured"), ("Unstructured", f"{pattern} (N:M)", "Structured")
        ):
            try:
                mask = _weight_demo(source.key, handle, name, "pruning_mask_2d", kind=kind, ratio=ratio)
            except CompressError as exc:
                column.info(f"{title} does not fit this layer: {exc}")
            else:
                column.plotly_chart(learn_figures.pruning_mask(mask, title))
                window = learn_figures.mask_window(mask)
        if window:
            st.caption(window)
        st.markdown("**Accuracy against sparsity**, one layer pruned at a time:")
        result = session[state.SENSITIVITY].get(label)
        measured = [kind for kind in sensitivity_view.kinds(result) if kind in PRUNE_KINDS] if result else []
        if not measured:
            st.info(
                "No pruning sensitivity for this model yet: run the Sensitivity page with the kind 'prune' (or 'structured'), then come back."
            )
        for kind in measured:
            cells = sensitivity_view.grid(result, kind)
            st.plotly_chart(
                figures.curves(
                    [str(level) for level in cells["levels"]],
                    dict(zip(cells["layers"], cells["metric"])),
                    f"{result['metric_name']} with one layer pruned ({PRUNE_KINDS[kind]}) at each ratio",
                    "ratio pruned",
                    f"{result['metric_name']} (%)",
                )
            )

if low_rank.open:
    with low_rank:
        st.markdown(
            "**Low rank** replaces an m x n weight by two thin factors from its singular value decomposition. Keeping the "
            "r largest singular values gives the best rank-r approximation; the factors hold r(m + n) numbers, which "
            "saves parameters only below the break-even rank."
        )
        st.latex(r"W \approx U_r \Sigma_r V_r^{\top}, \qquad r\,(m + n) < m\,n \iff r < \frac{m\,n}{m + n}")
        try:
            profile = _weight_demo(source.key, handle, name, "low_rank_profile")
        except CompressError as exc:
            st.error(str(exc))
        else:
            full = len(profile["ranks"])
            rank = st.slider(
                "Rank", 1, full, max(1, min(profile["break_even_rank"], full)), key="learn_rank", disabled=full == 1
            )
            values_column, tradeoff_column = st.columns(2)
            values_column.plotly_chart(learn_figures.singular_values(profile, rank))
            tradeoff_column.plotly_chart(learn_figures.rank_tradeoff(profile, rank))

if calibration.open:
    with calibration:
        st.markdown(
            "**Calibration** picks the range [-t, t] that activations are quantized on, from sample inputs. *MinMax* takes the "
            "largest value (nothing clipped, widest steps); *Percentile* ignores the rarest outliers; *Entropy* picks the t "
            "whose quantized histogram Q_t loses the least information about the original P (TensorRT's method)."
        )
        st.latex(
            r"s = \frac{t}{2^{b-1} - 1}, \quad \hat x = s \cdot \operatorname{clip}\!\left(\operatorname{round}(x / s), -(2^{b-1} - 1), 2^{b-1} - 1\right),"
            r" \quad t_{\text{entropy}} = \arg\min_t \mathrm{KL}(P \,\|\, Q_t)"
        )
        bits_column, percentile_column = st.columns(2)
        activation_bits = bits_column.slider("Activation bits", 4, 8, 8, key="learn_calibration_bits")
        percentiles = percentile_column.multiselect(
            "Percentiles", PERCENTILE_OPTIONS, default=list(PERCENTILES), key="learn_percentiles"
        )
        try:
            with st.spinner(f"Collecting the inputs of {name} on {len(handle.data)} samples ..."):
                ranges = _calibration(source.key, handle, name, activation_bits, tuple(sorted(percentiles)))
        except CompressError as exc:
            st.info(f"Calibration needs the layer's input activations, which this model cannot give: {exc}")
        else:
            st.plotly_chart(learn_figures.calibration_ranges(ranges, name))
            st.dataframe(
                [
                    {key: method[key] for key in ("method", "threshold", "clipped", "mse", "sqnr_db")}
                    for method in ranges["methods"]
                ],
                hide_index=True,
                column_config={
                    "clipped": st.column_config.NumberColumn("clipped share", format="percent"),
                    "sqnr_db": st.column_config.NumberColumn("SQNR (dB)", format="%.1f"),
                    "mse": st.column_config.NumberColumn("MSE", format="%.3g"),
                },
            )

if distillation.open:
    with distillation:
        st.markdown(
            "**Distillation** trains the compressed model (the student) to match the original (the teacher). Dividing the "
            "logits by a temperature T > 1 softens both distributions, so the student also learns how the teacher ranks the "
            "wrong classes. The Recover panel of the Tune page minimises this loss."
        )
        st.latex(
            r"p_i^{(T)} = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}, \qquad \mathcal{L} = \alpha\, T^2\,"
            r" \mathrm{KL}\!\left(p^{(T)}_{\text{teacher}} \,\|\, p^{(T)}_{\text{student}}\right) + (1 - \alpha)\, \mathrm{CE}(y, p_{\text{student}})"
        )
        grid: tuple[int, ...] | None = None
        if handle.task == "ids":
            st.info(
                f"'{handle.name}' is an ids model: its outputs are class ids (integers), not scores over the classes, "
                "so it has no class probabilities to soften and this demo does not apply."
            )
        elif handle.task not in teaching.DISTILLATION_TASKS:
            st.info(
                f"'{handle.name}' is an {handle.task} model: it has no class probabilities to soften, "
                "so the Recover panel distils it on the cosine distance of its outputs instead."
            )
        else:
            try:
                grid = _positions(source.key, handle)
            except CompressError as exc:
                st.info(f"The distillation demo does not fit this model's output: {exc}")
        if grid is not None:
            names = teaching.POSITION_NAMES[handle.task]
            if handle.task in POSITION_HINTS:
                st.markdown(POSITION_HINTS[handle.task])
            temperature_column, sample_column, *position_columns = st.columns(2 + len(grid))
            temperature = temperature_column.slider("Temperature T", 1.0, 20.0, 4.0, 0.5, key="learn_temperature")
            sample = int(
                sample_column.number_input("Evaluation sample", 0, len(handle.data) - 1, 0, key="learn_sample")
            )
            position = tuple(
                int(column.number_input(name.capitalize(), 0, size - 1, 0, key=f"learn_{name}"))
                for column, name, size in zip(position_columns, names, grid)
            )
            try:
                compressed = recover_panel.compressed_model(session)
                if compressed is None:
                    student, described = recover_panel.applied_model(session, DEMO_STUDENT.to_dict()), None
                else:
                    student, described = compressed
                view = teaching.distillation_view(handle, student, sample, temperature, position)
            except CompressError as exc:
                st.error(str(exc))
            else:
                if described is None:
                    st.caption(
                        "No plan applied yet: the student is a copy of the model with every layer at 2 bits, made for this demo. "
                        "Apply a plan on the Tune page to see your own."
                    )
                else:
                    st.caption(f"The student is the current compressed model ({described}).")
                classes = view["class_count"]
                teacher_column, student_column, most_column, loss_column = st.columns(4)
                teacher_column.metric("Teacher entropy", f"{view['teacher_entropy']:.2f} nats")
                student_column.metric("Student entropy", f"{view['student_entropy']:.2f} nats")
                most_column.metric(
                    "Most possible, ln C",
                    f"{view['max_entropy']:.2f} nats",
                    help=f"The entropy of a uniform distribution over the C = {classes:,} classes of one position.",
                )
                loss_column.metric(
                    "T² KL(teacher ‖ student)",
                    f"{view['loss_term']:.3f}",
                    help="T² times the KL divergence from the teacher's to the student's distribution of this position, over all C classes.",
                )
                blank = handle.quality.ctc_blank
                st.plotly_chart(
                    learn_figures.softened_outputs(view, [_class_name(index, blank) for index in view["classes"]])
                )
                if view["top"] < classes:
                    st.caption(
                        f"The other {classes - len(view['classes']):,} classes hold {view['teacher_rest']:.1%} of the "
                        f"teacher's probability and {view['student_rest']:.1%} of the student's (entropies cover all {classes:,})."
                    )
                if "steps" in view:
                    steps = " ".join("·" if index == blank else str(index) for index in view["steps"])
                    named = "" if blank is None else f" (· is the blank, {blank})"
                    st.caption(f"The teacher's most probable class at each step of sample {sample}{named}: {steps}")
