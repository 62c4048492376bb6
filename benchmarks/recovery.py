"""Recovery benchmark: how much of an aggressive plan's accuracy drop distillation wins back, and how fast.

On ``digits_cnn`` with 3-bit weights and 70 % unstructured pruning in every layer, fine-tune with the
default settings of ``compress_core.analysis.recover.finetune`` under a budget of 60 s of CPU time (the run is
cancelled when the budget is spent). Writes ``benchmarks/results/recovery.md`` and ``recovery.json``.

    python benchmarks/recovery.py
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from compress_core import jsonio, load_model
from compress_core.analysis.metrics import evaluate
from compress_core.analysis.recover import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_TEMPERATURE, finetune
from compress_core.atomic import atomic_write_text
from compress_core.ort.runtime import runtime_line, runtime_record
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan

MODEL = "digits_cnn"
RECIPE = "{version: 1, default: {bits: 3, prune: {ratio: 0.7}}}"
EPOCHS = 10
CPU_BUDGET_S = 60.0
RESULTS = Path(__file__).resolve().parent / "results"


def run() -> dict[str, Any]:
    """Compress, fine-tune within the CPU budget, and return the measured figures."""
    original = load_model(MODEL)
    compressed = apply_plan(original, Plan.from_text(RECIPE))
    before = evaluate(original, compressed, with_zip=False)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    tuned, history = finetune(
        original, compressed, epochs=EPOCHS, cancel=lambda: time.process_time() - cpu_start > CPU_BUDGET_S
    )
    cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
    after = evaluate(original, tuned, with_zip=False)
    accuracy = {
        "original": before["original"]["accuracy"],
        "compressed": before["compressed"]["accuracy"],
        "fine_tuned": after["compressed"]["accuracy"],
    }
    drop = accuracy["original"] - accuracy["compressed"]
    return {
        "runtime": runtime_record(torch.get_num_threads(), threads_of="torch"),
        "model": MODEL,
        "recipe": RECIPE,
        "settings": {
            "epochs": EPOCHS,
            "lr": DEFAULT_LR,
            "temperature": DEFAULT_TEMPERATURE,
            "alpha": DEFAULT_ALPHA,
            "batch_size": DEFAULT_BATCH_SIZE,
        },
        "epochs_completed": len(history),
        "loss_history": history,
        "accuracy": accuracy,
        "drop_points": 100 * drop,
        "recovered_fraction": (accuracy["fine_tuned"] - accuracy["compressed"]) / drop,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "cpu_budget_s": CPU_BUDGET_S,
        "nonzero_params": {
            "compressed": before["compressed"]["nonzero_params"],
            "fine_tuned": after["compressed"]["nonzero_params"],
        },
        "plan_bytes": {
            "compressed": before["compressed"]["plan_bytes"],
            "fine_tuned": after["compressed"]["plan_bytes"],
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a short markdown report."""
    accuracy = result["accuracy"]
    settings = ", ".join(f"{key} {value}" for key, value in result["settings"].items())
    losses = ", ".join(f"{loss:.3f}" for loss in result["loss_history"])
    return "\n".join(
        [
            "# Recovery by distillation",
            "",
            runtime_line(result["runtime"]),
            "",
            f"`{result['model']}` with `{result['recipe']}`; `finetune` settings: {settings}; budget {result['cpu_budget_s']:.0f} s of CPU time.",
            "Produced by `python benchmarks/recovery.py` (test-split accuracy; training on the training split).",
            "",
            "| model | test accuracy |",
            "|---|---|",
            f"| original | {100 * accuracy['original']:.2f}% |",
            f"| compressed | {100 * accuracy['compressed']:.2f}% |",
            f"| fine-tuned | {100 * accuracy['fine_tuned']:.2f}% |",
            "",
            f"- Drop from compression: {result['drop_points']:.1f} points; recovered: {100 * result['recovered_fraction']:.0f}% of it.",
            f"- Time: {result['cpu_s']:.1f} s CPU (process time, all threads), {result['wall_s']:.1f} s wall, "
            f"{result['epochs_completed']} epochs, {result['machine']['threads']} torch threads on a shared machine.",
            f"- Loss per epoch: {losses}.",
            f"- Non-zero parameters: {result['nonzero_params']['compressed']:,} before and {result['nonzero_params']['fine_tuned']:,} after "
            f"(masks held); size at the plan's bit widths: {result['plan_bytes']['fine_tuned']:,} bytes (unchanged).",
            "",
        ]
    )


def main() -> None:
    """Run the benchmark and write the results files."""
    result = run()
    atomic_write_text(RESULTS / "recovery.json", jsonio.dumps(result))
    atomic_write_text(RESULTS / "recovery.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
