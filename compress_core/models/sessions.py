"""The one way the project opens an ONNX Runtime session: on the CPU, quiet, and ready to be timed.

Every session logs errors only (``log_severity_level`` 3) and runs on ``CPUExecutionProvider``. A
session that is timed (latency, profiling) gets a fixed number of intra-op threads, one inter-op
thread, and threads that do not spin while idle: in interleaved runs a spinning session would take
the cores from the next candidate's run (on 2 cores this doubled fp32 medians and skewed ratios).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from compress_core.errors import CompressError, first_line

LOG_ERRORS_ONLY = 3
PROVIDERS = ["CPUExecutionProvider"]


def make_session(
    model: str | Path | onnx.ModelProto,
    threads: int | None = None,
    *,
    profile_prefix: str | None = None,
    optimized_path: str | Path | None = None,
    optimize: bool = True,
    label: str | None = None,
) -> Any:
    """A CPU ``InferenceSession`` on an ONNX file or an in-memory ``ModelProto``.

    Args:
        model: the file's path, or the model itself.
        threads: for a timed session, its intra-op threads (one inter-op thread, no spinning while
            idle); None leaves ONNX Runtime's defaults.
        profile_prefix: turn ORT's profiler on, writing its JSON under this prefix.
        optimized_path: save the graph as ORT optimized it (to see which nodes it fused).
        optimize: False turns graph optimization off, so that every tensor keeps its name.
        label: how messages name the model (default: the file's name, or "the ONNX model").

    Raises:
        CompressError: ONNX Runtime could not load the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = LOG_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
        name = label or "the ONNX model"
    else:
        source, name = str(model), label or Path(model).name
    try:
        return ort.InferenceSession(source, options, providers=PROVIDERS)
    except Exception as exc:  # noqa: BLE001 - ORT's errors carry no common type
        raise CompressError(f"{name}: ONNX Runtime could not load it ({first_line(exc, 200)})") from exc
