"""``load_model``: one entry point for samples, ONNX, TorchScript, ``torch.export`` programs and weights.

Files whose loading runs code stored in them pass the trust gate in ``compress_core.models.trust`` first.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress_core.errors import CompressError, first_line
from compress_core.models import samples
from compress_core.models.evaldata import generated_data, load_npz
from compress_core.models.handle import Backend, InputSpec, ModelHandle
from compress_core.models.torchscript import is_torchscript_file, load_torchscript
from compress_core.models.trust import is_pt2_archive, pt2_code_risk, require_trust, zip_archive

ONNX_SUFFIXES = {".onnx"}
TORCHSCRIPT_SUFFIXES = {".ts", ".torchscript", ".jit"}
EXPORTED_SUFFIXES = {".pt2"}
SAFETENSORS_SUFFIXES = {".safetensors"}
WEIGHTS_SUFFIXES = {".pt", ".pth", ".bin"}
SUPPORTED = (
    ".onnx, .pt2, .safetensors (a state_dict), .ts/.torchscript/.jit, "
    ".pt/.pth/.bin (TorchScript, a state_dict, or a trusted pickle)"
)
PT2_WHAT = "torch.export (.pt2) program"


def load_model(
    source: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    data: str | Path | None = None,
    architecture: str | None = None,
    trust_code: bool = False,
    trust_pickle: bool = False,
) -> ModelHandle:
    """Load a model by sample name or file path and attach its evaluation data.

    ``input_shape`` (one sample, no batch axis) is needed only where the file does not say it.
    ``data`` is an optional ``.npz`` with ``inputs`` (and ``labels``); without it a sample uses its
    own test split and a file gets generated inputs (fidelity metrics only).
    ``architecture`` names the built-in sample whose architecture a state_dict file fits.
    ``trust_code`` allows files whose loading runs code stored in them: TorchScript archives, full
    pickles, and ``.pt2`` archives with pickled parts (see ``compress_core.models.trust``); without it they
    are refused before torch opens them. ``trust_pickle`` is its older name; either one trusts.
    Raises ``CompressError`` with a one-line message for every bad input.
    """
    text = str(source)
    if text in samples.sample_names():
        handle = samples.load(text)
        return _with_data(handle, data) if data is not None else handle
    path = _model_file(Path(source))
    given = InputSpec(tuple(input_shape)) if input_shape else None
    handle = _load_file(path, given, data, architecture, trust_code or trust_pickle)
    _check_runs(handle)
    return handle


def _model_file(path: Path) -> Path:
    """``path`` when it is a non-empty file; otherwise a one-line error saying what it is."""
    if not path.exists():
        known = ", ".join(samples.sample_names())
        raise CompressError(f"{path}: no such file, and not a sample name (samples: {known})")
    if path.is_dir():
        raise CompressError(f"{path}: is a folder; expected a model file ({SUPPORTED})")
    if path.stat().st_size == 0:
        raise CompressError(f"{path}: is empty (0 bytes); expected a model file ({SUPPORTED})")
    return path


def _load_file(
    path: Path, given: InputSpec | None, data: str | Path | None, architecture: str | None, trusted: bool
) -> ModelHandle:
    """Dispatch on the file's extension (and, for ``.pt``-like files, on whether it is TorchScript)."""
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from compress_core.models.onnx_graph import load_onnx

        model, spec = load_onnx(path, given)
        return _file_handle(path, "onnx", model, spec, "onnx", data)
    if suffix in EXPORTED_SUFFIXES:
        module, spec, fixed_batch = _load_exported(path, trusted)
        handle = _file_handle(path, "torch", module, given or spec, "exported", data)
        handle.fixed_batch = fixed_batch
        return handle
    if suffix in TORCHSCRIPT_SUFFIXES or (suffix in WEIGHTS_SUFFIXES and is_torchscript_file(path)):
        module, spec = load_torchscript(path, trusted)
        return _file_handle(path, "torch", module, given or spec, "torchscript", data)
    if suffix in SAFETENSORS_SUFFIXES:
        return _state_dict_handle(path, _read_safetensors(path), given, data, architecture)
    if suffix in WEIGHTS_SUFFIXES:
        return _load_weights(path, given, data, architecture, trusted)
    raise CompressError(f"{path}: unknown model file extension '{suffix or '(none)'}'; supported: {SUPPORTED}")


def _file_handle(
    path: Path, backend: Backend, model: Any, spec: InputSpec | None, kind: str, data: str | Path | None
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


def _load_exported(path: Path, trusted: bool) -> tuple[torch.nn.Module, InputSpec | None, int | None]:
    """The program's module, its input spec when static, and its batch size when that is static."""
    content = path.read_bytes()  # checked and loaded from the same bytes: the file cannot change in between
    _check_pt2_archive(path, content, trusted)
    try:
        with _quiet_logger("torch"):
            program = torch.export.load(io.BytesIO(content))
        module = program.module()
    except Exception as exc:
        raise CompressError(f"{path}: not a readable {PT2_WHAT} ({first_line(exc)})") from exc
    placeholders = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    if len(placeholders) != 1:
        raise CompressError(
            f"{path}: the program takes {len(placeholders)} inputs; only single-input models are supported"
        )
    node = next(n for n in program.graph.nodes if n.name == placeholders[0])
    value = node.meta.get("val")
    spec = None
    if value is not None and all(isinstance(d, int) for d in value.shape[1:]):
        spec = InputSpec(tuple(value.shape[1:]), "int64" if value.dtype == torch.int64 else "float32")
    fixed_batch = value.shape[0] if value is not None and isinstance(value.shape[0], int) else None
    return module, spec, fixed_batch


def _check_pt2_archive(path: Path, content: bytes, trusted: bool) -> None:
    """Refuse a file that ``torch.export.save`` did not write and, unless trusted, one whose loading runs code."""
    with zip_archive(path, PT2_WHAT, content) as archive:
        written_by_torch = is_pt2_archive(archive)
        risk = pt2_code_risk(archive) if written_by_torch and not trusted else None
    if not written_by_torch:
        raise CompressError(
            f"{path}: not a readable {PT2_WHAT} (it has no 'archive_format' entry; write it with torch.export.save)"
        )
    if risk is not None:
        require_trust(path, f"is a .pt2 archive that {risk}", trusted)


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a logger's warnings: torch logs a multi-line traceback before raising what the one-line error quotes."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors: plain weights, never code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CompressError(f"{path}: not a readable safetensors file ({first_line(exc)})") from exc


def _load_weights(
    path: Path, given: InputSpec | None, data: str | Path | None, architecture: str | None, trusted: bool
) -> ModelHandle:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        content = _load_trusted_pickle(path, trusted)
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


def _load_trusted_pickle(path: Path, trusted: bool) -> Any:
    require_trust(path, "is a full Python pickle, not plain weights", trusted)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CompressError(f"{path}: could not be unpickled ({first_line(exc)})") from exc


def _state_dict_handle(
    path: Path,
    state: dict[str, torch.Tensor],
    given: InputSpec | None,
    data: str | Path | None,
    architecture: str | None,
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
