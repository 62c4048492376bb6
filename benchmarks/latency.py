"""Latency benchmark of the int8 and pruned exports, written to ``benchmarks/results/latency.{md,json}``.

``python benchmarks/latency.py`` (about five minutes on 2 cores). Every figure of a model comes from
one interleaved run (``measure_latency``), so ratios are measured side by side:

- ``digits_resnet`` (batch 32, 2 threads): fp32; our all-8-bit export with U8S8 and with S8S8
  activations; ORT's default ``quantize_static`` of the same fp32 model; 50% structured channel
  pruning in fp32 and in int8 (no fine-tuning: the accuracy column shows what pruning alone costs).
- ``minilm`` (batch 8, 2 threads): fp32; ORT's plain ``quantize_dynamic``; our dynamic int8 plan
  (``sample_models/recipes/minilm_int8.yaml``: per-channel weights, one sensitive layer kept float),
  with min / mean cosine to fp32; and a 4-bit weight-only file (``MINILM_4BIT``, ONNX Runtime's MatMulNBits,
  ``ort.nbits``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compress_core as cc  # noqa: E402
from compress_core import jsonio  # noqa: E402
from compress_core.analysis.recover import finetune  # noqa: E402
from compress_core.ort.artifacts import FP32_ONNX, INT8_ONNX, ORIGINAL_ONNX, export_artifacts, file_sizes, run_onnx  # noqa: E402
from compress_core.ort.int8 import Int8Options, quantize_ort_default  # noqa: E402
from compress_core.ort.latency import measure_latency  # noqa: E402
from compress_core.ort.nbits import NBitsOptions, quantize_nbits  # noqa: E402
from compress_core.ort.runtime import runtime_line, runtime_record  # noqa: E402
from compress_core.pipeline import compress  # noqa: E402
from compress_core.plan import Plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
ALL_8BIT = "version: 1\ndefault: {bits: 8}\n"
PRUNED = "version: 1\ndefault: {prune: {ratio: 0.5, kind: structured}}\n"
PRUNED_8BIT = "version: 1\ndefault: {bits: 8, prune: {ratio: 0.5, kind: structured}}\n"
RECOVER_EPOCHS = 8  # fine-tuning against the original (compress_core.analysis.recover) wins back the pruned accuracy
MINILM_RECIPE = Path(__file__).resolve().parents[1] / "sample_models" / "recipes" / "minilm_int8.yaml"
MINILM_4BIT = "version: 1\ndefault: {bits: 4, scheme: asymmetric}\n"  # every layer and table in 4 bits


def export(
    handle: cc.ModelHandle, recipe: str, folder: Path, options: Int8Options | None, recover_epochs: int = 0
) -> Path:
    """Apply the recipe (then fine-tune against the original when ``recover_epochs``) and export."""
    model = compress(handle, Plan.from_text(recipe))
    if recover_epochs:
        model = model.fine_tuned(finetune(handle, model.compressed.handle, epochs=recover_epochs)[0])
    export_artifacts(model, folder, options)
    return folder


def cosines(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    cos = (reference * outputs).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(outputs, axis=1)
    return float(cos.min()), float(cos.mean())


def measure(model: str, paths: dict[str, Path], handle: cc.ModelHandle, batch: int, runs: int) -> list[dict]:
    reference = run_onnx(paths["fp32"], handle.data.inputs)
    rows = []
    for timing in measure_latency(paths, handle.data.inputs, THREADS, batch, warmup=5, runs=runs):
        outputs = run_onnx(paths[timing.name], handle.data.inputs)
        quality = (
            {"accuracy": float((outputs.argmax(1) == handle.data.labels).mean())}
            if handle.task == "classification"
            else dict(zip(("min_cosine", "mean_cosine"), cosines(reference, outputs)))
        )
        rows.append({"model": model, **timing.to_dict(), **quality, **file_sizes(paths[timing.name])})
        rows[-1]["path"] = Path(rows[-1]["path"]).name
    return rows


def resnet(scratch: Path) -> list[dict]:
    handle = cc.load_model("digits_resnet")
    u8 = export(handle, ALL_8BIT, scratch / "resnet_u8", Int8Options(calibration_samples=64))
    s8 = export(handle, ALL_8BIT, scratch / "resnet_s8", Int8Options(calibration_samples=64, activations="int8"))
    pruned = export(handle, PRUNED, scratch / "resnet_pruned", None)
    pruned8 = export(handle, PRUNED_8BIT, scratch / "resnet_pruned8", Int8Options(calibration_samples=64))
    recovered8 = export(
        handle, PRUNED_8BIT, scratch / "resnet_recovered8", Int8Options(calibration_samples=64), RECOVER_EPOCHS
    )
    paths = {
        "fp32": u8 / ORIGINAL_ONNX,
        "int8 (ours, U8S8 per-channel)": u8 / INT8_ONNX,
        "int8 (ours, S8S8 per-channel)": s8 / INT8_ONNX,
        "int8 (ORT default quantize_static)": quantize_ort_default(
            u8 / ORIGINAL_ONNX, scratch / "ort_default.onnx", handle.data.inputs
        ),
        "50% structured pruning, fp32": pruned / FP32_ONNX,
        "50% structured pruning + int8": pruned8 / INT8_ONNX,
        f"50% structured pruning + int8, {RECOVER_EPOCHS} epochs distillation": recovered8 / INT8_ONNX,
    }
    return measure("digits_resnet", paths, handle, batch=32, runs=60)


def minilm(scratch: Path) -> list[dict]:
    from onnxruntime.quantization import quantize_dynamic

    handle = cc.load_model("minilm")
    ours = export(handle, MINILM_RECIPE.read_text(encoding="utf-8"), scratch / "minilm", Int8Options(dynamic=True))
    plain = scratch / "minilm_plain_dynamic.onnx"
    quantize_dynamic(ours / ORIGINAL_ONNX, plain)
    four_bit = quantize_nbits(
        compress(handle, Plan.from_text(MINILM_4BIT)), scratch / "minilm_nbits.onnx", NBitsOptions()
    ).path
    paths = {
        "fp32": ours / ORIGINAL_ONNX,
        "int8 (ORT plain quantize_dynamic)": plain,
        f"4-bit weight-only (MatMulNBits, block {NBitsOptions().block_size})": four_bit,
        "int8 (ours: dynamic per-channel, 1 layer float)": ours / INT8_ONNX,
    }
    return measure("minilm", paths, handle, batch=8, runs=40)


def markdown(rows: list[dict], record: dict) -> str:
    """The rows as one table per model, under the machine's line (``record``: ``runtime_record``)."""
    lines = [
        "# Latency (ONNX Runtime, CPU)",
        "",
        runtime_line(record),
        "",
        "Written by `python benchmarks/latency.py`. Each model's candidates ran interleaved in one run "
        f"({THREADS} threads); speed-up is fp32 median / candidate median.",
    ]
    for model in dict.fromkeys(row["model"] for row in rows):
        group = [row for row in rows if row["model"] == model]
        quality = "accuracy" if "accuracy" in group[0] else "min / mean cosine"
        lines += [
            "",
            f"## {model} (batch {group[0]['batch']}, {group[0]['runs']} runs)",
            "",
            f"| candidate | median ms | p10 ms | p90 ms | speed-up | {quality} | bytes | zip bytes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in group:
            value = (
                f"{100 * row['accuracy']:.2f}%"
                if "accuracy" in row
                else f"{row['min_cosine']:.4f} / {row['mean_cosine']:.4f}"
            )
            lines.append(
                f"| {row['name']} | {row['median_ms']:.2f} | {row['p10_ms']:.2f} | {row['p90_ms']:.2f} | "
                f"{row['speedup']:.2f}x | {value} | {row['bytes']:,} | {row['zip_bytes']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        rows = resnet(Path(folder))
        rows += minilm(Path(folder))
    record = runtime_record(THREADS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(jsonio.dumps({"runtime": record, "rows": rows}) + "\n", encoding="utf-8")
    (RESULTS / "latency.md").write_text(markdown(rows, record), encoding="utf-8")
    print(markdown(rows, record))


if __name__ == "__main__":
    main()
