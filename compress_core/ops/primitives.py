"""Names moved to ``ops.quantize``, ``ops.sqnr`` and ``ops.lowrank``, importable here until their last importers switch."""

# TODO(F): remove once importers switch (transform/apply.py, analysis/recover.py, analysis/metrics.py)
from compress_core.ops.lowrank import resolve_rank  # noqa: F401
from compress_core.ops.quantize import QuantizedWeight  # noqa: F401
from compress_core.ops.sqnr import sqnr_from_energies  # noqa: F401
