"""Where a model comes from: a sample name or an uploaded file, as plain, hashable data.

The app's working files (uploads, export folders) live in a private folder of this process:
``tempfile.mkdtemp`` makes it afresh with mode 0700 under the temp folder, so no other user can
read it or plant a file or a symlink in it, and it is removed when the process exits. Uploaded
bytes are written under a subfolder named after their SHA-256, so the same upload maps to the same
path (and the same cached model) and two uploads with one name never collide. Each file is
created exclusively (``O_EXCL | O_NOFOLLOW``, mode 0600) under a random name and then renamed into
place: a symlink found at either name is never followed.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compress_core import CompressError
from compress_core.models.samples import sample_names

PRIVATE_PREFIX = "compress-explorer-"
PRIVATE_MODE = 0o700
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
UPLOADS = "uploads"
MAX_NAME_BYTES = 200
MODEL_EXTENSIONS = ("onnx", "pt2", "pt", "pth", "bin", "safetensors", "ts", "torchscript", "jit")
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
    trust_code: bool = False
    inputs: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (input name, its sample shape or scalar value)
    task: str = "auto"
    output: int = 0
    ctc_blank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``st.session_state``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        """Inverse of ``to_dict``."""
        shape = data.get("input_shape")
        inputs = tuple((str(name), tuple(values)) for name, values in data.get("inputs", ()))
        return cls(**{**data, "input_shape": tuple(shape) if shape else None, "inputs": inputs})

    def with_quality(self, task: str, output: int, ctc_blank: int | None) -> ModelSource:
        """This model measured another way: ``task``, ranked ``output`` and CTC blank, under a label that says so."""
        base = self.label.split(" [", 1)[0]
        changed = [f"task {task}"] if task != "auto" else []
        changed += [f"output {output}"] if output else []
        changed += [f"CTC blank {ctc_blank}"] if ctc_blank is not None else []
        label = f"{base} [{', '.join(changed)}]" if changed else base
        return dataclasses.replace(self, label=label, task=task, output=output, ctc_blank=ctc_blank)

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


_private_lock = threading.Lock()


@functools.cache
def _private_root(base: str) -> Path:
    """This process's private folder under ``base``, made once (mode 0700) and removed at exit."""
    root = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def private_dir(kind: str) -> Path:
    """The folder for one kind of working file (``"uploads"``, ``"exports"``) in this process's
    private folder (under the temp folder of the moment), created with mode 0700."""
    with _private_lock:
        folder = _private_root(tempfile.gettempdir()) / kind
        folder.mkdir(mode=PRIVATE_MODE, exist_ok=True)
    return folder


def write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` (mode 0600) through a fresh, exclusively created temporary
    name, then rename it into place: a symlink at either name is replaced, never followed."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    descriptor = os.open(temporary, CREATE_FLAGS, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_upload(filename: str, content: bytes) -> Path:
    """Write uploaded bytes to ``<uploads>/<sha256 prefix>/<filename>`` and return the path."""
    name = _upload_name(filename)
    folder = private_dir(UPLOADS) / hashlib.sha256(content).hexdigest()[:16]
    folder.mkdir(mode=PRIVATE_MODE, exist_ok=True)
    write_private(folder / name, content)
    return folder / name


def _upload_name(filename: str) -> str:
    """The last component of an uploaded file's name (a browser may send a path); refused when it
    names no file or is too long for a file system."""
    name = Path(filename.replace("\\", "/")).name
    if name in ("", ".", "..") or "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise CompressError(f"'{filename[:80]}' is not a usable file name for an upload; rename the file and try again")
    return name


def parse_inputs(text: str) -> tuple[tuple[int, ...] | None, tuple[tuple[str, tuple[float, ...]], ...]]:
    """The inputs field: ``"1,64,160"`` is the (single) input's shape; ``"input1=1,64,160; sr=16000"``
    names inputs and gives each one sample's shape, or a scalar input's value. Empty: nothing given."""
    if "=" not in text:
        return parse_shape(text), ()
    entries = []
    for entry in re.split(r"[;\n]+", text):
        if not entry.strip():
            continue
        name, _, numbers = entry.partition("=")
        try:
            values = tuple(float(part) for part in SHAPE_SEPARATORS.split(numbers.strip()) if part)
        except ValueError:
            values = ()
        if not name.strip() or not values:
            raise CompressError(
                f"inputs entry '{entry.strip()}' is not valid; write NAME=SHAPE or NAME=VALUE, e.g. input1=1,64,160; sr=16000"
            )
        entries.append((name.strip(), values))
    return None, tuple(entries)


def parse_shape(text: str) -> tuple[int, ...] | None:
    """``"1, 8, 8"`` or ``"1x8x8"`` -> ``(1, 8, 8)``; empty text -> None (the file says its shape)."""
    text = text.strip()
    if not text:
        return None
    parts = [part for part in SHAPE_SEPARATORS.split(text) if part]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise CompressError(
            f"input shape '{text}' is not valid; give one sample's sizes without the batch axis, like 1,8,8"
        )
    return tuple(int(part) for part in parts)


def upload_source(
    model_name: str,
    model_bytes: bytes,
    *,
    shape_text: str = "",
    data_name: str | None = None,
    data_bytes: bytes | None = None,
    architecture: str | None = None,
    trust_code: bool = False,
) -> ModelSource:
    """The source of an uploaded model (and optional ``.npz`` data), its bytes saved to disk."""
    input_shape, inputs = parse_inputs(shape_text)
    model_path = save_upload(model_name, model_bytes)
    data_path = save_upload(data_name, data_bytes) if data_name and data_bytes is not None else None
    details = [part for part in (architecture, Path(data_name).name if data_name else None) if part]
    label = f"{Path(model_name).name} (uploaded{', ' + ', '.join(details) if details else ''})"
    return ModelSource(
        label=label,
        source=str(model_path),
        input_shape=input_shape,
        inputs=inputs,
        data=None if data_path is None else str(data_path),
        architecture=architecture,
        trust_code=trust_code,
    )
