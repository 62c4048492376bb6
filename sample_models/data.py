"""Data loading for the sample models: scikit-learn's offline *digits* set.

The 1,797 labelled 8x8 images ship with scikit-learn, so nothing is downloaded.
Every sample uses the same fixed stratified split (75 % train / 25 % test,
``random_state=0``); only the array *shape* differs per sample.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

__all__ = ["digits_split", "DATA_SHAPES"]

#: Per-sample input shape (without the batch dimension).
DATA_SHAPES: dict[str, tuple[int, ...]] = {
    "digits_cnn": (1, 8, 8),
    "digits_mlp": (64,),
    "digits_transformer": (8, 8),
    "digits_lstm": (8, 8),
    "digits_resnet": (1, 32, 32),
}


def _check_name(name: str) -> None:
    if name not in DATA_SHAPES:
        known = ", ".join(DATA_SHAPES)
        raise ValueError(f"Unknown sample model {name!r}; known samples: {known}")


@lru_cache(maxsize=1)
def _base_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load digits once and split it; images as (N, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _upsample32(x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N,1,8,8)
    up = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    return up.numpy().astype(np.float32)


@cache
def _shaped_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_tr, y_tr, x_te, y_te = _base_split()
    if name == "digits_cnn":
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    elif name == "digits_mlp":
        x_tr, x_te = x_tr.reshape(-1, 64), x_te.reshape(-1, 64)
    elif name == "digits_resnet":
        x_tr, x_te = _upsample32(x_tr), _upsample32(x_te)
    # digits_transformer / digits_lstm: (N, 8, 8) -- 8 rows as 8 tokens of 8 features.
    out = []
    for a in (x_tr, y_tr, x_te, y_te):
        a = np.ascontiguousarray(a).copy()
        a.setflags(write=False)
        out.append(a)
    return tuple(out)  # type: ignore[return-value]


def digits_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)`` for sample ``name``.

    Pixels are scaled to [0, 1] (float32), labels are int64. The split is
    ``train_test_split(test_size=0.25, random_state=0, stratify=y)`` (1,347 train /
    450 test). Shapes: ``digits_cnn`` (N,1,8,8); ``digits_mlp`` (N,64);
    ``digits_transformer`` and ``digits_lstm`` (N,8,8); ``digits_resnet``
    (N,1,32,32), bilinearly upsampled (``align_corners=False``) in the data.

    The arrays are cached and returned **read-only**; copy them
    (``np.array(x)``) before modifying in place. ``torch.from_numpy`` on them
    warns about non-writable arrays, so use ``torch.tensor(x)`` or copy first.

    Raises:
        ValueError: if ``name`` is not a known sample.
    """
    _check_name(name)
    return _shaped_split(name)
