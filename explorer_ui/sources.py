"""Where a model comes from: a sample name or an uploaded file, as plain, hashable data.

Uploaded bytes are written under a temporary folder named after their SHA-256, so the same upload
maps to the same path (and the same cached model) and two uploads with one name never collide.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compress_core import CompressError
from compress_core.samples import sample_names

UPLOAD_DIR = Path(tempfile.gettempdir()) / "compress-explorer-uploads"
MODEL_EXTENSIONS = ("onnx", "pt2", "pt", "pth", "bin", "ts", "torchscript", "jit")
DATA_EXTENSIONS = ("npz",)
DEFAULT_SAMPLE = "digits_cnn"
SHAPE_SEPARATORS = re.compile(r"[\s,x×]+")


@dataclass(frozen=True)
class ModelSource:
    """The arguments of ``compress_core.load_model`` for one model, under the label the user sees."""

    label: str
    source: str
    input_shape: tuple[int, ...] | None = None
    data: str | None = None
    architecture: str | None = None
    trust_pickle: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``st.session_state``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSource":
        """Inverse of ``to_dict``."""
        shape = data.get("input_shape")
        return cls(**{**data, "input_shape": tuple(shape) if shape else None})

    @property
    def key(self) -> str:
        """A string naming this model exactly: the cache key of everything computed from it."""
        return repr(tuple(self.to_dict().values()))


def sample_source(name: str) -> ModelSource:
    """A built-in sample."""
    return ModelSource(label=name, source=name)


def sample_sources() -> dict[str, ModelSource]:
    """Every built-in sample by label."""
    return {name: sample_source(name) for name in sample_names()}


def save_upload(filename: str, content: bytes) -> Path:
    """Write uploaded bytes to ``UPLOAD_DIR/<sha256 prefix>/<filename>`` and return the path."""
    digest = hashlib.sha256(content).hexdigest()[:16]
    folder = UPLOAD_DIR / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(filename).name
    if not path.exists():
        path.write_bytes(content)
    return path


def parse_shape(text: str) -> tuple[int, ...] | None:
    """``"1, 8, 8"`` or ``"1x8x8"`` -> ``(1, 8, 8)``; empty text -> None (the file says its shape)."""
    text = text.strip()
    if not text:
        return None
    parts = [part for part in SHAPE_SEPARATORS.split(text) if part]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise CompressError(f"input shape '{text}' is not valid; give one sample's sizes without the batch axis, like 1,8,8")
    return tuple(int(part) for part in parts)


def upload_source(
    model_name: str,
    model_bytes: bytes,
    *,
    shape_text: str = "",
    data_name: str | None = None,
    data_bytes: bytes | None = None,
    architecture: str | None = None,
    trust_pickle: bool = False,
) -> ModelSource:
    """The source of an uploaded model (and optional ``.npz`` data), its bytes saved to disk."""
    model_path = save_upload(model_name, model_bytes)
    data_path = save_upload(data_name, data_bytes) if data_name and data_bytes is not None else None
    details = [part for part in (architecture, Path(data_name).name if data_name else None) if part]
    label = f"{Path(model_name).name} (uploaded{', ' + ', '.join(details) if details else ''})"
    return ModelSource(
        label=label,
        source=str(model_path),
        input_shape=parse_shape(shape_text),
        data=None if data_path is None else str(data_path),
        architecture=architecture,
        trust_pickle=trust_pickle,
    )
