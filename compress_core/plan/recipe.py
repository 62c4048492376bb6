"""The per-layer plan: bit width, pruning and rank per layer, with a default and regex entries.

Precedence, for each compressible layer: an entry whose key is the layer's exact name; otherwise the
first ``re:<regex>`` entry (in the order written) whose regex matches the whole name; otherwise
``default``. Regexes use RE2 syntax and match in linear time (``compress_core.plan.patterns``). An entry
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
``MAX_RECIPE_BYTES`` of UTF-8 text. The entries themselves are ``compress_core.plan.layer_config``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compress_core.atomic import atomic_write_text
from compress_core.errors import CompressError, first_line
from compress_core.plan.layer_config import LayerConfig, check_keys
from compress_core.plan.patterns import Pattern, compile_pattern
from compress_core.plan.quoting import quoted, shown, written

RECIPE_VERSION = 1
REGEX_PREFIX = "re:"
RECIPE_KEYS = {"version", "default", "layers"}
MAX_RECIPE_BYTES = 1 << 20


@dataclass
class Plan:
    """Per-layer settings keyed by layer name or ``re:<regex>``; ``None`` leaves a layer alone."""

    default: LayerConfig | None = None
    layers: dict[str, LayerConfig | None] = field(default_factory=dict)
    _patterns: dict[str, Pattern] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in self.layers:
            if not isinstance(key, str):
                raise CompressError(
                    f"layer entry {shown(key)} is not allowed; a layer entry is a layer name or 're:<regex>'"
                )
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
                    raise CompressError(
                        f"layer entry {quoted(key)} matches no layer of the model; layers: {_names(layer_names)}"
                    )
            elif key not in known:
                raise CompressError(
                    f"layer {quoted(key)} is not a compressible layer of the model; layers: {_names(layer_names)}"
                )
        resolved = {}
        for name in layer_names:
            config = self.config_for(name)
            if config is not None and not config.is_identity:
                resolved[name] = config
        return resolved

    def with_aliases(self, aliases: Mapping[str, str]) -> Plan:
        """This plan with an exact entry for each aliased layer that an entry names through its alias.

        ``aliases`` maps a layer name to another name it answers to: for an ONNX file exported from
        torch, the module its node came from (``/bert/encoder/layer.0/output/dense/MatMul`` answers to
        ``bert.encoder.layer.0.output.dense``), so that a recipe written for the torch model applies
        to its ONNX export. An aliased layer takes, in this order, the entry naming it, the entry
        naming its alias, the first regex matching either name; that becomes its exact entry, so the
        torch model and its export get the same settings. Entries that name only aliases (an alias, a
        regex matching aliases and no layer's own name) are then dropped; the others stay as written
        for the layers without an alias (``resolve`` reports the unknown names and idle regexes).
        """
        exact = {}
        for layer, alias in aliases.items():
            key = self._entry_for(layer, alias)
            if key is not None:
                exact[layer] = self.layers[key]
        aliased = set(aliases.values())
        kept = {
            key: config
            for key, config in self.layers.items()
            if key not in exact
            and not (key in aliased and key not in aliases)
            and not self._names_aliases_only(key, aliases)
        }
        return Plan(self.default, {**exact, **kept})

    def _entry_for(self, layer: str, alias: str) -> str | None:
        """The key of the entry that decides an aliased layer (see ``with_aliases``), None for the default."""
        for name in (layer, alias):
            if name in self.layers:
                return name
        return next(
            (
                key
                for key in self.layers
                if key.startswith(REGEX_PREFIX)
                and (self._regex(key).fullmatch(layer) or self._regex(key).fullmatch(alias))
            ),
            None,
        )

    def _names_aliases_only(self, key: str, aliases: Mapping[str, str]) -> bool:
        """True for a regex entry that matches some alias and none of the aliased layers' own names."""
        if not key.startswith(REGEX_PREFIX):
            return False
        regex = self._regex(key)
        return any(regex.fullmatch(alias) for alias in aliases.values()) and not any(
            regex.fullmatch(layer) for layer in aliases
        )

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (``version``, ``default``, ``layers``)."""
        return {
            "version": RECIPE_VERSION,
            "default": None if self.default is None else self.default.to_dict(),
            "layers": {key: None if config is None else config.to_dict() for key, config in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> Plan:
        """Parse recipe data; every problem is a ``CompressError`` naming the entry."""
        if not isinstance(data, dict):
            raise CompressError(f"{source}: expected a mapping with version, default and layers, got {shown(data)}")
        check_keys(data, RECIPE_KEYS, source)
        version = data.get("version")
        if isinstance(version, bool) or version != RECIPE_VERSION:
            raise CompressError(
                f"{source}: version {shown(version)} is not supported; this tool reads version {RECIPE_VERSION}"
            )
        default = data.get("default")
        layers = {} if data.get("layers") is None else data["layers"]
        if not isinstance(layers, dict):
            raise CompressError(
                f"{source}: 'layers' must be a mapping from layer name to settings, got {shown(layers)}"
            )
        entries: dict[str, LayerConfig | None] = {}
        for key, value in layers.items():
            name = _entry_name(key, source)
            if name in entries:
                raise CompressError(f"{source}: layer {quoted(name)} is given twice (as text and as a number)")
            entries[name] = None if value is None else LayerConfig.from_dict(value, f"{source}: layer {quoted(name)}")
        return cls(
            default=None if default is None else LayerConfig.from_dict(default, f"{source}: default"), layers=entries
        )

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, source: str = "recipe") -> Plan:
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
    def from_bytes(cls, data: bytes, source: str = "recipe") -> Plan:
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
    def load(cls, path: str | Path) -> Plan:
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
    raise CompressError(
        f"{source}: layer entry {shown(key)} ({type(key).__name__}) is not allowed; a layer entry is a layer name or 're:<regex>' (quote it)"
    )


def _names(names: list[str], limit: int = 12) -> str:
    shown_names = ", ".join(written(name) for name in names[:limit])
    return shown_names + (f", ... ({len(names)} in all)" if len(names) > limit else "")
