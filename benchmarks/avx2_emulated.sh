#!/usr/bin/env bash
# ONNX Runtime's real AVX2 int8 kernels (no AVX-512, no VNNI) on any x86-64 Linux host, under qemu-user's
# TCG emulation: proves which kernels run (a MatMulInteger whose u8 x s8 pair sums leave int16), measures
# MiniLM's int8 paths, then runs the CPU-dependent int8 tests there. Findings and figures:
# benchmarks/results/avx2_emulated.md. Emulation is 10-50x slower than the host, and its timings mean
# nothing: this is about which kernels run and what accuracy they give. Not part of .ci/run.
#
# Run as root (it may `apt-get install qemu-user`, and bind-mounts a /proc/cpuinfo in a private mount
# namespace, see below):
#   benchmarks/avx2_emulated.sh                               # checks, MiniLM paths, the test groups below
#   benchmarks/avx2_emulated.sh tests/test_cpu.py -k bench    # checks, then only these pytest arguments
# Environment: AVX2_CPU (qemu -cpu model), VENV (a venv with the project's [test,minilm] extras),
# REV (a commit: test a `git archive` of it, safe while others edit the checkout), else SRC (the tree to
# test; default this checkout), WORK (scratch and logs; default /tmp/avx2_emulated),
# CORE (the one core to run on; default 0), GROUP_TIMEOUT (seconds per pytest run; default 5400).
#
# Why the wrapper and the mount namespace: qemu-user emulates CPUID, but /proc/cpuinfo is the host's
# file, and compress_core.ort.cpu reads that first; the emulated process would be told it has VNNI while
# ORT's kernels (which read CPUID) run without. A /proc/cpuinfo whose model and flags are the emulated
# CPU's is bind-mounted in a private mount namespace, seen by the emulated processes only. Processes a test
# starts (sys.executable) would run natively: the interpreter is a wrapper that starts qemu again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-${VIRTUAL_ENV:-/work/venv}}
WORK=${WORK:-/tmp/avx2_emulated}
SRC=${SRC:-$ROOT}
COMMIT=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo 'no commit')
if [ -n "${REV:-}" ]; then
    SRC=$WORK/tree
    COMMIT=$(git -C "$ROOT" rev-parse --short "$REV")
    rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$ROOT" archive "$COMMIT" | tar -x -C "$SRC"
fi
CORE=${CORE:-0}
GROUP_TIMEOUT=${GROUP_TIMEOUT:-5400}
# Haswell without TSX, and without the features TCG cannot emulate (qemu would warn on stderr at every
# start, which tests reading a CLI's stderr would see): AVX, AVX2, FMA, F16C, BMI1/2; no AVX-512, no VNNI.
AVX2_CPU=${AVX2_CPU:-Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid}
LOG=$WORK/avx2_emulated.log

[ "$(id -u)" = 0 ] || { echo "avx2_emulated.sh: run as root (apt-get, unshare --mount, mount --bind)" >&2; exit 2; }
command -v qemu-x86_64 >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }
mkdir -p "$WORK/venv/bin"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

