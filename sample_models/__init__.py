"""Small pretrained sample models on scikit-learn's *digits* data set.

Five architectures of different kinds (CNN, MLP, transformer, LSTM, ResNet), all
trained on the same fixed split of the 1,797 8x8 digit images, so that the
Compression Explorer can be tried offline on real, accurate models.

>>> from sample_models import load_sample, digits_split
>>> model = load_sample("digits_cnn")
>>> x_train, y_train, x_test, y_test = digits_split("digits_cnn")

Weights live in ``sample_models/weights/<name>.pt`` and are produced by
``python -m sample_models.train``; test accuracies are in ``accuracies.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .architectures import (
    DigitsCNN,
    DigitsLSTM,
    DigitsMLP,
    DigitsResNet,
    DigitsTransformer,
)
from .data import DATA_SHAPES, digits_split

__all__ = [
    "SAMPLE_NAMES",
    "WEIGHTS_DIR",
    "build_model",
    "load_sample",
    "input_shape",
    "digits_split",
    "weights_path",
]

SAMPLE_NAMES: tuple[str, ...] = (
    "digits_cnn",
    "digits_mlp",
    "digits_transformer",
    "digits_lstm",
    "digits_resnet",
)

#: Directory holding the shipped ``<name>.pt`` state dicts.
WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "digits_mlp": DigitsMLP,
    "digits_transformer": DigitsTransformer,
    "digits_lstm": DigitsLSTM,
    "digits_resnet": DigitsResNet,
}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"Unknown sample model {name!r}; known samples: {', '.join(SAMPLE_NAMES)}")


def build_model(name: str) -> nn.Module:
    """Return a freshly initialised (untrained) model for sample ``name``.

    Raises:
        ValueError: if ``name`` is not one of :data:`SAMPLE_NAMES`.
    """
    _check_name(name)
    return _BUILDERS[name]()


def weights_path(name: str) -> Path:
    """Return the path of the shipped state dict for sample ``name``.

    Raises:
        ValueError: if ``name`` is not one of :data:`SAMPLE_NAMES`.
    """
    _check_name(name)
    return WEIGHTS_DIR / f"{name}.pt"


def load_sample(name: str) -> nn.Module:
    """Return the pretrained sample model ``name`` in eval mode (on CPU).

    Weights are read from ``sample_models/weights/<name>.pt`` with
    ``torch.load(..., weights_only=True)``. Each call returns a new, independent
    model, so callers may modify it freely.

    Raises:
        ValueError: if ``name`` is not one of :data:`SAMPLE_NAMES`.
        FileNotFoundError: if the weights file is missing (run
            ``python -m sample_models.train``).
    """
    model = build_model(name)
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights for sample {name!r} not found at {path}; run `python -m sample_models.train` to create them"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def input_shape(name: str) -> tuple[int, ...]:
    """Return the input shape of sample ``name`` without the batch dimension.

    ``digits_cnn`` (1, 8, 8); ``digits_mlp`` (64,); ``digits_transformer`` and
    ``digits_lstm`` (8, 8); ``digits_resnet`` (1, 32, 32).

    Raises:
        ValueError: if ``name`` is not one of :data:`SAMPLE_NAMES`.
    """
    _check_name(name)
    return DATA_SHAPES[name]
