"""Plan -> accuracy (or fidelity), sizes and MACs for every sample; writes benchmarks/results/tradeoff.{md,json}.

Run: python benchmarks/tradeoff.py [SAMPLE ...]   (minilm is included when it is installed)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from compress_core import CompressError, jsonio, load_model
from compress_core.analysis.metrics import evaluate
from compress_core.models.samples import sample_names
from compress_core.ort.runtime import runtime_line, runtime_record
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan

RESULTS = Path(__file__).resolve().parent / "results"
COMMON_PLANS = {
    "uniform 8-bit per-channel": "{version: 1, default: {bits: 8}}",
    "uniform 4-bit per-channel": "{version: 1, default: {bits: 4}}",
    "uniform 4-bit per-tensor": "{version: 1, default: {bits: 4, granularity: tensor}}",
    "50% unstructured + 8-bit": "{version: 1, default: {bits: 8, prune: {ratio: 0.5}}}",
    "50% structured channels": "{version: 1, default: {prune: {ratio: 0.5, kind: structured}}}",
    "half rank": "{version: 1, default: {rank: 0.5}}",
}
# Hand-tuned for digits_cnn: 8 bits on the small first and last layers, 4 bits elsewhere, and the
# two largest layers pruned.
MIXED_CNN = (
    "{version: 1, layers: {conv1: {bits: 8}, conv2: {bits: 4}, conv3: {bits: 4, prune: {ratio: 0.5}}, "
    "fc1: {bits: 4, prune: {ratio: 0.6}}, head: {bits: 8}}}"
)


def plans_for(name: str) -> dict[str, str]:
    """The plans measured on one sample."""
    plans = dict(COMMON_PLANS)
    if name == "digits_cnn":
        plans["hand-tuned mixed"] = MIXED_CNN
    return plans


def measure(name: str) -> list[dict]:
    """One row per plan; a plan the model cannot take is recorded with its error message."""
    original = load_model(name)
    rows = []
    base = evaluate(original, with_zip=True)["original"]
    rows.append({"sample": name, "plan": "fp32 original", **base, "size_ratio": 1.0, "seconds": 0.0})
    for label, text in plans_for(name).items():
        start = time.perf_counter()
        try:
            compressed = apply_plan(original, Plan.from_text(text))
        except CompressError as exc:
            rows.append({"sample": name, "plan": label, "error": str(exc)})
            continue
        metrics = evaluate(original, compressed)["compressed"]
        metrics.pop("layer_sqnr")
        rows.append(
            {
                "sample": name,
                "plan": label,
                **metrics,
                "size_ratio": base["float_bytes"] / metrics["plan_bytes"],
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def markdown(rows: list[dict], record: dict) -> str:
    """The rows as one markdown table per sample, under the machine's line (``record``: ``runtime_record``)."""
    lines = [
        "# Trade-off: plan -> quality, size, compute",
        "",
        runtime_line(record),
        "",
        "Made by `python benchmarks/tradeoff.py`.",
        "",
    ]
    for sample in dict.fromkeys(row["sample"] for row in rows):
        lines += [
            f"## {sample}",
            "",
            "| plan | accuracy | agreement | cosine | plan bytes | x smaller | zip bytes | params | MACs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r["sample"] == sample):
            if "error" in row:
                lines.append(f"| {row['plan']} | not applicable: {row['error']} |||||||| ")
                continue
            accuracy = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
            agreement = "n/a" if row["agreement"] is None else f"{100 * row['agreement']:.2f}%"
            lines.append(
                f"| {row['plan']} | {accuracy} | {agreement} | {row['cosine']:.4f} | {row['plan_bytes']:,} | "
                f"{row['size_ratio']:.2f} | {row['zip_bytes']:,} | {row['params']:,} | {row['macs']:,} |"
            )
        notes = sorted({note for row in rows if row["sample"] == sample for note in row.get("notes", [])})
        if notes:
            lines += ["", "Notes:", *(f"- {note}" for note in notes)]
        lines.append("")
    return "\n".join(lines)


def main(names: list[str]) -> None:
    rows = []
    for name in names:
        try:
            rows += measure(name)
        except CompressError as exc:
            print(f"skipped {name}: {exc}")
    record = runtime_record(torch.get_num_threads(), threads_of="torch")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tradeoff.json").write_text(jsonio.dumps({"runtime": record, "rows": rows}))
    (RESULTS / "tradeoff.md").write_text(markdown(rows, record))
    print(markdown(rows, record))


if __name__ == "__main__":
    main(sys.argv[1:] or list(sample_names()))