# 1. An interpreter that runs under qemu: the venv's python binary, told (qemu -0) that it is this wrapper,
#    so sys.executable, and the processes it starts, are emulated too; the venv's pyvenv.cfg and lib/.
REAL_PY=$("$VENV/bin/python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
cp "$VENV/pyvenv.cfg" "$WORK/venv/pyvenv.cfg"
ln -sfn "$VENV/lib" "$WORK/venv/lib"
PY=$WORK/venv/bin/python
cat >"$PY" <<EOF
#!/bin/sh
exec qemu-x86_64 -cpu "$AVX2_CPU" -0 "\$0" "$REAL_PY" "\$@"
EOF
chmod +x "$PY"

# 2. The emulated CPU as CPUID shows it (py-cpuinfo's CPUID reader), written as a /proc/cpuinfo text: the
#    host's, with its vendor, family, model, name and flags replaced.
taskset -c "$CORE" "$PY" -c '
import json, cpuinfo.cpuinfo as c
print(json.dumps(c._get_cpu_info_from_cpuid()))' >"$WORK/cpuid.json"
"$VENV/bin/python" - "$WORK/cpuid.json" "$WORK/cpuinfo" <<'EOF'
import json
import sys

info = json.load(open(sys.argv[1], encoding="utf-8"))
fields = {
    "vendor_id": info["vendor_id_raw"],
    "cpu family": info["family"],
    "model": info["model"],
    "model name": info["brand_raw"],
    "stepping": info["stepping"],
    "flags": " ".join(sorted(info["flags"])),
}
lines = []
for line in open("/proc/cpuinfo", encoding="utf-8"):
    key = line.split(":")[0].strip()
    lines.append(f"{key}\t: {fields[key]}\n" if key in fields and ":" in line else line)
open(sys.argv[2], "w", encoding="utf-8").write("".join(lines))
EOF

# ONEDNN_MAX_CPU_ISA=AVX: torch's oneDNN LSTM kernels JIT-compiled for AVX2 crash qemu 7.2's TCG (SIGSEGV in
# digits_lstm's forward; it runs natively, and under emulation with torch.backends.mkldnn off or this cap).
# It caps torch's oneDNN operators only; ONNX Runtime's CPU kernels do not use oneDNN.
emulated() {  # emulated ARGS...: the wrapper python on one core, in a mount namespace with the emulated cpuinfo
    timeout "$GROUP_TIMEOUT" unshare --mount --propagation private sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' \
        sh "$WORK/cpuinfo" taskset -c "$CORE" env ONEDNN_MAX_CPU_ISA=AVX PYTHONPATH="$SRC" "$PY" "$@"
}

echo "# avx2_emulated.sh $(date -u '+%Y-%m-%d %H:%M UTC'): qemu $(qemu-x86_64 --version | head -1 | cut -d' ' -f3)," \
    "-cpu $AVX2_CPU; tree $SRC ($COMMIT)"
echo "## The emulated CPU"
echo "CPUID under emulation: $("$VENV/bin/python" -c '
import json, sys
info = json.load(open(sys.argv[1]))
print(info["brand_raw"] + ": " + " ".join(sorted(info["flags"])))' "$WORK/cpuid.json")"
DETECT='
import subprocess, sys
import torch
from compress_core.ort.cpu import cpu_features
from compress_core.ort.int8_path import rule_for
child = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(f"compress_core: {cpu_features().summary()} (source {cpu_features().source}); rule {rule_for(cpu_features())};"
      f" torch kernels: {torch.backends.cpu.get_cpu_capability()}, in a child process: {child}")'
echo "- native:                           $(cd "$SRC" && taskset -c "$CORE" "$VENV/bin/python" -c "$DETECT")"
echo "- emulated, host /proc/cpuinfo:     $(cd "$SRC" && taskset -c "$CORE" env PYTHONPATH="$SRC" "$PY" -c "$DETECT")"
echo "- emulated, emulated /proc/cpuinfo: $(cd "$SRC" && emulated -c "$DETECT")"

# 3. Which kernels ORT runs: u8 x s8 products whose pairs leave int16, against the exact sums and against
#    compress_core.ort.saturation's numpy model of the AVX2 kernels; U8U8 (exact) beside them.
cat >"$WORK/proof.py" <<'EOF'
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compress_core.ort.saturation import exact_sums, pair_sums

ONNX_TYPE = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def matmul_integer(a: np.ndarray, b: np.ndarray, b_constant: bool) -> np.ndarray:
    """Y = A @ B by ORT's MatMulInteger (one thread), B an initializer (prepacked) or a graph input."""
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", b.shape[0]])]
    if not b_constant:
        inputs.append(helper.make_tensor_value_info("B", ONNX_TYPE[b.dtype], list(b.shape)))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "proof",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", b.shape[1]])],
        [numpy_helper.from_array(b, "B")] if b_constant else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"A": a} if b_constant else {"A": a, "B": b})[0].astype(np.int64)


def report(name: str, a: np.ndarray, b: np.ndarray, b_constant: bool = True) -> None:
    got, exact = matmul_integer(a, b, b_constant), exact_sums(a, b)
    line = (
        f"- {name}: A uint8 {a.shape} x B {b.dtype} {b.shape} ({'initializer' if b_constant else 'input'}): "
        f"ORT Y[0,0] = {got[0, 0]:,}, exact {exact[0, 0]:,}"
    )
    if b.dtype == np.int8:
        model, clipped = pair_sums(a, b)
        line += (
            f", 16-bit pair sums {model[0, 0]:,}; ORT differs from exact on {int((got != exact).sum())}/{got.size} "
            f"outputs (max |ORT - exact| {int(np.abs(got - exact).max()):,}); ORT equals saturation.pair_sums "
            f"on {int((got == model).sum())}/{got.size} outputs ({clipped:,} pairs clipped)"
        )
    else:
        line += f"; ORT differs from exact on {int((got != exact).sum())}/{got.size} outputs"
    print(line)


print(f"onnxruntime {ort.__version__}")
rng = np.random.default_rng(0)
a_random = rng.integers(0, 256, (32, 384), dtype=np.uint8)
s8_random = rng.integers(-128, 128, (384, 64), dtype=np.int8)
report("U8S8 all 255 x all 127, K=64", np.full((4, 64), 255, np.uint8), np.full((64, 8), 127, np.int8))
report("U8S8 random, K=384", a_random, s8_random)
report("U8S8 random, K=384, one row (M=1)", a_random[:1], s8_random)
report("U8S8 random, K=384", a_random, s8_random, b_constant=False)
report("U8U8 all 255 x all 255, K=64", np.full((4, 64), 255, np.uint8), np.full((64, 8), 255, np.uint8))
report("U8U8 random, K=384", a_random, rng.integers(0, 256, (384, 64), dtype=np.uint8))
EOF
echo "## MatMulInteger, native"
(cd "$SRC" && taskset -c "$CORE" "$VENV/bin/python" "$WORK/proof.py")
echo "## MatMulInteger, emulated"
(cd "$SRC" && emulated "$WORK/proof.py")

