"""``load_model``: one entry point for samples, ONNX, TorchScript, ``torch.export`` programs and weights."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import samples
from .atomic import atomic_write_bytes
from .errors import CompressError, first_line
from .evaldata import generated_data, load_npz
from .handle import EvalData, InputSpec, ModelHandle

ONNX_SUFFIXES = {".onnx"}
TORCHSCRIPT_SUFFIXES = {".ts", ".torchscript", ".jit"}
EXPORTED_SUFFIXES = {".pt2"}
WEIGHTS_SUFFIXES = {".pt", ".pth", ".bin"}
SUPPORTED = ".onnx, .pt2, .ts/.torchscript/.jit, .pt/.pth (TorchScript, a state_dict, or a trusted pickle)"
# Stored inside TorchScript files that this project writes, so they can be reopened without asking.
INPUT_SPEC_EXTRA_FILE = "compress_explorer_input_spec.json"


def load_model(
    source: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    data: str | Path | None = None,
    architecture: str | None = None,
    trust_pickle: bool = False,
) -> ModelHandle:
    """Load a model by sample name or file path and attach its evaluation data.

    ``input_shape`` (one sample, no batch axis) is needed only where the file does not say it.
    ``data`` is an optional ``.npz`` with ``inputs`` (and ``labels``); without it a sample uses its
    own test split and a file gets generated inputs (fidelity metrics only).
    ``architecture`` names the built-in sample whose architecture a state_dict file fits.
    ``trust_pickle`` allows a fully pickled ``nn.Module``: unpickling runs code from the file.
    Raises ``CompressError`` with a one-line message for every bad input.
    """
    text = str(source)
    if text in samples.sample_names():
        handle = samples.load(text)
        return _with_data(handle, data) if data is not None else handle
    path = Path(source)
    if not path.exists():
        known = ", ".join(samples.sample_names())
        raise CompressError(f"{path}: no such file, and not a sample name (samples: {known})")
    if path.is_dir():
        raise CompressError(f"{path}: is a folder; expected a model file ({SUPPORTED})")
    suffix = path.suffix.lower()
    given = InputSpec(tuple(input_shape)) if input_shape else None
    if suffix in ONNX_SUFFIXES:
        from .onnx_graph import load_onnx

        model, spec = load_onnx(path, given)
        handle = _file_handle(path, "onnx", model, spec, "onnx", data)
    elif suffix in EXPORTED_SUFFIXES:
        module, spec, fixed_batch = _load_exported(path)
        handle = _file_handle(path, "torch", module, given or spec, "exported", data)
        handle.fixed_batch = fixed_batch
    elif suffix in TORCHSCRIPT_SUFFIXES or (suffix in WEIGHTS_SUFFIXES and _is_torchscript(path)):
        module, spec = _load_torchscript(path)
        handle = _file_handle(path, "torch", module, given or spec, "torchscript", data)
    elif suffix in WEIGHTS_SUFFIXES:
        handle = _load_weights(path, given, data, architecture, trust_pickle)
    else:
        raise CompressError(f"{path}: unknown model file extension '{suffix or '(none)'}'; supported: {SUPPORTED}")
    _check_runs(handle)
    return handle


def _file_handle(
    path: Path, backend: str, model: Any, spec: InputSpec | None, kind: str, data: str | Path | None
) -> ModelHandle:
    if spec is None and data is not None:
        evaldata = load_npz(data, None)
        spec = InputSpec(tuple(evaldata.inputs.shape[1:]), str(evaldata.inputs.dtype))
    elif spec is None:
        raise CompressError(
            f"{path}: the file does not say its input shape; give one sample's shape without the batch axis "
            "(CLI: --input-shape 1,8,8) or evaluation data (--data)"
        )
    else:
        evaldata = load_npz(data, spec) if data is not None else generated_data(spec)
    return ModelHandle(
        name=path.stem, backend=backend, model=model, input_spec=spec, data=evaldata, kind=kind, source=str(path)
    )


def _with_data(handle: ModelHandle, data: str | Path) -> ModelHandle:
    return handle.replace(data=load_npz(data, handle.input_spec))


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/``; state_dicts hold only ``data/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def _load_torchscript(path: Path) -> tuple[torch.nn.Module, InputSpec | None]:
    extra = {INPUT_SPEC_EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError or ValueError depending on the damage
        raise CompressError(f"{path}: not a readable TorchScript file ({first_line(exc)})") from exc
    module.eval()
    spec = _spec_from_json(extra[INPUT_SPEC_EXTRA_FILE]) or _spec_from_traced_graph(module)
    return module, spec


def _spec_from_json(text: str | bytes) -> InputSpec | None:
    if not text:
        return None
    payload = json.loads(text)
    return InputSpec(tuple(payload["shape"]), payload.get("dtype", "float32"))


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


def _load_exported(path: Path) -> tuple[torch.nn.Module, InputSpec | None, int | None]:
    """The program's module, its input spec when static, and its batch size when that is static."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise CompressError(f"{path}: not a readable torch.export (.pt2) program ({first_line(exc)})") from exc
    placeholders = [
        spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"
    ]
    if len(placeholders) != 1:
        raise CompressError(f"{path}: the program takes {len(placeholders)} inputs; only single-input models are supported")
    node = next(n for n in program.graph.nodes if n.name == placeholders[0])
    value = node.meta.get("val")
    spec = None
    if value is not None and all(isinstance(d, int) for d in value.shape[1:]):
        spec = InputSpec(tuple(value.shape[1:]), "int64" if value.dtype == torch.int64 else "float32")
    fixed_batch = value.shape[0] if value is not None and isinstance(value.shape[0], int) else None
    return program.module(), spec, fixed_batch


