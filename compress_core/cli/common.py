"""Options shared by the subcommands that load a model, and plain-text table printing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from compress_core import jsonio
from compress_core.analysis.quality import load_user_metric
from compress_core.errors import CompressError
from compress_core.models.evaldata import MAX_DATA_BYTES, MAX_DATA_BYTES_ENV
from compress_core.models.handle import ModelHandle, Quality
from compress_core.models.loading import load_model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the options that say how to load it."""
    parser.add_argument("model", metavar="MODEL", help="a sample name (e.g. digits_cnn) or a model file")
    parser.add_argument(
        "--data",
        help=f".npz with 'inputs' (and optional integer 'labels') for evaluation; each array at most "
        f"{MAX_DATA_BYTES // 2**20} MiB unless {MAX_DATA_BYTES_ENV} says otherwise",
    )
    parser.add_argument("--input-shape", type=parse_shape, help="one sample's shape without batch, e.g. 1,8,8")
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=parse_input,
        default=[],
        metavar="NAME=SHAPE|VALUE",
        help="an input the file leaves open: one sample's shape without batch (input1=1,64,160), or a scalar "
        "input's value (sr=16000); repeat for several inputs",
    )
    parser.add_argument(
        "--task",
        default="auto",
        help="how outputs are compared: auto (from the output's shape and dtype), classification, sequence, "
        "dense, ids or embedding",
    )
    parser.add_argument("--output", type=int, default=0, help="index of the output that ranks (default 0)")
    parser.add_argument(
        "--ctc-blank", type=int, help="collapse CTC repeats and this blank id before comparing sequences"
    )
    parser.add_argument(
        "--metric",
        help="your own quality metric: path.py:function, called as function(reference, outputs, labels) -> "
        "float, higher is better (your code, run as it is)",
    )
    parser.add_argument(
        "--architecture", help="built-in architecture a state_dict file (.pt/.pth/.bin or .safetensors) fits"
    )
    parser.add_argument(
        "--trust-code",
        "--trust-pickle",
        dest="trust_code",
        action="store_true",
        help="load a file whose loading runs code stored in it: TorchScript (.ts/.jit, or a TorchScript .pt), "
        "a .pt2 with pickled parts, a full pickle; only for files you trust (--trust-pickle is the old name)",
    )


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """``--calibration N`` and ``--calibrate-method``: how static int8 finds its activation ranges."""
    from compress_core.ort.int8 import CALIBRATION_METHODS, Int8Options

    parser.add_argument(
        "--calibration",
        type=int,
        default=Int8Options.calibration_samples,
        metavar="N",
        help="calibration samples (static int8)",
    )
    parser.add_argument(
        "--calibrate-method",
        choices=CALIBRATION_METHODS,
        default=Int8Options.method,
        help="activation range calibration",
    )


def load_from_args(args: argparse.Namespace) -> ModelHandle:
    """Load the model the common arguments describe."""
    metric, label = load_user_metric(args.metric) if args.metric else (None, None)
    return load_model(
        args.model,
        input_shape=args.input_shape,
        inputs=dict(args.inputs),
        data=args.data,
        architecture=args.architecture,
        trust_code=args.trust_code,
        quality=Quality(args.task, args.output, args.ctc_blank, metric, label),
    )


def parse_input(text: str) -> tuple[str, tuple[float, ...]]:
    """``"input1=1,64,160"`` -> ``("input1", (1.0, 64.0, 160.0))``: a name and a shape or a value."""
    name, separator, numbers = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"--input '{text}': expected NAME=SHAPE or NAME=VALUE, e.g. input1=1,64,160")
    try:
        values = tuple(float(part) for part in numbers.replace("x", ",").split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--input '{text}': '{numbers}' is not a comma-separated list of numbers"
        ) from exc
    if not values:
        raise argparse.ArgumentTypeError(f"--input '{text}': give a shape (1,64,160) or a value (16000)")
    return name.strip(), values


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,8,8"`` -> ``(1, 8, 8)``; anything else is a one-line error."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"input shape '{text}' is not a comma-separated list of integers") from exc
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"input shape '{text}' must be positive integers, e.g. 1,8,8")
    return shape


def print_json(payload: Any) -> None:
    """JSON on stdout, indented."""
    print(jsonio.dumps(payload))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return "" if value is None else str(value)


def require(condition: bool, message: str) -> None:
    """Raise a ``CompressError`` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CompressError(message)
