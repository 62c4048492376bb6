"""Deterministic training of the sample models on scikit-learn's digits.

Usage::

    python -m sample_models.train                 # all five samples
    python -m sample_models.train digits_cnn ...  # only the named ones

For each sample: seeds ``torch`` and ``numpy`` with :data:`SEED` (re-seeded per
sample, so training one sample alone gives the same weights as training all),
enables ``torch.use_deterministic_algorithms(True)``, uses **2 CPU threads**
(``torch.set_num_threads(2)``; bit-identical weights are only expected for the
same thread count, torch version and CPU), trains with Adam (+ cosine learning
rate decay) for a fixed number of epochs on the *training* split only, then

* writes the state dict to ``sample_models/weights/<name>.pt``, and
* measures accuracy on the held-out test split and updates
  ``sample_models/accuracies.json`` with
  ``{name: {"test_accuracy": float, "params": int, "epochs": int}}``.

Training all five takes about two to three minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import SAMPLE_NAMES, WEIGHTS_DIR, build_model, digits_split

SEED = 0
NUM_THREADS = 2
ACCURACIES_PATH = Path(__file__).resolve().parent / "accuracies.json"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters for one sample."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0


CONFIGS: dict[str, TrainConfig] = {
    "digits_cnn": TrainConfig(epochs=30, lr=3e-3),
    "digits_mlp": TrainConfig(epochs=60, lr=3e-3),
    "digits_transformer": TrainConfig(epochs=100, lr=3e-3),
    "digits_lstm": TrainConfig(epochs=80, lr=5e-3),
    "digits_resnet": TrainConfig(epochs=12, lr=3e-3),
}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Return the accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    xt, yt = torch.tensor(x), torch.tensor(y)
    correct = 0
    for i in range(0, len(xt), batch_size):
        correct += (model(xt[i : i + batch_size]).argmax(1) == yt[i : i + batch_size]).sum().item()
    return correct / len(xt)


def train_one(name: str, verbose: bool = True) -> dict[str, float | int]:
    """Train sample ``name`` from scratch, save its weights and return its metrics."""
    cfg = CONFIGS[name]
    _seed_everything(SEED)
    model = build_model(name)
    x_tr, y_tr, x_te, y_te = digits_split(name)
    xt, yt = torch.tensor(x_tr), torch.tensor(y_tr)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(xt) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)

    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose and (epoch + 1) % max(1, cfg.epochs // 5) == 0:
            print(f"  {name} epoch {epoch + 1}/{cfg.epochs} train loss {total / len(xt):.4f}")
    elapsed = time.perf_counter() - t0

    model.eval()
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, WEIGHTS_DIR / f"{name}.pt")
    acc = evaluate(model, x_te, y_te)
    params = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{name}: test accuracy {acc:.4f}, {params} params, {elapsed:.1f} s")
    return {"test_accuracy": round(acc, 6), "params": params, "epochs": cfg.epochs}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: train the named samples (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"samples to train (default: all of {', '.join(SAMPLE_NAMES)})",
    )
    args = parser.parse_args(argv)
    names = args.names or list(SAMPLE_NAMES)
    unknown = [n for n in names if n not in SAMPLE_NAMES]
    if unknown:
        parser.error(f"unknown sample(s) {', '.join(unknown)}; known: {', '.join(SAMPLE_NAMES)}")

    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)

    results: dict[str, dict[str, float | int]] = {}
    if ACCURACIES_PATH.is_file():
        results = json.loads(ACCURACIES_PATH.read_text())
    t0 = time.perf_counter()
    for name in names:
        results[name] = train_one(name)
    ordered = {n: results[n] for n in SAMPLE_NAMES if n in results}
    ACCURACIES_PATH.write_text(json.dumps(ordered, indent=2) + "\n")
    print(f"total training time {time.perf_counter() - t0:.1f} s; wrote {ACCURACIES_PATH}")


if __name__ == "__main__":
    main()
