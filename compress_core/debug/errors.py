"""Each layer's error in the real int8 model, and how much of it is its own.

Both ONNX files run batch by batch on the evaluation data, with every paired tensor exposed as an
output (``graph.exposed``). Per layer, summed over all batches:

- **output**: the int8 model's activation after the layer (after its QDQ pair) against the fp32
  model's, as SQNR (dB) and cosine: the error the layer hands on, inherited and its own together;
- **own**: the layer cut out of the int8 model (``graph.layer_model``), fed the fp32 model's inputs,
  with its input QDQ pairs and its integer weights, against the same cut with neither: the error
  this layer adds alone;
- **own at the output**: the fp32 model with only this layer as the int8 model computes it
  (``graph.injected_model``), its ranked output against fp32's: the own error as the rest of the
  model carries it to the output. An error early in the model may be small where it is made and
  large where it arrives (a first convolution's, amplified by every layer after it);
- **restore gain**: the int8 model with only this layer's weights back in fp32
  (``graph.weights_restored``): how many dB its ranked output's SQNR against fp32 gains, and how
  much its quality figure (``score``: accuracy, agreement, ...) gains. Errors interact: a layer
  whose error is small alone may be the one the rest of the int8 model cannot absorb (seen on an
  OCR model: the first convolution, 37 dB alone, was the one to keep float). ``rank`` orders the
  layers by this gain (quality first, output SQNR to break ties);
- **weight**: the same cut with integer weights only (inputs float): the weight-only error;
- **activation**: the same cut with its input QDQ pairs only (fp32 weights): the error of
  quantizing its input activations.

SQNR is ``ops.sqnr.sqnr_from_energies`` over all elements of all batches; cosine is that of the
flattened activations of all samples. A model with a static batch size runs in batches of it, the
last one filled up by repeating its last sample (as ``in_batches`` does): those copies count in
the SQNR sums (the quality figures drop them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from compress_core.debug.graph import LayerPair, exposed, injected_model, layer_model, pair_layers, weights_restored
from compress_core.errors import CompressError, first_line
from compress_core.models.inputs import Inputs, in_batches
from compress_core.models.sessions import make_session
from compress_core.ops.sqnr import sqnr_from_energies
from compress_core.ort.layer_map import LayerTarget
from compress_core.ort.prep import default_opset, prepare_for_quantization

DEBUG_BATCH = 32
Score = Callable[[np.ndarray, np.ndarray], float]
VARIANTS = {"reference": (False, False), "own": (True, True), "weight": (False, True), "activation": (True, False)}


@dataclass
class Agreement:
    """Running sums that give SQNR and cosine between a reference and an approximation."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    approx: float = 0.0

    def add(self, reference: np.ndarray, approximation: np.ndarray) -> None:
        if reference.shape != approximation.shape:
            raise CompressError(
                f"paired tensors differ in shape: {tuple(reference.shape)} (fp32) vs {tuple(approximation.shape)}"
            )
        ref = reference.astype(np.float64)
        app = approximation.astype(np.float64)
        difference = ref - app
        self.signal += float((ref * ref).sum())
        self.noise += float((difference * difference).sum())
        self.dot += float((ref * app).sum())
        self.approx += float((app * app).sum())

    @property
    def sqnr_db(self) -> float:
        return sqnr_from_energies(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        norm = math.sqrt(self.signal * self.approx)
        return self.dot / norm if norm > 0 else (1.0 if self.signal == self.approx else 0.0)


@dataclass
class LayerError:
    """One layer's figures (dB and cosine; None where it could not be measured, see ``notes``)."""

    layer: str
    node: str
    op_type: str
    quantized: bool
    output_sqnr_db: float | None = None
    output_cosine: float | None = None
    own_sqnr_db: float | None = None
    own_output_sqnr_db: float | None = None
    restore_gain_db: float | None = None
    restore_quality_gain: float | None = None
    weight_sqnr_db: float | None = None
    activation_sqnr_db: float | None = None
    notes: list[str] = field(default_factory=list)


def layer_errors(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    targets: dict[str, LayerTarget],
    inputs: Inputs,
    fixed_batch: int | None = None,
    batch: int = DEBUG_BATCH,
    check: Callable[[], None] | None = None,
    output: int = 0,
    score: Score | None = None,
    output_axis: int = 0,
) -> list[LayerError]:
    """``LayerError`` of every layer of ``targets`` that ``int8`` still has, in graph order.

    ``fp32`` is the original model's export, ``int8`` the quantized compressed model (same node
    names), ``targets`` the compressed model's layer map, ``output`` the index of the ranked output
    (its batch axis ``output_axis``), ``score(reference, outputs)`` the task's quality figure (higher
    is better; both batch axis first) that ``restore_quality_gain`` is measured in (None: not measured).
    ``check`` is called before each batch (to stop a long run). Raises ``CompressError`` when no layer
    of the map is in the int8 model.
    """
    pairs = pair_layers(fp32, int8, targets)
    if not pairs:
        raise CompressError("no layer of the plan is a node of the int8 model: nothing to compare")
    ranked = fp32.graph.output[output].name
    fp32_names = [ranked, *(name for pair in pairs for name in (*pair.float_inputs, pair.fp32_output) if name)]
    int8_ranked = int8.graph.output[output].name
    int8_names = [int8_ranked, *(pair.int8_output for pair in pairs if pair.fp32_output)]
    fp32_run = make_session(exposed(fp32, fp32_names), label="the fp32 model")
    int8_run = make_session(exposed(int8, int8_names), label="the int8 model")
    weights = {init.name: init for init in fp32.graph.initializer}
    alone = {
        pair.layer: {
            variant: make_session(layer_model(int8, pair, weights, *flags), label=f"layer {pair.layer} alone")
            for variant, flags in VARIANTS.items()
        }
        for pair in pairs
        if pair.alone
    }
    base = fp32  # where one layer is put in int8: at the int8 model's opset (its QDQ nodes need it)
    if default_opset(fp32) < default_opset(int8):
        base = prepare_for_quantization(fp32, default_opset(int8))[0]
    injected = {
        pair.layer: make_session(model, label=f"the fp32 model with layer {pair.layer} in int8")
        for pair in pairs
        if (model := injected_model(base, int8, pair)) is not None
    }
    restored = {
        pair.layer: make_session(model, label=f"the int8 model with layer {pair.layer}'s weights in fp32")
        for pair in pairs
        if (model := weights_restored(int8, pair, weights)) is not None
    }
    outputs = {pair.layer: Agreement() for pair in pairs}
    carried = {layer: Agreement() for layer in injected}
    whole, regained = Agreement(), {layer: Agreement() for layer in restored}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in ("fp32", "int8", *restored)} if score else {}
    own = {pair.layer: {variant: Agreement() for variant in VARIANTS if variant != "reference"} for pair in pairs}
    for part in in_batches(inputs, batch, fixed_batch):
        if check is not None:
            check()
        feed = part.feed()
        floats = _run(fp32_run, feed, fp32_names, "the fp32 model")
        ints = _run(int8_run, feed, int8_names, "the int8 model")
        whole.add(floats[ranked], ints[int8_ranked])
        if score:
            kept["fp32"].append(floats[ranked])
            kept["int8"].append(ints[int8_ranked])
        for layer, session in injected.items():
            carried[layer].add(floats[ranked], _run(session, feed, [ranked], f"layer {layer} in int8")[ranked])
        for layer, session in restored.items():
            result = _run(session, feed, [int8_ranked], f"layer {layer} restored")[int8_ranked]
            regained[layer].add(floats[ranked], result)
            if score:
                kept[layer].append(result)
        for pair in pairs:
            if pair.fp32_output:
                outputs[pair.layer].add(floats[pair.fp32_output], ints[pair.int8_output])
            sessions = alone.get(pair.layer)
            if sessions is None:
                continue
            given = [floats[name] for name in pair.float_inputs]
            results = {variant: _run_alone(session, pair, given, variant) for variant, session in sessions.items()}
            for variant, agreement in own[pair.layer].items():
                agreement.add(results["reference"], results[variant])
    rows = [_row(pair, outputs[pair.layer], own[pair.layer] if pair.layer in alone else None) for pair in pairs]
    for row in rows:
        if row.layer in carried:
            row.own_output_sqnr_db = carried[row.layer].sqnr_db
        if row.layer in regained:
            row.restore_gain_db = regained[row.layer].sqnr_db - whole.sqnr_db
    if score:
        joined = {name: _joined(parts, output_axis, len(inputs)) for name, parts in kept.items()}
        before = score(joined["fp32"], joined["int8"])
        for row in rows:
            if row.layer in restored:
                row.restore_quality_gain = score(joined["fp32"], joined[row.layer]) - before
    return rows


