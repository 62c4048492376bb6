"""What a sensitivity sweep tries and what it found: the sweep's levels, its cells and its table.

A ``Sweep`` lists the levels of each kind (``bits``, ``prune``, ``structured``, ``rank``); each
(kind, level) cell is one ``LayerConfig`` (``config_for``). A ``SensitivityResult`` holds one
``SensitivityRow`` per measured (layer, kind, level), a ``SkippedCell`` with its reason for each cell
not measured, a ``FailedCell`` with its error for each cell that failed twice (the sweep goes on), and
optional Hessian traces; it ranks layers, writes CSV, and goes to and from JSON-ready data.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from compress_core.errors import CompressError
from compress_core.ops.quantize import GRANULARITIES, SCHEMES
from compress_core.plan.layer_config import LayerConfig, PruneConfig, checked_bits

KINDS = ("bits", "prune", "structured", "rank")
CSV_COLUMNS = ("layer", "kind", "level", "metric", "drop", "proxy")
HESSIAN_KIND = "hessian"


@dataclass(frozen=True)
class Sweep:
    """The levels to try. ``prune`` ratios serve both unstructured (``prune``) and ``structured``
    pruning; ``ranks`` are fractions of full rank (floats) or ranks (ints); ``kinds`` selects which
    of ``bits``, ``prune``, ``structured`` and ``rank`` run. Bits use ``scheme`` and ``granularity``."""

    bits: tuple[int, ...] = (8, 6, 4, 3, 2)
    prune: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ranks: tuple[int | float, ...] = (0.75, 0.5, 0.25, 0.1)
    kinds: tuple[str, ...] = KINDS
    scheme: str = "symmetric"
    granularity: str = "channel"

    def __post_init__(self) -> None:
        for name in ("bits", "prune", "ranks", "kinds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds:
            raise CompressError(
                f"unknown sensitivity kind '{(unknown or [''])[0]}'; use one or more of {', '.join(KINDS)}"
            )
        if self.scheme not in SCHEMES or self.granularity not in GRANULARITIES:
            raise CompressError(
                f"scheme '{self.scheme}' / granularity '{self.granularity}' is not allowed; use {', '.join(SCHEMES)} / {', '.join(GRANULARITIES)}"
            )
        for kind in self.kinds:
            if not self.levels(kind):
                raise CompressError(f"sensitivity kind '{kind}' has no levels to try")
            for level in self.levels(kind):
                config_for(kind, level, self)

    def levels(self, kind: str) -> tuple[int | float, ...]:
        """The levels of one kind."""
        return {"bits": self.bits, "prune": self.prune, "structured": self.prune, "rank": self.ranks}[kind]

    def cells(self) -> list[tuple[str, int | float]]:
        """Every (kind, level) of the sweep, kinds in ``KINDS`` order."""
        return [(kind, level) for kind in KINDS if kind in self.kinds for level in self.levels(kind)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``Sweep(**data)`` reads it back)."""
        return asdict(self)


def config_for(kind: str, level: int | float, sweep: Sweep) -> LayerConfig:
    """The one-layer config of a cell; a bad level is a one-line ``CompressError``."""
    try:
        if kind == "bits":
            return LayerConfig(bits=checked_bits(level), scheme=sweep.scheme, granularity=sweep.granularity)
        if kind == "rank":
            return LayerConfig(rank=level)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or level <= 0:
            raise CompressError(f"prune ratio {level!r} is not allowed; use a number in (0, 1)")
        return LayerConfig(
            prune=PruneConfig(ratio=level, kind="structured" if kind == "structured" else "unstructured")
        )
    except CompressError as exc:
        raise CompressError(f"sensitivity level for '{kind}': {exc}") from exc


@dataclass(frozen=True)
class SensitivityRow:
    """One measured cell: ``metric`` in %, ``drop`` = original metric - metric (points), ``proxy``
    (dB of weight SQNR, or energy kept for rank; Hessian trace for ``kind == "hessian"``)."""

    layer: str
    kind: str
    level: int | float | None
    metric: float | None
    drop: float | None
    proxy: float | None


