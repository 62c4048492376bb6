"""Which int8 path to take on this CPU, by a named rule, and what the user overrode.

ONNX Runtime's integer kernels differ by CPU (``ort.cpu``), so the choices an int8 export makes are
chosen per CPU: the activation type (U8S8: uint8 activations, int8 weights; S8S8), the weight type
(int8, or uint8 for U8U8), ``reduce_range`` (7-bit weights), per-channel weights, and which layers
stay float. ``choose_path`` is a pure function of a ``CpuInfo`` and the mode; ``resolve_path`` applies
the user's overrides (``Int8Options`` fields left None are the rule's). The rules, first match wins:

- ``vnni`` (AVX-512 VNNI, AVX-VNNI or AMX): U8S8, per-channel weights, no reduce_range. One
  instruction sums four u8 x s8 products in 32 bits: no saturation, and U8S8 is ORT's fastest path.
- ``avx2-no-vnni`` (AVX2 or AVX-512 without VNNI): U8S8 first, per-channel weights, no reduce_range.
  ORT's U8S8 kernels add pairs of u8 x s8 products in 16 bits (``vpmaddubsw``), which can saturate:
  the export measures that on the evaluation data (``ort.saturation``) and stores the weights of each
  layer whose output moves by more than ``SATURATION_TOLERANCE`` in uint8 (U8U8 for that layer:
  ORT's AVX2 U8U8 kernels widen to 16 bits before multiplying, so they are exact, at some speed); the
  other layers keep U8S8. On MiniLM under emulation of such a CPU, every layer in U8S8 gave a minimum
  cosine of 0.9927 and every layer in U8U8 0.9922 (at e538c36): saturation under 1% costs nothing. Since
  the smoothing factors are powers of two, both CPU kinds smooth the float model alike, and the chosen
  path gives 0.9930 on both. ``reduce_range``
  would avoid the saturation too, but it halves the weight grid; measured on MiniLM on such a CPU it
  cost far more (min cosine 0.785 against 0.988), so it is only an override.
- ``arm-i8mm`` (Arm with i8mm): S8S8 static (ORT's SMMLA kernels take signed activations), U8S8
  dynamic (ORT's dynamic quantizer makes uint8 activations); exact.
- ``arm`` (other Arm): U8S8; the dot-product kernels (``asimddp``) and the widening fallback are exact.
- ``x86-sse`` (x86 without AVX2) and ``unknown`` (features not read): U8S8, saturation measured as
  for ``avx2-no-vnni`` (SSE's U8S8 kernels use the same 16-bit pair sums).

On x86 with AVX2 (``vnni`` and ``avx2-no-vnni``), a static export also pads the input channels of a
``Conv`` to a multiple of 4 with zeros where they are not (``pad_conv_channels``, ``ort.conv_channels``):
ORT's symmetric int8 conv kernels need that, and a first layer reading 1 or 3 channels otherwise takes
a slower path. The result is unchanged; U8U8 (uint8 weights) has no such kernels and is not padded.

Which layers stay float is measured, not ruled: ``suggest --objective latency`` keeps float a layer
only where the exported file runs faster so. A ``Conv`` reading a single input channel (``conv1`` of
``digits_cnn``, ``stem.0`` of ``digits_resnet``) is slower in int8 than in fp32 even padded (the stem:
0.36 ms against 0.24 ms in ORT's profile, batch 32, 2 threads, AVX-512 VNNI), but kept float it costs
more than it saves: its output must then be quantized and moved to the integer layers' layout
(``benchmarks/results/latency.md`` times both files). ``float_narrow_convs`` keeps such layers float
on request; no rule turns it on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from compress_core.ort.cpu import CpuInfo

# Relative L2 change of a layer's output beyond which that layer is stored U8U8. Measured by ort.saturation
# on the evaluation data: digits_resnet's head moves by 1.03% and its convolutions by 0.2% at most (the
# one-channel stem by 36% unpadded, 0% padded); MiniLM's recipe by 1.20% at most (layer 4's feed-forward
# input). Under emulation of an AVX2-only CPU (benchmarks/results/avx2_emulated.md) MiniLM gave 0.9927
# min cosine with every layer U8S8 and 0.9922 with every layer U8U8 (e538c36), and 0.9930 on the chosen path
# once the smoothing factors became powers of two (b44a4b6), as natively with VNNI.
SATURATION_TOLERANCE = 0.01
RULES = {
    "vnni": "VNNI: int8 dot products summed in 32 bits, no saturation; U8S8 is ORT's fastest path",
    "avx2-no-vnni": (
        "x86 without VNNI: U8S8 kernels add pairs of u8 x s8 products in 16 bits and can saturate; "
        "U8S8, and U8U8 (exact) for the layers the evaluation data shows saturating"
    ),
    "arm-i8mm": "Arm with i8mm: signed int8 activations feed the SMMLA kernels; exact",
    "arm": "Arm: the dot-product (or widening) int8 kernels are exact; U8S8",
    "x86-sse": "x86 without AVX2: SSE U8S8 kernels add pairs in 16 bits; saturation measured as without VNNI",
    "unknown": "CPU features unknown: U8S8, saturation measured on the evaluation data",
}
SATURATING_RULES = ("avx2-no-vnni", "x86-sse", "unknown")
SYMMETRIC_CONV_RULES = ("vnni", "avx2-no-vnni")  # x86 with AVX2: ORT has symmetric int8 conv kernels there


@dataclass(frozen=True)
class Int8Path:
    """The int8 choices of one export and why.

    ``activations`` and ``weights`` are ``uint8`` or ``int8`` (U8S8 = uint8 activations, int8
    weights); ``per_channel`` None keeps each layer's granularity from the plan (per channel by
    default); ``measure_saturation`` says whether U8S8 must be checked on the evaluation data on this
    CPU; ``pad_conv_channels`` whether a static export pads Conv inputs to a multiple of 4 channels
    (``ort.conv_channels``); ``exact_layers`` the layers stored with uint8 weights (U8U8, exact) in a
    path of int8 weights, because U8S8 saturates there. ``overridden`` names the fields the user set;
    ``reasons`` are sentences for the report.
    """

    rule: str
    activations: str
    weights: str = "int8"
    reduce_range: bool = False
    per_channel: bool | None = None
    float_narrow_convs: bool = False
    pad_conv_channels: bool = False
    measure_saturation: bool = False
    exact_layers: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kernel(self) -> str:
        """``U8S8``, ``S8S8``, ``U8U8`` or ``S8U8``: activation then weight type."""
        letter = {"uint8": "U", "int8": "S"}
        return f"{letter[self.activations]}8{letter[self.weights]}8"

    def describe(self) -> str:
        """One line: kernel, reduce_range, weights' granularity, the rule and the overrides."""
        granularity = {None: "weights as the plan says", True: "per-channel weights", False: "per-tensor weights"}
        parts = [self.kernel, "reduce_range" if self.reduce_range else "full-range weights"]
        parts.append(granularity[self.per_channel])
        if self.pad_conv_channels:
            parts.append("Conv inputs padded to multiples of 4 channels")
        text = f"{', '.join(parts)} (rule {self.rule}: {RULES[self.rule]})"
        if self.exact_layers:
            shown = ", ".join(self.exact_layers[:3]) + (
                f" and {len(self.exact_layers) - 3} more" if len(self.exact_layers) > 3 else ""
            )
            text += f"; U8U8 for {shown} (U8S8 saturates there)"
        if self.overridden:
            text += f"; set by the user: {', '.join(self.overridden)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``kernel`` and ``rule_text``, as plain JSON data."""
        data = asdict(self)
        data.update(kernel=self.kernel, rule_text=RULES[self.rule], overridden=list(self.overridden))
        data["reasons"] = list(self.reasons)
        data["exact_layers"] = list(self.exact_layers)
        return data


