"""``export MODEL --recipe R --out DIR``: the compressed model's files, recipe, metrics and report."""

from __future__ import annotations

import argparse

from compress_core.cli.common import (
    add_calibration_arguments,
    add_model_arguments,
    format_table,
    load_from_args,
    print_json,
)
from compress_core.ort.artifacts import export_artifacts, headline
from compress_core.ort.int8 import Int8Options
from compress_core.ort.nbits import NBITS_COMPUTE, NBitsOptions
from compress_core.pipeline import compress
from compress_core.plan import Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write ONNX (fp32, optional int8), torch weights, recipe, metrics and report"
    )
    add_model_arguments(parser)
    parser.add_argument("--recipe", required=True, help="the plan: a YAML or JSON recipe file")
    parser.add_argument(
        "--out", required=True, help="destination folder (created; existing files of the same name are replaced)"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write model_int8.onnx through ONNX Runtime's quantizer"
    )
    add_calibration_arguments(parser)
    parser.add_argument(
        "--activations",
        choices=("uint8", "int8"),
        default=None,
        help="activation type (default: the int8 path chosen for this CPU; uint8 = U8S8, int8 = S8S8, static only)",
    )
    parser.add_argument(
        "--weight-type",
        choices=("uint8", "int8"),
        default=None,
        help="weight type (default: this CPU's path; uint8 = U8U8, exact on x86 without VNNI)",
    )
    for flag, text in (
        ("reduce-range", "7-bit weights (ORT's reduce_range)"),
        ("per-channel", "per-channel weights for every layer (--no-per-channel: per tensor)"),
        ("float-narrow-convs", "static: keep float the Conv layers that read one input channel"),
        ("pad-conv-channels", "static: pad Conv inputs with zeros to a multiple of 4 channels (ORT's fast int8 convs)"),
    ):
        parser.add_argument(
            f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=f"{text}; default: this CPU's path"
        )
    parser.add_argument(
        "--dynamic", action="store_true", help="dynamic int8 (weights only; for transformers) instead of static"
    )
    parser.add_argument(
        "--weight-only",
        action="store_true",
        help="also write model_nbits.onnx: the plan's 2-4-bit MatMul/Gemm layers (and embeddings) stored block-wise "
        "in 4 bits, 5-8-bit ones in 8, by ONNX Runtime's MatMulNBits",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=NBitsOptions.block_size,
        metavar="N",
        help="weights per scale in model_nbits.onnx (a power of two >= 16)",
    )
    parser.add_argument(
        "--nbits-compute",
        choices=tuple(NBITS_COMPUTE),
        default=NBitsOptions.compute,
        help="how model_nbits.onnx multiplies: int8 (each block of the input quantized at run time; faster) or "
        "float (the weights widened to float)",
    )
    parser.add_argument("--json", action="store_true", help="print metrics.json instead of a summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # a bad block size fails before loading
    nbits = NBitsOptions(args.block_size, args.nbits_compute) if args.weight_only else None
    handle = load_from_args(args)
    plan = Plan.load(args.recipe)
    options = None
    if args.int8 or args.dynamic:
        options = Int8Options(
            args.calibrate_method,
            args.calibration,
            args.activations,
            args.dynamic,
            weights=args.weight_type,
            reduce_range=args.reduce_range,
            per_channel=args.per_channel,
            float_narrow_convs=args.float_narrow_convs,
            pad_conv_channels=args.pad_conv_channels,
        )
    result = export_artifacts(compress(handle, plan), args.out, options, nbits=nbits)
    if args.json:
        print_json(result.metrics)
        return 0
    task, label = result.metrics["task"], result.metrics.get("metric_label")
    rows = [
        [name, entry["bytes"], entry["zip_bytes"], headline(entry, task, label)[1] if "cosine" in entry else None]
        for name, entry in result.metrics["artifacts"].items()
    ]
    key = headline(result.metrics["pytorch"]["original"], task, label)[0]
    print(format_table(("file", "bytes", "zip_bytes", f"{key} (ORT)"), rows))
    print(f"\nwrote {len(result.files)} files to {result.folder} (report: {result.folder / 'report.md'})")
    return 0
