"""TorchScript archives: recognising one, loading it (trusted files only: its code runs on load), and the
input spec this project stores inside the TorchScript files it writes."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, TypeGuard

import torch

from compress_core.atomic import atomic_write_bytes
from compress_core.errors import CompressError, first_line
from compress_core.models.handle import InputSpec, ModelHandle
from compress_core.models.inputs import generated_inputs
from compress_core.models.trust import is_torchscript, require_trust, zip_archive

# Stored inside TorchScript files that this project writes, so their input shape need not be asked.
INPUT_SPEC_EXTRA_FILE = "compress_explorer_input_spec.json"
SPEC_DTYPES = ("float32", "int64")
SPEC_EXAMPLE = '{"shape": [1, 8, 8], "dtype": "float32"}'


def is_torchscript_file(path: Path) -> bool:
    """Whether a ``.pt``-like file is a TorchScript archive rather than a ``torch.save`` file."""
    if not zipfile.is_zipfile(path):
        return False  # torch's legacy (pre-1.6) format: a plain pickle stream
    with zip_archive(path, "PyTorch file") as archive:
        return is_torchscript(archive)


def load_torchscript(path: Path, trusted: bool) -> tuple[torch.nn.Module, InputSpec | None]:
    """Every TorchScript archive holds code (its ``__setstate__`` runs on load): trusted files only."""
    with zip_archive(path, "TorchScript file"):
        pass  # not a zip at all: say so rather than call it TorchScript
    require_trust(path, "is a TorchScript archive", trusted)
    extra = {INPUT_SPEC_EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError or ValueError depending on the damage
        raise CompressError(f"{path}: not a readable TorchScript file ({first_line(exc)})") from exc
    module.eval()
    spec = _spec_from_json(path, extra[INPUT_SPEC_EXTRA_FILE]) or _spec_from_traced_graph(module)
    return module, spec


def _spec_from_json(path: Path, text: str | bytes) -> InputSpec | None:
    """The input spec stored in a TorchScript file by ``save_torchscript``, checked; None when absent."""
    if not text:
        return None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise _malformed_spec(path, first_line(exc)) from exc
    shape = payload.get("shape") if isinstance(payload, dict) else None
    dtype = payload.get("dtype", "float32") if isinstance(payload, dict) else None
    if not _is_shape(shape) or dtype not in SPEC_DTYPES:
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise _malformed_spec(path, f"got {shown[:80]!r}")
    return InputSpec(tuple(shape), dtype)


def _is_shape(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)


def _malformed_spec(path: Path, detail: str) -> CompressError:
    return CompressError(
        f"{path}: its stored input spec ({INPUT_SPEC_EXTRA_FILE}) is malformed ({detail}); "
        f"expected JSON like {SPEC_EXAMPLE} with dtype one of {', '.join(SPEC_DTYPES)}"
    )


def spec_to_json(spec: InputSpec) -> str:
    """The input spec as stored beside a TorchScript file's code (see ``INPUT_SPEC_EXTRA_FILE``)."""
    return json.dumps({"shape": list(spec.shape), "dtype": spec.dtype})


def _spec_from_traced_graph(module: torch.jit.ScriptModule) -> InputSpec | None:
    """A traced module's graph records the example input's sizes; a scripted one does not."""
    inputs = list(module.graph.inputs())[1:]
    if len(inputs) != 1:
        return None
    tensor_type = inputs[0].type()
    sizes = tensor_type.sizes() if hasattr(tensor_type, "sizes") else None
    if not sizes or any(size is None for size in sizes):
        return None
    dtype = "int64" if tensor_type.scalarType() == "Long" else "float32"
    return InputSpec(tuple(sizes[1:]), dtype)


def save_torchscript(handle: ModelHandle, path: str | Path) -> None:
    """Trace a torch handle's model and save it with its input spec stored inside the file."""
    example = tuple(generated_inputs(handle.input_specs, 1).tensors())
    traced = torch.jit.trace(handle.model, example)
    buffer = io.BytesIO()
    stored = {INPUT_SPEC_EXTRA_FILE: spec_to_json(handle.input_spec)} if len(handle.input_specs) == 1 else {}
    torch.jit.save(traced, buffer, _extra_files=stored)
    atomic_write_bytes(path, buffer.getvalue())