@dataclass(frozen=True)
class SkippedCell:
    """A cell the layer or the model cannot take, and why."""

    layer: str
    kind: str
    level: int | float
    reason: str


@dataclass(frozen=True)
class FailedCell:
    """A cell whose evaluation raised twice (it is tried once more before it counts as failed), and the error."""

    layer: str
    kind: str
    level: int | float
    error: str


@dataclass(frozen=True)
class Progress:
    """Where a sweep is: layer ``layer_index`` (1-based) of ``layer_count``, cell ``cell`` of ``cell_count``."""

    layer: str
    layer_index: int
    layer_count: int
    cell: int
    cell_count: int


@dataclass
class SensitivityResult:
    """The sensitivity table of one model (rows in the model's layer order) and how it was made."""

    model: str
    metric_name: str
    baseline: float
    sweep: Sweep
    rows: list[SensitivityRow] = field(default_factory=list)
    skipped: list[SkippedCell] = field(default_factory=list)
    failed: list[FailedCell] = field(default_factory=list)
    hessian: dict[str, float] | None = None
    seconds: float = 0.0
    strategy: str = ""
    evaluations: int = 0
    cancelled: bool = False
    cached: bool = False

    def ranking(self, kind: str = "bits", level: int | float | None = None) -> list[str]:
        """Layer names, most sensitive first (see ``ranked_rows``; ``hessian``: largest trace first)."""
        if kind == HESSIAN_KIND:
            if self.hessian is None:
                raise CompressError("this sensitivity table has no Hessian traces; run it with hessian=True")
            traces = self.hessian
            return sorted(traces, key=lambda name: -traces[name])
        return [row.layer for row in self.ranked_rows(kind, level)]

    def ranked_rows(self, kind: str = "bits", level: int | float | None = None) -> list[SensitivityRow]:
        """The rows of ``kind`` at ``level`` (default: its harshest level), largest drop first,
        ties broken by the lower proxy."""
        rows = [row for row in self.rows if row.kind == kind]
        if not rows:
            found = ", ".join(sorted({row.kind for row in self.rows})) or "none"
            raise CompressError(f"this sensitivity table has no '{kind}' rows; it has {found}")
        harshest = max if kind in ("prune", "structured") else min
        level = harshest(measured(row)[0] for row in rows) if level is None else level
        return sorted((row for row in rows if row.level == level), key=lambda row: (-measured(row)[1], row.proxy))

    def table(self) -> list[SensitivityRow]:
        """The measured rows, then one ``hessian`` row per layer when traces were computed."""
        traces = [
            SensitivityRow(name, HESSIAN_KIND, None, None, None, trace) for name, trace in (self.hessian or {}).items()
        ]
        return [*self.rows, *traces]

    def to_csv(self) -> str:
        """The table as CSV text with the columns ``layer,kind,level,metric,drop,proxy``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.table():
            writer.writerow(["" if value is None else value for value in (getattr(row, c) for c in CSV_COLUMNS)])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reads it back)."""
        data = asdict(self)
        data["sweep"] = self.sweep.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityResult:
        """The result ``to_dict`` wrote (keys a caller added beside it, such as the app's, are ignored)."""
        known = {item.name for item in fields(cls)}
        return cls(
            **{
                **{key: value for key, value in data.items() if key in known},
                "sweep": Sweep(**data["sweep"]),
                "rows": [SensitivityRow(**row) for row in data["rows"]],
                "skipped": [SkippedCell(**cell) for cell in data["skipped"]],
                "failed": [FailedCell(**cell) for cell in data.get("failed", [])],
            }
        )


def measured(row: SensitivityRow) -> tuple[int | float, float]:
    """(level, drop) of a measured row: ``run_sensitivity`` fills both for every row of
    ``SensitivityResult.rows``; only the ``hessian`` rows of ``table()`` leave them out."""
    if row.level is None or row.drop is None:
        raise CompressError(f"sensitivity row ({row.layer}, {row.kind}) has no level or drop; run the sweep again")
    return row.level, row.drop