def _joined(parts: list[np.ndarray], axis: int, samples: int) -> np.ndarray:
    """Batches of one output joined on their batch axis, that axis first, padding copies dropped."""
    return np.moveaxis(np.concatenate(parts, axis=axis), axis, 0)[:samples]


def _run(session: object, feed: dict[str, np.ndarray], names: list[str], label: str) -> dict[str, np.ndarray]:
    try:
        values = session.run(list(dict.fromkeys(names)), feed)  # type: ignore[attr-defined]
    except Exception as exc:  # ORT's errors carry no common type
        raise CompressError(f"{label}: ONNX Runtime could not run it ({first_line(exc, 200)})") from exc
    return dict(zip(dict.fromkeys(names), values))


def _run_alone(session: object, pair: LayerPair, given: list[np.ndarray], variant: str) -> np.ndarray:
    names = pair.float_inputs if VARIANTS[variant][0] else pair.int8_inputs
    feed = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in zip(names, given)}
    return _run(session, feed, [pair.raw_output], f"layer {pair.layer} alone")[pair.raw_output]


def _row(pair: LayerPair, output: Agreement, own: dict[str, Agreement] | None) -> LayerError:
    row = LayerError(pair.layer, pair.node, pair.op_type, pair.quantized)
    if pair.fp32_output:
        row.output_sqnr_db, row.output_cosine = output.sqnr_db, output.cosine
    else:
        row.notes.append(f"the fp32 model has no tensor '{pair.raw_output}' to compare its output with")
    if own is None:
        row.notes.append("its inputs are not tensors of the fp32 model: it cannot be run alone")
    else:
        row.own_sqnr_db = own["own"].sqnr_db
        row.weight_sqnr_db = own["weight"].sqnr_db
        row.activation_sqnr_db = own["activation"].sqnr_db
    return row


def rank(rows: list[LayerError]) -> list[LayerError]:
    """Rows by restore gain, largest first: in the task's quality where measured, ties (a few samples
    change their answer, or none) by the gain in output SQNR; layers without one (float ones) last,
    by output error."""

    def key(row: LayerError) -> tuple[int, float, float]:
        gain = row.restore_gain_db
        quality = row.restore_quality_gain if row.restore_quality_gain is not None else 0.0
        output = row.output_sqnr_db if row.output_sqnr_db is not None else math.inf
        if gain is None or math.isnan(gain):
            return (1, output, 0.0)
        return (0, -round(quality, 9), -gain)

    return sorted(rows, key=key)
