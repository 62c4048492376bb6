"""Does the debugger's ranking pay? Keep its top-k layers (k <= 3) out of the damage, and measure.

Run from the repository root::

    python benchmarks/debug.py

Writes ``benchmarks/results/debug.md`` and ``.json``. Two cases:

- ``digits_resnet`` with every layer at 4 bits (ORT ``QInt4``, static QDQ): ``debug`` ranks the
  layers; the top k = 1, 2, 3 go back to 8 bits, one at a time, re-exported and measured (accuracy
  on the 450 test digits);
- ddddocr's ``common.onnx`` OCR (skipped without ``pip install --no-deps ddddocr==1.6.1``), every
  layer at 8 bits, on 20 rendered strings (``benchmarks/sensitivity.rendered_text``): the top k go
  float (``keep float``), measured as agreement of the CTC steps with fp32.

"Recovered" is the share of the drop (fp32 - int8) that the fix wins back; the goal is >= 0.5 at
some k <= 3.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sensitivity import rendered_text  # noqa: E402
from compress_core import load_model  # noqa: E402
from compress_core.debug.fix import Fix, fixed_plan, int8_outcome  # noqa: E402
from compress_core.debug.report import debug_model  # noqa: E402
from compress_core.models.handle import EvalData, ModelHandle  # noqa: E402
from compress_core.models.inputs import Inputs  # noqa: E402
from compress_core.ort.int8 import Int8Options  # noqa: E402
from compress_core.ort.runtime import runtime_line, runtime_record  # noqa: E402
from compress_core.pipeline import PreparedModel, compress  # noqa: E402
from compress_core.plan import Plan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOP_K = 3
OCR_SAMPLES = 20


def case(handle: ModelHandle, bits: int, action: str, samples: int) -> dict:
    """Debug the all-``bits`` plan of ``handle``, then apply ``action`` to the top 1..TOP_K layers."""
    prepared = PreparedModel(handle)
    names = [layer.name for layer in prepared.inventory]
    plan = Plan.from_dict({"version": 1, "default": {"bits": bits}})
    options = Int8Options()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = debug_model(compress(prepared, plan), Path(folder) / "debug", options, samples, speed=False)
        debug_s = time.perf_counter() - started
        fp32 = 1.0  # agreement / accuracy of fp32 against itself; accuracy against labels below
        key = result.quality["key"]
        if key == "accuracy":
            fp32 = float(prepared.baseline().metrics["accuracy"])
        steps = []
        fixed = plan
        for k, layer in enumerate(result.ranked_layers[:TOP_K], 1):
            fixed = fixed_plan(fixed, names, Fix(action, layer, 8))
            outcome = int8_outcome(compress(prepared, fixed), options, Path(folder) / f"top{k}.onnx")
            steps.append({"k": k, "layer": layer, "quality": outcome.quality, "bytes": outcome.bytes})
    before = result.quality["int8"]
    drop = fp32 - before
    for step in steps:
        step["recovered"] = None if drop <= 0 else (step["quality"] - before) / drop
    return {
        "model": handle.name,
        "plan": f"every layer {bits}-bit",
        "fix": action,
        "key": key,
        "fp32": fp32,
        "int8": before,
        "debug_seconds": debug_s,
        "samples": min(samples, len(handle.data)),
        "ranking": result.ranked_layers[:5],
        "top": [
            {key: row[key] for key in ("layer", "own_sqnr_db", "restore_gain_db", "restore_quality_gain")}
            for row in result.rows[:5]
        ],
        "steps": steps,
        "goal_met": any(step["recovered"] is not None and step["recovered"] >= 0.5 for step in steps),
    }


def ocr_handle() -> ModelHandle | None:
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        print("ddddocr is not installed: the OCR case is skipped", flush=True)
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    handle = load_model(folder / "common.onnx", inputs={"input1": (1, 64, 160)})
    data = Inputs.single(rendered_text(OCR_SAMPLES), "input1")
    return handle.replace(data=EvalData(data, None, f"{OCR_SAMPLES} rendered strings"))


def markdown(report: dict) -> str:
    lines = [
        "# Debug benchmark: does fixing the top-ranked layers pay?",
        "",
        runtime_line(report["runtime"]),
        "",
        f"`python benchmarks/debug.py`; the whole run took {report['total_seconds']:.0f} s (a shared machine: the "
        "debug times are not benchmarks of speed). Goal: fixing the top k <= 3 layers of `debug`'s ranking "
        "(restore gain) recovers at least half of the int8 drop. `digits_resnet` is measured on its 450 test "
        "digits; `common` is ddddocr's `common.onnx` OCR model on 20 rendered strings (width 160), its quality "
        "the agreement of the CTC steps' argmax with fp32. Each fix is applied on top of the previous ones and "
        "the model re-exported with the same int8 options (static QDQ, minmax, this CPU's int8 path).",
        "",
    ]
    for entry in report["cases"]:
        lines += [
            f"## {entry['model']}: {entry['plan']}, fix = {entry['fix']}",
            "",
            f"{entry['key']}: fp32 {100 * entry['fp32']:.2f}%, int8 {100 * entry['int8']:.2f}%; debug took "
            f"{entry['debug_seconds']:.1f} s on {entry['samples']} samples. Ranking: {', '.join(entry['ranking'])}.",
            "",
            f"| layer | own dB | restore gain dB | restore gain ({entry['key']}, points) |",
            "|---|---:|---:|---:|",
            *(
                f"| {row['layer']} | {row['own_sqnr_db']:.1f} | {row['restore_gain_db']:+.2f} | "
                f"{row['restore_quality_gain']:+.3g} |"
                for row in entry["top"]
            ),
            "",
            f"| top k | layer fixed | {entry['key']} | share of the drop recovered | int8 bytes |",
            "|---:|---|---:|---:|---:|",
        ]
        for step in entry["steps"]:
            share = "n/a" if step["recovered"] is None else f"{100 * step['recovered']:.0f}%"
            lines.append(
                f"| {step['k']} | {step['layer']} | {100 * step['quality']:.2f}% | {share} | {step['bytes']:,} |"
            )
        lines += ["", f"Goal met: {'yes' if entry['goal_met'] else 'no'}.", ""]
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    cases = [case(load_model("digits_resnet"), 4, "bits", 450)]
    print(cases[-1], flush=True)
    ocr = ocr_handle()
    if ocr is not None:
        cases.append(case(ocr, 8, "float", OCR_SAMPLES))
        print(cases[-1], flush=True)
    report = {"runtime": runtime_record(None), "cases": cases, "total_seconds": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "debug.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "debug.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
