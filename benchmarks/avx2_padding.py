"""Padded Conv inputs (``ort.conv_channels``) on ONNX Runtime's real AVX2 int8 kernels, for
``benchmarks/avx2_emulated.sh``, which runs the last two steps under qemu-user emulating an AVX2-only CPU.

    python benchmarks/avx2_padding.py build FOLDER    # natively: U8S8 files padded and not, and their outputs
    python benchmarks/avx2_padding.py compare FOLDER  # emulated: each file's output against the native one
    python benchmarks/avx2_padding.py export          # emulated: the default int8 path of this CPU, end to end

On a CPU with VNNI the native outputs are exact integer sums. ``compare`` shows how far the AVX2 U8S8
kernels, whose 16-bit pair sums can saturate, move each file's output: the unpadded one-channel stem
pairs two pixels, the padded one a pixel and a zero. ``export`` quantizes with the path the rule picks
for the detected CPU (``avx2-no-vnni`` under emulation: padding, saturation measured, U8U8 where it
saturates) and reports the accuracy ORT gives on the emulated CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = ("digits_cnn", "digits_resnet")
SAMPLES = 64
ALL_8BIT = "version: 1\ndefault: {bits: 8}\n"


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def build(folder: Path) -> None:
    import compress_core as cc
    from compress_core.ort.int8 import Int8Options, quantize_int8
    from compress_core.pipeline import compress
    from compress_core.plan import Plan

    folder.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        handle = cc.load_model(name)
        compressed = compress(handle, Plan.from_text(ALL_8BIT)).compressed
        feed = handle.data.inputs[:SAMPLES].feed()
        np.savez(folder / f"{name}_inputs.npz", **feed)
        for padded in (False, True):
            options = Int8Options(calibration_samples=32, weights="int8", pad_conv_channels=padded)
            written = quantize_int8(compressed, folder / f"{name}_padded{padded}.onnx", options).path
            np.save(folder / f"{name}_padded{padded}_native.npy", _run(written, feed))
    print(f"built in {folder}")


def compare(folder: Path) -> None:
    for name in MODELS:
        feed = dict(np.load(folder / f"{name}_inputs.npz"))
        for padded in (False, True):
            native = np.load(folder / f"{name}_padded{padded}_native.npy")
            here = _run(folder / f"{name}_padded{padded}.onnx", feed)
            moved = float(np.linalg.norm(here - native) / np.linalg.norm(native))
            agree = float((here.argmax(1) == native.argmax(1)).mean())
            print(
                f"- {name}, U8S8, Conv inputs {'padded' if padded else 'not padded'}: output moves by {moved:.2%} "
                f"against the native run, top-1 agreement {agree:.2%} ({SAMPLES} samples)"
            )


def export() -> None:
    import compress_core as cc
    from compress_core.ort.cpu import cpu_features
    from compress_core.ort.int8 import Int8Options, quantize_int8
    from compress_core.pipeline import compress
    from compress_core.plan import Plan

    print(f"- detected: {cpu_features().summary()}")
    for name in MODELS:
        start = time.perf_counter()
        handle = cc.load_model(name)
        compressed = compress(handle, Plan.from_text(ALL_8BIT)).compressed
        scratch = Path(f"/tmp/avx2_padding_{name}.onnx")
        result = quantize_int8(compressed, scratch, Int8Options())
        accuracy = (_run(result.path, handle.data.inputs.feed()).argmax(1) == handle.data.labels).mean()
        worst = ", ".join(f"{row.layer} {row.relative_error:.2%}" for row in result.saturation[:3])
        padded = ", ".join(f"{conv.layer} {conv.channels} -> {conv.padded}" for conv in result.padded) or "none"
        print(f"- {name}: {result.choice.describe() if result.choice else 'no path'}")
        print(f"  padded: {padded}; saturation measured, largest: {worst}")
        print(f"  accuracy in ORT on this CPU: {accuracy:.2%} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "build" and len(sys.argv) == 3:
        build(Path(sys.argv[2]))
    elif command == "compare" and len(sys.argv) == 3:
        compare(Path(sys.argv[2]))
    elif command == "export" and len(sys.argv) == 2:
        export()
    else:
        sys.exit(__doc__)