def rule_for(cpu: CpuInfo) -> str:
    """The name of the rule that decides for ``cpu`` (see the module's docstring)."""
    if not cpu.known:
        return "unknown"
    if cpu.is_arm:
        return "arm-i8mm" if cpu.i8mm else "arm"
    if cpu.vnni or cpu.amx:
        return "vnni"
    if cpu.avx2 or cpu.avx512f:
        return "avx2-no-vnni"
    return "x86-sse"


def choose_path(cpu: CpuInfo, dynamic: bool) -> Int8Path:
    """The int8 path the rule for ``cpu`` picks, for dynamic or static quantization (pure)."""
    rule = rule_for(cpu)
    signed = rule == "arm-i8mm" and not dynamic  # ORT's dynamic quantizer always makes uint8 activations
    return Int8Path(
        rule=rule,
        activations="int8" if signed else "uint8",
        pad_conv_channels=rule in SYMMETRIC_CONV_RULES and not dynamic,
        measure_saturation=rule in SATURATING_RULES,
    )


def resolve_path(
    cpu: CpuInfo,
    dynamic: bool,
    activations: str | None = None,
    weights: str | None = None,
    reduce_range: bool | None = None,
    per_channel: bool | None = None,
    float_narrow_convs: bool | None = None,
    pad_conv_channels: bool | None = None,
) -> Int8Path:
    """``choose_path``, with each argument that is not None overriding the rule's choice.

    Saturation is measured only where the chosen path can saturate on ``cpu``: U8S8 (or S8S8, which
    x86 runs on the same kernels) without reduce_range, under a saturating rule, with the activation
    and weight types left to the rule (a user who set either has chosen).
    """
    path = choose_path(cpu, dynamic)
    given = {
        "activations": activations,
        "weights": weights,
        "reduce_range": reduce_range,
        "per_channel": per_channel,
        "float_narrow_convs": float_narrow_convs,
        "pad_conv_channels": pad_conv_channels,
    }
    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if dynamic and overrides.get("activations") == "int8":
        overrides.pop("activations")  # ORT's quantize_dynamic has no int8 activations; the option is static-only
    path = replace(path, **overrides, overridden=tuple(overrides))
    chosen = "weights" in overrides or "activations" in overrides
    saturating = path.weights == "int8" and not path.reduce_range and not chosen
    return replace(path, measure_saturation=path.measure_saturation and saturating)


