"""What to do to one layer: bit width, scheme and granularity, input smoothing, pruning, rank; checked when made.

``LayerConfig`` and ``PruneConfig`` are the entries of a plan (``compress_core.plan``). The bit
widths, schemes and granularities are those the quantizer takes (``compress_core.ops.quantize``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from compress_core.errors import CompressError
from compress_core.ops.quantize import ALLOWED_BITS, GRANULARITIES, KMEANS_MAX_BITS, SCHEMES, bits_for
from compress_core.plan.quoting import shown, written

PRUNE_KINDS = ("unstructured", "structured")
NM_PATTERN = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")  # used with fullmatch
NM_RATIO_TOLERANCE = 5e-4  # a ratio written with 3 or 4 decimals (0.667 for 1:3) agrees with 1 - N/M
LAYER_KEYS = {"bits", "scheme", "granularity", "smooth", "prune", "rank"}
PRUNE_KEYS = {"ratio", "kind"}
BITS_ALLOWED = "null (float), 2..8 or 16"
SECONDS_PER_MINUTE = 60  # YAML 1.1 base-60 integers: 2:4 reads as 2 * 60 + 4


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, init=False)
class PruneConfig:
    """``ratio`` in [0, 1) of the weights (or output channels) to remove; ``kind`` is
    ``unstructured`` (smallest magnitudes), ``structured`` (whole output channels, physically
    removed) or an N:M pattern such as ``"2:4"`` (keep N of every M consecutive weights). An N:M
    kind implies the ratio 1 - N/M: leave ``ratio`` out (None), or give that value; another ratio is
    an error. Without a ratio, unstructured and structured pruning remove nothing.

    ``ratio`` is optional when made but always a float once made (0.0 or 1 - N/M when left out)."""

    ratio: float
    kind: str

    def __init__(self, ratio: float | None = None, kind: str = "unstructured") -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "ratio", _checked_ratio(kind, ratio))

    @classmethod
    def with_kind(cls, kind: str, ratio: float) -> PruneConfig:
        """A config of ``kind`` for controls that offer one ratio for every kind: ``ratio`` applies
        to unstructured and structured pruning and is ignored for an N:M kind, which implies its own."""
        nm = isinstance(kind, str) and NM_PATTERN.fullmatch(kind)
        return cls(kind=kind) if nm else cls(ratio=ratio, kind=kind)

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        nm = NM_PATTERN.fullmatch(self.kind)
        return (int(nm.group(1)), int(nm.group(2))) if nm else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind} if self.n_m else {"ratio": self.ratio, "kind": self.kind}


def _checked_ratio(kind: Any, ratio: Any) -> float:
    """The ratio a ``PruneConfig`` of ``kind`` stores, given ``ratio`` (None: not given)."""
    nm = NM_PATTERN.fullmatch(kind) if isinstance(kind, str) else None
    if nm:
        return _nm_ratio(kind, int(nm.group(1)), int(nm.group(2)), ratio)
    if kind not in PRUNE_KINDS:
        raise CompressError(
            f"prune kind {shown(kind)} is not allowed; use one of {', '.join(PRUNE_KINDS)} or N:M like '2:4'{_base60_hint(kind)}"
        )
    checked = 0.0 if ratio is None else ratio
    if not _is_number(checked) or not 0 <= checked < 1:
        raise CompressError(f"prune ratio {shown(checked)} is not allowed; use a number in [0, 1)")
    return checked


def _nm_ratio(kind: str, n: int, m: int, given: Any) -> float:
    """The ratio 1 - N/M of an N:M kind, checked against a ``given`` ratio (None: not given)."""
    if not 0 < n < m:
        raise CompressError(f"prune kind '{kind}': N:M needs 0 < N < M")
    implied = 1 - n / m
    if given is not None and not (_is_number(given) and math.isclose(given, implied, abs_tol=NM_RATIO_TOLERANCE)):
        raise CompressError(
            f"prune ratio {shown(given)} conflicts with kind '{kind}', which prunes {implied:.4g} (1 - {n}/{m}); "
            "leave the ratio out or make it match"
        )
    return implied


def _base60_hint(kind: Any) -> str:
    """For an int kind, how YAML read it: an unquoted 2:4 is the base-60 number 124."""
    if isinstance(kind, int) and not isinstance(kind, bool) and kind >= SECONDS_PER_MINUTE:
        n, m = divmod(kind, SECONDS_PER_MINUTE)
        return f" (YAML reads an unquoted {n}:{m} as the number {kind}: write kind: '{n}:{m}')"
    return ""


@dataclass(frozen=True)
class LayerConfig:
    """What to do to one layer. ``bits=None`` keeps it float; ``rank`` is an int or a fraction of
    full rank (a float: ``1.0`` is full rank); ``granularity`` is per output ``channel`` or per ``tensor``.

    ``smooth`` (a float in (0, 1], with ``bits``) is the migration strength of the int8 export's input
    smoothing (``compress_core.ort.smooth``): the layer's input channels are divided by per-channel
    factors and its weight's rows multiplied by them, which leaves the float model's output unchanged
    and flattens the activation outliers that per-tensor activation quantization rounds badly. It acts
    only on the integer ONNX file; the torch model and its fake-quantized weights do not change."""

    bits: int | None = None
    scheme: str = "symmetric"
    granularity: str = "channel"
    smooth: float | None = None
    prune: PruneConfig | None = None
    rank: int | float | None = None

    def __post_init__(self) -> None:
        checked_bits(self.bits)
        if self.bits is not None and self.bits not in ALLOWED_BITS:
            raise CompressError(f"bits {self.bits} is not allowed; use {BITS_ALLOWED}")
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            raise CompressError(f"scheme {shown(self.scheme)} is not allowed; use one of {', '.join(SCHEMES)}")
        if not isinstance(self.granularity, str) or self.granularity not in GRANULARITIES:
            raise CompressError(f"granularity {shown(self.granularity)} is not allowed; use channel or tensor")
        if self.bits is not None and self.bits not in bits_for(self.scheme):
            raise CompressError(f"bits {self.bits} is not allowed with scheme {self.scheme}; use 2..{KMEANS_MAX_BITS}")
        if self.smooth is not None:
            _check_smooth(self.smooth, self.bits)
        if self.prune is not None and not isinstance(self.prune, PruneConfig):
            raise CompressError(f"prune {shown(self.prune)} is not allowed; use a PruneConfig or None")
        if self.rank is not None:
            _check_rank(self.rank)

    @property
    def is_identity(self) -> bool:
        """True when the config changes nothing."""
        return self.bits is None and self.rank is None and (self.prune is None or self.prune.ratio == 0)

    @property
    def keeps_shape(self) -> bool:
        """True when the layer keeps its weight's shape and its MACs (no low rank, no structured pruning)."""
        return self.rank is None and (self.prune is None or self.prune.kind != "structured" or self.prune.ratio == 0)

    def to_dict(self) -> dict[str, Any]:
        """Only the keys that differ from the defaults, so recipes stay short."""
        data: dict[str, Any] = {}
        if self.bits is not None:
            data["bits"] = self.bits
            if self.scheme != "symmetric":
                data["scheme"] = self.scheme
            if self.granularity != "channel":
                data["granularity"] = self.granularity
            if self.smooth is not None:
                data["smooth"] = self.smooth
        if self.prune is not None:
            data["prune"] = self.prune.to_dict()
        if self.rank is not None:
            data["rank"] = self.rank
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> LayerConfig:
        """Build from recipe data; ``where`` names the entry in error messages."""
        if not isinstance(data, dict):
            raise CompressError(f"{where}: expected a mapping like {{bits: 8}} or null, got {shown(data)}")
        check_keys(data, LAYER_KEYS, where)
        try:
            return cls(
                bits=data.get("bits"),
                scheme=data.get("scheme", "symmetric"),
                granularity=data.get("granularity", "channel"),
                smooth=data.get("smooth"),
                prune=_prune_from_dict(data.get("prune")),
                rank=data.get("rank"),
            )
        except CompressError as exc:
            raise CompressError(f"{where}: {exc}") from exc


