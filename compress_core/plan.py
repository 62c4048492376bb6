"""The per-layer plan: bit width, pruning and rank per layer, with a default and regex entries.

Precedence, for each compressible layer: an entry whose key is the layer's exact name; otherwise the
first ``re:<regex>`` entry (in the order written) whose regex matches the whole name; otherwise
``default``. Regexes use RE2 syntax and match in linear time (``compress_core.patterns``). An entry
of ``None`` (``null`` in a recipe) leaves the layer float and unpruned, even when a default exists.
Every value is checked when the plan is made, and again against the model (``Plan.resolve``): an
exact name the model lacks, or a regex that matches nothing, is an error.

The recipe file (YAML or JSON)::

    version: 1
    default: {bits: 8}
    layers:
      conv1: {bits: 4, scheme: asymmetric}
      "re:.*fc.*": {prune: {ratio: 0.5, kind: structured}}
      fc2: {rank: 0.5}
      fc3: {prune: {kind: "2:4"}}
      head: null

Quote N:M kinds: YAML 1.1 reads an unquoted ``2:4`` as the base-60 number 124. A recipe is at most
``MAX_RECIPE_BYTES`` of UTF-8 text.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compress_core.atomic import atomic_write_text
from compress_core.errors import CompressError, first_line
from compress_core.patterns import Pattern, compile_pattern

RECIPE_VERSION = 1
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
SCHEMES = ("symmetric", "asymmetric", "pow2", "kmeans")
GRANULARITIES = ("channel", "tensor")
PRUNE_KINDS = ("unstructured", "structured")
NM_PATTERN = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")  # used with fullmatch
NM_RATIO_TOLERANCE = 5e-4  # a ratio written with 3 or 4 decimals (0.667 for 1:3) agrees with 1 - N/M
REGEX_PREFIX = "re:"
LAYER_KEYS = {"bits", "scheme", "granularity", "prune", "rank"}
PRUNE_KEYS = {"ratio", "kind"}
RECIPE_KEYS = {"version", "default", "layers"}
MAX_RECIPE_BYTES = 1 << 20
BITS_ALLOWED = "null (float), 2..8 or 16"
SECONDS_PER_MINUTE = 60  # YAML 1.1 base-60 integers: 2:4 reads as 2 * 60 + 4

SHOWN_CHARS = 80
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 4, 4, 60, 60, 40


def shown(value: Any) -> str:
    """``repr(value)`` cut to ``SHOWN_CHARS``: recipe values can be huge (or YAML alias bombs) and
    messages are one line."""
    text = _SHOWN.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def quoted(name: str) -> str:
    """A name in single quotes as written, or its shortened ``repr`` when it is long or not printable
    (a newline in a name must not split a one-line message)."""
    return f"'{name}'" if _plain(name) else shown(name)


def _plain(value: Any) -> bool:
    """Short printable text, fit to be quoted in a message as it is."""
    return isinstance(value, str) and value.isprintable() and len(value) <= _SHOWN.maxstring


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PruneConfig:
    """``ratio`` in [0, 1) of the weights (or output channels) to remove; ``kind`` is
    ``unstructured`` (smallest magnitudes), ``structured`` (whole output channels, physically
    removed) or an N:M pattern such as ``"2:4"`` (keep N of every M consecutive weights). An N:M
    kind implies the ratio 1 - N/M: leave ``ratio`` out (None), or give that value; another ratio is
    an error. Without a ratio, unstructured and structured pruning remove nothing."""

    ratio: float | None = None
    kind: str = "unstructured"

    def __post_init__(self) -> None:
        nm = NM_PATTERN.fullmatch(self.kind) if isinstance(self.kind, str) else None
        if nm:
            object.__setattr__(self, "ratio", _nm_ratio(self.kind, int(nm.group(1)), int(nm.group(2)), self.ratio))
            return
        if self.kind not in PRUNE_KINDS:
            raise CompressError(f"prune kind {shown(self.kind)} is not allowed; use one of {', '.join(PRUNE_KINDS)} or N:M like '2:4'{_base60_hint(self.kind)}")
        ratio = 0.0 if self.ratio is None else self.ratio
        if not _is_number(ratio) or not 0 <= ratio < 1:
            raise CompressError(f"prune ratio {shown(ratio)} is not allowed; use a number in [0, 1)")
        object.__setattr__(self, "ratio", ratio)

    @classmethod
    def with_kind(cls, kind: str, ratio: float) -> "PruneConfig":
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
    full rank (a float: ``1.0`` is full rank); ``granularity`` is per output ``channel`` or per ``tensor``."""

    bits: int | None = None
    scheme: str = "symmetric"
    granularity: str = "channel"
    prune: PruneConfig | None = None
    rank: int | float | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)):
            raise CompressError(f"bits {shown(self.bits)} is not allowed; use an integer: {BITS_ALLOWED}")
        if self.bits is not None and self.bits not in ALLOWED_BITS:
            raise CompressError(f"bits {self.bits} is not allowed; use {BITS_ALLOWED}")
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            raise CompressError(f"scheme {shown(self.scheme)} is not allowed; use one of {', '.join(SCHEMES)}")
        if not isinstance(self.granularity, str) or self.granularity not in GRANULARITIES:
            raise CompressError(f"granularity {shown(self.granularity)} is not allowed; use channel or tensor")
        if self.prune is not None and not isinstance(self.prune, PruneConfig):
            raise CompressError(f"prune {shown(self.prune)} is not allowed; use a PruneConfig or None")
        if self.rank is not None:
            _check_rank(self.rank)

    @property
    def is_identity(self) -> bool:
        """True when the config changes nothing."""
        return self.bits is None and self.rank is None and (self.prune is None or self.prune.ratio == 0)

    def to_dict(self) -> dict[str, Any]:
        """Only the keys that differ from the defaults, so recipes stay short."""
        data: dict[str, Any] = {}
        if self.bits is not None:
            data["bits"] = self.bits
            if self.scheme != "symmetric":
                data["scheme"] = self.scheme
            if self.granularity != "channel":
                data["granularity"] = self.granularity
        if self.prune is not None:
            data["prune"] = self.prune.to_dict()
        if self.rank is not None:
            data["rank"] = self.rank
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "LayerConfig":
        """Build from recipe data; ``where`` names the entry in error messages."""
        if not isinstance(data, dict):
            raise CompressError(f"{where}: expected a mapping like {{bits: 8}} or null, got {shown(data)}")
        _check_keys(data, LAYER_KEYS, where)
        try:
            return cls(
                bits=data.get("bits"),
                scheme=data.get("scheme", "symmetric"),
                granularity=data.get("granularity", "channel"),
                prune=_prune_from_dict(data.get("prune")),
                rank=data.get("rank"),
            )
        except CompressError as exc:
            raise CompressError(f"{where}: {exc}") from exc


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
    _check_keys(prune, PRUNE_KEYS, "prune")
    return PruneConfig(ratio=prune.get("ratio"), kind=prune.get("kind", "unstructured"))