run_group() {  # run_group NAME PYTEST-ARGS...: one pytest run under emulation, with its outcome and time
    local name=$1 start rc
    shift
    echo "## pytest under emulation: $name ($*)"
    start=$(date +%s)
    rc=0
    (cd "$SRC" && emulated -m pytest -p no:cacheprovider -s -v --durations=5 "$@") || rc=$?
    echo "## $name: exit code $rc$([ "$rc" = 124 ] && echo ' (timed out)'), $(($(date +%s) - start)) s"
    [ "$rc" = 0 ] || FAILED=1
}
FAILED=0

if [ $# -gt 0 ]; then
    run_group "$*" "$@"
    exit "$FAILED"
fi

# 4. MiniLM's int8 paths under emulation: the chosen one with its saturation measurement, U8S8 and U8U8
#    forced, and ORT's plain quantize_dynamic (the issue measured 0.9482 / 0.9646 on a real AVX2-only CPU).
cat >"$WORK/minilm_paths.py" <<'EOF'
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic

import compress_core as cc
from compress_core.ort.export import to_onnx
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.pipeline import compress
from compress_core.plan import Plan

start = time.time()
handle = cc.load_model("minilm")
compressed = compress(handle, Plan.load(Path(sys.argv[1]) / "sample_models" / "recipes" / "minilm_int8.yaml")).compressed
inputs = handle.data.inputs
reference = handle.run(inputs)


def cosine(path: Path) -> str:
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs.feed())[0]
    cos = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
    return f"min / mean cosine {cos.min():.4f} / {cos.mean():.4f}"


with tempfile.TemporaryDirectory() as folder:
    scratch = Path(folder)
    chosen = quantize_int8(compressed, scratch / "chosen.onnx", Int8Options(dynamic=True))
    print(f"- chosen: {chosen.choice.describe()}: {cosine(chosen.path)}")
    print("".join(f"  note: {note}\n" for note in chosen.notes if note.startswith("U8S8")), end="")
    for row in chosen.saturation[:4]:
        print(
            f"  U8S8 saturation, {row.layer or row.node}: output moves by {row.relative_error:.2%}, "
            f"{row.saturated_pairs:.3%} of pairs clipped, {row.changed_outputs:.1%} of outputs changed"
        )
    for weights in ("int8", "uint8"):
        forced = quantize_int8(compressed, scratch / f"{weights}.onnx", Int8Options(dynamic=True, weights=weights))
        print(f"- weights={weights} set by the user ({forced.choice.kernel}): {cosine(forced.path)}")
    fp32, plain = scratch / "fp32.onnx", scratch / "plain.onnx"
    onnx.save(to_onnx(handle), fp32)
    quantize_dynamic(fp32, plain)
    print(f"- ORT plain quantize_dynamic (U8S8 per-tensor): {cosine(plain)}")
print(f"({time.time() - start:.0f} s)")
EOF
for where in native emulated; do
    echo "## MiniLM int8 paths, $where"
    start=$(date +%s)
    if [ $where = native ]; then
        (cd "$SRC" && taskset -c "$CORE" "$VENV/bin/python" "$WORK/minilm_paths.py" "$SRC") >"$WORK/paths.out" 2>&1 || rc=$?
    else
        (cd "$SRC" && emulated "$WORK/minilm_paths.py" "$SRC") >"$WORK/paths.out" 2>&1 || rc=$?
    fi
    grep -v 'pre-processing' "$WORK/paths.out" || true
    echo "(exit code ${rc:-0}, $(($(date +%s) - start)) s)"
    unset rc
done

# 5. The CPU-dependent tests, the MiniLM ones (0.99 cosine bound) first, then the other int8 export tests.
run_group "MiniLM" tests/test_int8.py tests/test_embeddings.py -k minilm
run_group "int8 path, CPU, conv channels" tests/test_int8_path.py tests/test_cpu.py tests/test_conv_channels.py
run_group "smooth" tests/test_smooth.py
run_group "int8, the rest" tests/test_int8.py -k "not minilm"
run_group "embeddings, 4-bit, export, quantized models" tests/test_embeddings.py tests/test_nbits.py tests/test_export.py \
    tests/test_quantized_models.py -k "not minilm"
echo "# done $(date -u '+%Y-%m-%d %H:%M UTC'); log: $LOG"
exit "$FAILED"