def _load_weights(
    path: Path, given: InputSpec | None, data: str | Path | None, architecture: str | None, trust_pickle: bool
) -> ModelHandle:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        content = _load_trusted_pickle(path, trust_pickle)
    except Exception as exc:
        raise CompressError(f"{path}: not a readable PyTorch file ({first_line(exc)})") from exc
    if isinstance(content, torch.nn.Module):
        content.eval()
        return _file_handle(path, "torch", content, given, "pickle", data)
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return _state_dict_handle(path, content, given, data, architecture)
    raise CompressError(
        f"{path}: holds a {type(content).__name__}, expected a state_dict (name -> tensor) or an nn.Module"
    )


def _load_trusted_pickle(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise CompressError(
            f"{path}: is a full Python pickle, not plain weights; unpickling runs code from the file, so it is "
            "refused unless you say you trust it (CLI: --trust-pickle; app: 'I trust this file')"
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CompressError(f"{path}: could not be unpickled ({first_line(exc)})") from exc


def _state_dict_handle(
    path: Path, state: dict[str, torch.Tensor], given: InputSpec | None, data: str | Path | None, architecture: str | None
) -> ModelHandle:
    if architecture is None:
        known = ", ".join(samples.digits_names())
        raise CompressError(
            f"{path}: is a state_dict (weights only); say which built-in architecture it fits "
            f"(CLI: --architecture NAME; one of {known})"
        )
    module = samples.build_architecture(architecture)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressError(f"{path}: does not fit architecture '{architecture}' ({first_line(exc)})") from exc
    module.eval()
    spec = given or samples.input_spec(architecture)
    handle = _file_handle(path, "torch", module, spec, "state_dict", data)
    if data is None:
        handle = handle.replace(data=samples.load(architecture).data)
    return handle


def _check_runs(handle: ModelHandle) -> None:
    """Run one example so that a model that cannot take its declared input fails now, clearly."""
    example = handle.data.inputs[:1]
    try:
        output = handle.run(np.ascontiguousarray(example))
    except Exception as exc:
        raise CompressError(
            f"{handle.source}: the model does not run on input of shape {tuple(example.shape)} "
            f"({first_line(exc)}); check the input shape"
        ) from exc
    if output.ndim == 0:
        raise CompressError(f"{handle.source}: the model returns a scalar; expected a batch of outputs")



def save_torchscript(handle: ModelHandle, path: str | Path) -> None:
    """Trace a torch handle's model and save it with its input spec stored inside the file."""
    example = torch.from_numpy(handle.input_spec.example())
    traced = torch.jit.trace(handle.model, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={INPUT_SPEC_EXTRA_FILE: spec_to_json(handle.input_spec)})
    atomic_write_bytes(path, buffer.getvalue())