def _check_keys(data: dict[Any, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(key if _plain(key) else shown(key) for key in set(data) - allowed)
    if unknown:
        raise CompressError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


@dataclass
class Plan:
    """Per-layer settings keyed by layer name or ``re:<regex>``; ``None`` leaves a layer alone."""

    default: LayerConfig | None = None
    layers: dict[str, LayerConfig | None] = field(default_factory=dict)
    _patterns: dict[str, Pattern] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in self.layers:
            if not isinstance(key, str):
                raise CompressError(f"layer entry {shown(key)} is not allowed; a layer entry is a layer name or 're:<regex>'")
            if key.startswith(REGEX_PREFIX):
                self._regex(key)

    def _regex(self, key: str) -> Pattern:
        """The compiled regex of a ``re:`` entry (compiled once per plan)."""
        if key not in self._patterns:
            self._patterns[key] = compile_pattern(key[len(REGEX_PREFIX) :], f"layer entry {quoted(key)}")
        return self._patterns[key]

    def config_for(self, name: str) -> LayerConfig | None:
        """The config that applies to layer ``name`` by the documented precedence."""
        if name in self.layers:
            return self.layers[name]
        for key, config in self.layers.items():
            if key.startswith(REGEX_PREFIX) and self._regex(key).fullmatch(name):
                return config
        return self.default

    def resolve(self, layer_names: list[str]) -> dict[str, LayerConfig]:
        """The non-trivial config of each named layer; unknown names and idle regexes are errors."""
        known = set(layer_names)
        for key in self.layers:
            if key.startswith(REGEX_PREFIX):
                regex = self._regex(key)
                if not any(regex.fullmatch(name) for name in layer_names):
                    raise CompressError(f"layer entry {quoted(key)} matches no layer of the model; layers: {_names(layer_names)}")
            elif key not in known:
                raise CompressError(f"layer {quoted(key)} is not a compressible layer of the model; layers: {_names(layer_names)}")
        resolved = {}
        for name in layer_names:
            config = self.config_for(name)
            if config is not None and not config.is_identity:
                resolved[name] = config
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (``version``, ``default``, ``layers``)."""
        return {
            "version": RECIPE_VERSION,
            "default": None if self.default is None else self.default.to_dict(),
            "layers": {key: None if config is None else config.to_dict() for key, config in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "Plan":
        """Parse recipe data; every problem is a ``CompressError`` naming the entry."""
        if not isinstance(data, dict):
            raise CompressError(f"{source}: expected a mapping with version, default and layers, got {shown(data)}")
        _check_keys(data, RECIPE_KEYS, source)
        version = data.get("version")
        if isinstance(version, bool) or version != RECIPE_VERSION:
            raise CompressError(f"{source}: version {shown(version)} is not supported; this tool reads version {RECIPE_VERSION}")
        default = data.get("default")
        layers = {} if data.get("layers") is None else data["layers"]
        if not isinstance(layers, dict):
            raise CompressError(f"{source}: 'layers' must be a mapping from layer name to settings, got {shown(layers)}")
        entries: dict[str, LayerConfig | None] = {}
        for key, value in layers.items():
            name = _entry_name(key, source)
            if name in entries:
                raise CompressError(f"{source}: layer {quoted(name)} is given twice (as text and as a number)")
            entries[name] = None if value is None else LayerConfig.from_dict(value, f"{source}: layer {quoted(name)}")
        return cls(default=None if default is None else LayerConfig.from_dict(default, f"{source}: default"), layers=entries)

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, source: str = "recipe") -> "Plan":
        """Parse YAML or JSON recipe text (JSON is valid YAML) of at most ``MAX_RECIPE_BYTES``."""
        if len(text) > MAX_RECIPE_BYTES:
            raise CompressError(f"{source}: longer than {MAX_RECIPE_BYTES:,} characters, too large for a recipe")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CompressError(f"{source}: not valid YAML or JSON ({first_line(exc)})") from exc
        except RecursionError as exc:
            raise CompressError(f"{source}: nested too deeply to be a recipe") from exc
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise CompressError(f"{source}: a value cannot be read ({first_line(exc)})") from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "recipe") -> "Plan":
        """Parse a recipe file's bytes: UTF-8 (a byte-order mark is allowed), at most ``MAX_RECIPE_BYTES``."""
        if len(data) > MAX_RECIPE_BYTES:
            raise CompressError(f"{source}: larger than {MAX_RECIPE_BYTES:,} bytes, too large for a recipe")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CompressError(
                f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the recipe as UTF-8"
            ) from exc
        return cls.from_text(text, source)

    def save(self, path: str | Path) -> Path:
        """Write the recipe atomically: JSON for a ``.json`` path, YAML otherwise."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix.lower() == ".json" else self.to_yaml()
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a recipe file (see ``from_bytes``)."""
        path = Path(path)
        if not path.is_file():
            raise CompressError(f"{path}: no such recipe file")
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_RECIPE_BYTES + 1)  # one byte past the limit is enough to refuse
        except OSError as exc:
            raise CompressError(f"{path}: cannot be read ({first_line(exc)})") from exc
        return cls.from_bytes(data, str(path))


def _entry_name(key: Any, source: str) -> str:
    """A layer entry's name: text, or an integer (an ``nn.Sequential`` child such as ``0``)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    raise CompressError(f"{source}: layer entry {shown(key)} ({type(key).__name__}) is not allowed; a layer entry is a layer name or 're:<regex>' (quote it)")


def _names(names: list[str], limit: int = 12) -> str:
    shown_names = ", ".join(name if _plain(name) else shown(name) for name in names[:limit])
    return shown_names + (f", ... ({len(names)} in all)" if len(names) > limit else "")
