"""The per-layer plan: bit width, pruning and rank per layer, with a default and regex entries.

Precedence, for each compressible layer: an entry whose key is the layer's exact name; otherwise the
first ``re:<regex>`` entry (in the order written) whose regex matches the whole name; otherwise
``default``. An entry of ``None`` (``null`` in a recipe) leaves the layer float and unpruned, even
when a default exists. Every value is checked when the plan is made, and again against the model
(``Plan.resolve``): an exact name the model lacks, or a regex that matches nothing, is an error.

The recipe file (YAML or JSON)::

    version: 1
    default: {bits: 8}
    layers:
      conv1: {bits: 4, scheme: asymmetric}
      "re:.*fc.*": {prune: {ratio: 0.5, kind: structured}}
      fc2: {rank: 0.5}
      head: null
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .errors import CompressError, first_line

RECIPE_VERSION = 1
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
SCHEMES = ("symmetric", "asymmetric", "pow2", "kmeans")
GRANULARITIES = ("channel", "tensor")
PRUNE_KINDS = ("unstructured", "structured")
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
REGEX_PREFIX = "re:"
LAYER_KEYS = {"bits", "scheme", "granularity", "prune", "rank"}
PRUNE_KEYS = {"ratio", "kind"}
RECIPE_KEYS = {"version", "default", "layers"}


@dataclass(frozen=True)
class PruneConfig:
    """``ratio`` in [0, 1) of the weights (or output channels) to remove; ``kind`` is
    ``unstructured`` (smallest magnitudes), ``structured`` (whole output channels, physically
    removed) or an N:M pattern such as ``"2:4"`` (keep N of every M consecutive weights; the ratio
    is then 1 - N/M and need not be given)."""

    ratio: float
    kind: str = "unstructured"

    def __post_init__(self) -> None:
        nm = NM_PATTERN.match(str(self.kind))
        if nm:
            n, m = int(nm.group(1)), int(nm.group(2))
            if not 0 < n < m:
                raise CompressError(f"prune kind '{self.kind}': N:M needs 0 < N < M")
            object.__setattr__(self, "ratio", 1 - n / m)
            return
        if self.kind not in PRUNE_KINDS:
            raise CompressError(f"prune kind '{self.kind}' is not allowed; use one of {', '.join(PRUNE_KINDS)} or N:M like 2:4")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise CompressError(f"prune ratio {self.ratio!r} is not allowed; use a number in [0, 1)")

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        nm = NM_PATTERN.match(str(self.kind))
        return (int(nm.group(1)), int(nm.group(2))) if nm else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind} if self.n_m else {"ratio": self.ratio, "kind": self.kind}


@dataclass(frozen=True)
class LayerConfig:
    """What to do to one layer. ``bits=None`` keeps it float; ``rank`` is an int or a fraction of
    full rank; ``granularity`` is per output ``channel`` or per ``tensor``."""

    bits: int | None = None
    scheme: str = "symmetric"
    granularity: str = "channel"
    prune: PruneConfig | None = None
    rank: int | float | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, bool) or self.bits not in ALLOWED_BITS):
            raise CompressError(f"bits {self.bits!r} is not allowed; use null (float), 2..8 or 16")
        if self.scheme not in SCHEMES:
            raise CompressError(f"scheme '{self.scheme}' is not allowed; use one of {', '.join(SCHEMES)}")
        if self.granularity not in GRANULARITIES:
            raise CompressError(f"granularity '{self.granularity}' is not allowed; use channel or tensor")
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, (int, float)):
                raise CompressError(f"rank {self.rank!r} is not allowed; use an integer >= 1 or a fraction in (0, 1]")
            if isinstance(self.rank, float) and not 0 < self.rank <= 1:
                raise CompressError(f"rank {self.rank!r} is not allowed; a fraction of full rank must be in (0, 1]")
            if isinstance(self.rank, int) and self.rank < 1:
                raise CompressError(f"rank {self.rank!r} is not allowed; an integer rank must be >= 1")

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
            raise CompressError(f"{where}: expected a mapping like {{bits: 8}} or null, got {data!r}")
        unknown = set(data) - LAYER_KEYS
        if unknown:
            raise CompressError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(LAYER_KEYS))}")
        prune = data.get("prune")
        try:
            if prune is not None:
                if not isinstance(prune, dict) or set(prune) - PRUNE_KEYS:
                    raise CompressError(f"prune must be a mapping with keys ratio and kind, got {prune!r}")
                prune = PruneConfig(ratio=prune.get("ratio", 0.0), kind=prune.get("kind", "unstructured"))
            return cls(
                bits=data.get("bits"),
                scheme=data.get("scheme", "symmetric"),
                granularity=data.get("granularity", "channel"),
                prune=prune,
                rank=data.get("rank"),
            )
        except CompressError as exc:
            raise CompressError(f"{where}: {exc}") from exc


@dataclass
class Plan:
    """Per-layer settings keyed by layer name or ``re:<regex>``; ``None`` leaves a layer alone."""

    default: LayerConfig | None = None
    layers: dict[str, LayerConfig | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.layers:
            if key.startswith(REGEX_PREFIX):
                try:
                    re.compile(key[len(REGEX_PREFIX) :])
                except re.error as exc:
                    raise CompressError(f"layer entry '{key}': invalid regular expression ({exc})") from exc

    def config_for(self, name: str) -> LayerConfig | None:
        """The config that applies to layer ``name`` by the documented precedence."""
        if name in self.layers:
            return self.layers[name]
        for key, config in self.layers.items():
            if key.startswith(REGEX_PREFIX) and re.fullmatch(key[len(REGEX_PREFIX) :], name):
                return config
        return self.default

    def resolve(self, layer_names: list[str]) -> dict[str, LayerConfig]:
        """The non-trivial config of each named layer; unknown names and idle regexes are errors."""
        known = set(layer_names)
        for key in self.layers:
            if key.startswith(REGEX_PREFIX):
                pattern = key[len(REGEX_PREFIX) :]
                if not any(re.fullmatch(pattern, name) for name in layer_names):
                    raise CompressError(f"layer entry '{key}' matches no layer of the model; layers: {_names(layer_names)}")
            elif key not in known:
                raise CompressError(f"layer '{key}' is not a compressible layer of the model; layers: {_names(layer_names)}")
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
            raise CompressError(f"{source}: expected a mapping with version, default and layers")
        unknown = set(data) - RECIPE_KEYS
        if unknown:
            raise CompressError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: version, default, layers")
        if data.get("version") != RECIPE_VERSION:
            raise CompressError(f"{source}: version {data.get('version')!r} is not supported; this tool reads version {RECIPE_VERSION}")
        default = data.get("default")
        layers = data.get("layers") or {}
        if not isinstance(layers, dict):
            raise CompressError(f"{source}: 'layers' must be a mapping from layer name to settings")
        return cls(
            default=None if default is None else LayerConfig.from_dict(default, f"{source}: default"),
            layers={
                str(key): None if value is None else LayerConfig.from_dict(value, f"{source}: layer '{key}'")
                for key, value in layers.items()
            },
        )

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, source: str = "recipe") -> "Plan":
        """Parse YAML or JSON recipe text (JSON is valid YAML)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CompressError(f"{source}: not valid YAML or JSON ({first_line(exc)})") from exc
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        """Write the recipe atomically: JSON for a ``.json`` path, YAML otherwise."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix.lower() == ".json" else self.to_yaml()
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a recipe file."""
        path = Path(path)
        if not path.is_file():
            raise CompressError(f"{path}: no such recipe file")
        return cls.from_text(path.read_text(encoding="utf-8"), str(path))


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