def with_exact_layers(path: Int8Path, layers: list[str]) -> Int8Path:
    """``path`` once its saturation is measured: ``layers`` (those U8S8 saturates) stored with uint8
    weights (U8U8, exact on x86), every other layer as ``path`` says."""
    return replace(path, exact_layers=tuple(layers), measure_saturation=False)


def unsigned_overrides(overrides: dict[str, list[dict[str, Any]]], quint8: Any) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` of int8 weights restated for uint8 storage (U8U8): the same levels,
    zero points moved up by 128 (``quint8`` is ORT's ``QuantType.QUInt8``); int4 and int16 entries
    are kept."""
    moved = {}
    for tensor, entries in overrides.items():
        if any(getattr(entry["quant_type"], "name", "") != "QInt8" for entry in entries):
            moved[tensor] = entries
            continue
        moved[tensor] = [
            {
                **entry,
                "quant_type": quint8,
                **({"zero_point": entry["zero_point"] + 128} if "zero_point" in entry else {}),
            }
            for entry in entries
        ]
    return moved


def narrow_convs(model: Any, nodes: dict[str, str]) -> list[str]:
    """The layers of ``nodes`` (layer -> node name) whose ONNX node is a ``Conv`` reading a single
    input channel (weight ``[out, 1, kh, kw]``, one group): kept float by a static path."""
    from onnx import helper

    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    found = []
    by_name = {node.name: node for node in model.graph.node}
    for layer, name in nodes.items():
        node = by_name.get(name)
        if node is None or node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1], [])
        if group == 1 and len(shape) >= 3 and shape[1] == 1:
            found.append(layer)
    return found