def checked_bits(bits: object) -> int | None:
    """``bits`` when it is None or an integer (not a bool); else the ``CompressError`` of ``LayerConfig``."""
    if bits is None or (isinstance(bits, int) and not isinstance(bits, bool)):
        return bits
    raise CompressError(f"bits {shown(bits)} is not allowed; use an integer: {BITS_ALLOWED}")


def _check_smooth(smooth: Any, bits: int | None) -> None:
    """A migration strength in (0, 1], on a quantized layer."""
    if not _is_number(smooth) or not 0 < smooth <= 1:
        raise CompressError(f"smooth {shown(smooth)} is not allowed; use a migration strength in (0, 1], such as 0.8")
    if bits is None:
        raise CompressError(
            "smooth needs bits: it rescales the input of a quantized layer (a float layer has nothing to smooth)"
        )


def _check_rank(rank: Any) -> None:
    """An int >= 1 (a rank) or a float in (0, 1] (a fraction of full rank)."""
    if not _is_number(rank):
        raise CompressError(f"rank {shown(rank)} is not allowed; use an integer >= 1 or a fraction in (0, 1]")
    if isinstance(rank, float) and not 0 < rank <= 1:
        hint = f" (a rank is an integer: write {int(rank)}, not {rank})" if rank > 1 and rank.is_integer() else ""
        raise CompressError(f"rank {rank!r} is not allowed; a fraction of full rank must be in (0, 1]{hint}")
    if isinstance(rank, int) and rank < 1:
        raise CompressError(f"rank {rank!r} is not allowed; an integer rank must be >= 1")


def _prune_from_dict(prune: Any) -> PruneConfig | None:
    if prune is None:
        return None
    if not isinstance(prune, dict):
        raise CompressError(f"prune must be a mapping with keys ratio and kind, got {shown(prune)}")
    check_keys(prune, PRUNE_KEYS, "prune")
    return PruneConfig(ratio=prune.get("ratio"), kind=prune.get("kind", "unstructured"))


def check_keys(data: dict[Any, Any], allowed: set[str], where: str) -> None:
    """Refuse the keys of ``data`` not in ``allowed``, naming them, in a one-line ``CompressError``."""
    unknown = sorted(written(key) for key in set(data) - allowed)
    if unknown:
        raise CompressError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
