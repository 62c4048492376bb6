"""``load_model``: one entry point for samples, ONNX, TorchScript, ``torch.export`` programs and weights.

Files whose loading runs code stored in them pass the trust gate in ``compress_core.models.trust`` first.
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import pickle
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress_core.errors import CompressError, first_line
from compress_core.models import samples
from compress_core.models.evaldata import GENERATED_SAMPLES, eval_data, generated_data, load_npz, read_npz
from compress_core.models.handle import Backend, Inputs, InputSpec, ModelHandle, Quality
from compress_core.models.input_specs import DeclaredInput, batch_axes, fixed_batch, resolve_specs
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
# Generated evaluation inputs are sized so that one pass over them takes about this long (a large
# model gets fewer than GENERATED_SAMPLES, never fewer than MIN_GENERATED_SAMPLES).
GENERATED_PASS_SECONDS = 2.0
SLOW_SAMPLE_SECONDS = 0.02
MIN_GENERATED_SAMPLES = 16


def load_model(
    source: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    inputs: Mapping[str, Sequence[float]] | None = None,
    data: str | Path | None = None,
    architecture: str | None = None,
    trust_code: bool = False,
    trust_pickle: bool = False,
    quality: Quality | None = None,
) -> ModelHandle:
    """Load a model by sample name or file path and attach its evaluation data.

    ``inputs`` maps an input name to one sample's shape (no batch axis) or, for a scalar input, its
    value; it is needed only where the file leaves them open. ``input_shape`` is the same for a
    single-input model. ``data`` is an optional ``.npz`` with one array per input (``inputs`` for a
    single input) and optional ``labels``; without it a sample uses its own test split and a file
    gets generated inputs (fidelity metrics only). ``architecture`` names the built-in sample whose
    architecture a state_dict file fits. ``trust_code`` allows files whose loading runs code stored
    in them: TorchScript archives, full pickles, and ``.pt2`` archives with pickled parts (see
    ``compress_core.models.trust``); without it they are refused before torch opens them.
    ``trust_pickle`` is its older name; either one trusts. ``quality`` says how outputs are
    compared (task, ranked output, user metric); by default the task is detected from the output.
    Raises ``CompressError`` with a one-line message for every bad input.
    """
    text = str(source)
    if text in samples.sample_names():
        handle = samples.load(text)
        handle = _with_data(handle, data) if data is not None else handle
    else:
        path = _model_file(Path(source))
        given = dict(inputs or {})
        handle = _load_file(path, given, input_shape, data, architecture, trust_code or trust_pickle)
    return _with_quality(handle, quality or Quality())


def _with_quality(handle: ModelHandle, quality: Quality) -> ModelHandle:
    """The handle once it has run an example: its outputs' batch axes found, its quality choice
    checked and its task resolved."""
    handle = handle.replace(output_axes=_output_axes(handle))
    started = time.perf_counter()
    outputs = _check_runs(handle)
    if handle.data.generated:
        samples = generated_samples(time.perf_counter() - started)
        handle = handle.replace(data=generated_data(handle.input_specs, samples))
    where = handle.source or handle.name
    if not 0 <= quality.output < len(outputs):
        raise CompressError(
            f"{where}: output {quality.output} asked for, but the model has {len(outputs)} output(s) (0..{len(outputs) - 1})"
        )
    from compress_core.analysis.quality import TASKS, detect_task

    if quality.task != "auto" and quality.task not in TASKS:
        raise CompressError(f"{where}: unknown task '{quality.task}'; one of auto, {', '.join(TASKS)}")
    if quality.task != "auto":
        task = quality.task
    elif handle.kind == "sample" and quality.output == 0:
        task = handle.task
    else:
        task = detect_task(outputs[quality.output])
    return handle.replace(task=task, quality=quality)


def generated_samples(seconds_per_sample: float) -> int:
    """How many inputs to generate for a model that takes ``seconds_per_sample`` on one sample.

    ``GENERATED_SAMPLES`` unless one sample takes more than ``SLOW_SAMPLE_SECONDS`` (so that small
    models get the same data on every machine); then a power of two that fits one evaluation pass
    into ``GENERATED_PASS_SECONDS``, at least ``MIN_GENERATED_SAMPLES``.
    """
    if seconds_per_sample <= SLOW_SAMPLE_SECONDS:
        return GENERATED_SAMPLES
    fit = GENERATED_PASS_SECONDS / seconds_per_sample
    return max(MIN_GENERATED_SAMPLES, 2 ** int(math.log2(max(fit, 1))))


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
    path: Path,
    given: dict[str, Sequence[float]],
    input_shape: tuple[int, ...] | None,
    data: str | Path | None,
    architecture: str | None,
    trusted: bool,
) -> ModelHandle:
    """Dispatch on the file's extension (and, for ``.pt``-like files, on whether it is TorchScript)."""
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from compress_core.models.onnx_graph import load_onnx

        model, declared = load_onnx(path)
        return _file_handle(path, "onnx", model, declared, "onnx", data, _given(given, input_shape, declared))
    if suffix in EXPORTED_SUFFIXES:
        module, declared = _load_exported(path, trusted)
        return _file_handle(path, "torch", module, declared, "exported", data, _given(given, input_shape, declared))
    if suffix in TORCHSCRIPT_SUFFIXES or (suffix in WEIGHTS_SUFFIXES and is_torchscript_file(path)):
        module, spec = load_torchscript(path, trusted)
        declared = _torchscript_inputs(module, spec)
        return _file_handle(path, "torch", module, declared, "torchscript", data, _given(given, input_shape, declared))
    if suffix in SAFETENSORS_SUFFIXES:
        return _state_dict_handle(path, _read_safetensors(path), input_shape, data, architecture)
    if suffix in WEIGHTS_SUFFIXES:
        return _load_weights(path, given, input_shape, data, architecture, trusted)
    raise CompressError(f"{path}: unknown model file extension '{suffix or '(none)'}'; supported: {SUPPORTED}")


def _given(
    given: dict[str, Sequence[float]], input_shape: tuple[int, ...] | None, declared: Sequence[DeclaredInput]
) -> dict[str, Sequence[float]]:
    """``--input`` values, with ``--input-shape`` as the first input's shape."""
    if input_shape is None:
        return given
    return {declared[0].name: input_shape, **given}


def _file_handle(
    path: Path,
    backend: Backend,
    model: Any,
    declared: Sequence[DeclaredInput],
    kind: str,
    data: str | Path | None,
    given: Mapping[str, Sequence[float]],
) -> ModelHandle:
    """A handle whose input specs come from the file, the user's ``given`` shapes and values, and the data."""
    if data is not None:
        arrays, labels = read_npz(data, [item.name for item in declared])
        declared = [_with_data_dtype(item, arrays[item.name]) for item in declared]
        specs = resolve_specs(path, declared, given, arrays, str(data))
        evaldata = eval_data(Path(data), specs, arrays, labels)
    else:
        declared = [_with_data_dtype(item, None) for item in declared]
        specs = resolve_specs(path, declared, given)
        evaldata = generated_data(specs)
    return ModelHandle(
        name=path.stem,
        backend=backend,
        model=model,
        input_specs=tuple(specs),
        data=evaldata,
        kind=kind,
        source=str(path),
        fixed_batch=fixed_batch(declared, batch_axes(declared)),
    )


def _with_data_dtype(item: DeclaredInput, array: Any) -> DeclaredInput:
    """An input whose dtype the file does not say takes the data's (int64 for integers), else float32."""
    if item.dtype:
        return item
    integer = array is not None and np.issubdtype(array.dtype, np.integer)
    return DeclaredInput(item.name, "int64" if integer else "float32", item.dims, item.high)


def _torchscript_inputs(module: torch.nn.Module, spec: InputSpec | None) -> list[DeclaredInput]:
    """A TorchScript module's inputs: its stored or traced spec, else its forward arguments' names."""
    if spec is not None:
        return [DeclaredInput(spec.name, spec.dtype, (None, *spec.shape))]
    graph: Any = module.graph
    names = [value.debugName().split(".")[0] for value in list(graph.inputs())[1:]]
    return [DeclaredInput(name, "", None) for name in names]


def _module_inputs(module: torch.nn.Module) -> list[DeclaredInput]:
    """An ``nn.Module``'s inputs: the names of ``forward``'s arguments without defaults (shapes unknown)."""
    parameters = inspect.signature(module.forward).parameters.values()
    names = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return [DeclaredInput(name, "", None) for name in names or ["input"]]


def _with_data(handle: ModelHandle, data: str | Path) -> ModelHandle:
    return handle.replace(data=load_npz(data, handle.input_specs))


def _load_exported(path: Path, trusted: bool) -> tuple[torch.nn.Module, list[DeclaredInput]]:
    """The program's module and its inputs as the program declares them (symbolic dims by name)."""
    content = path.read_bytes()  # checked and loaded from the same bytes: the file cannot change in between
    _check_pt2_archive(path, content, trusted)
    try:
        with _quiet_logger("torch"):
            program = torch.export.load(io.BytesIO(content))
        module = program.module()
    except Exception as exc:
        raise CompressError(f"{path}: not a readable {PT2_WHAT} ({first_line(exc)})") from exc
    placeholders = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    nodes = {node.name: node for node in program.graph.nodes}
    declared = []
    for name in placeholders:
        value = nodes[name].meta.get("val")
        if value is None:
            declared.append(DeclaredInput(name, "", None))
            continue
        dims = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
        declared.append(DeclaredInput(name, str(value.dtype).removeprefix("torch."), dims))
    return module, declared


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
    path: Path,
    given: dict[str, Sequence[float]],
    input_shape: tuple[int, ...] | None,
    data: str | Path | None,
    architecture: str | None,
    trusted: bool,
) -> ModelHandle:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        content = _load_trusted_pickle(path, trusted)
    except Exception as exc:
        raise CompressError(f"{path}: not a readable PyTorch file ({first_line(exc)})") from exc
    if isinstance(content, torch.nn.Module):
        content.eval()
        declared = _module_inputs(content)
        return _file_handle(path, "torch", content, declared, "pickle", data, _given(given, input_shape, declared))
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return _state_dict_handle(path, content, input_shape, data, architecture)
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
    input_shape: tuple[int, ...] | None,
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
    spec = samples.input_spec(architecture)
    declared = [DeclaredInput(spec.name, spec.dtype, (None, *(input_shape or spec.shape)))]
    handle = _file_handle(path, "torch", module, declared, "state_dict", data, {})
    if data is None:
        handle = handle.replace(data=samples.load(architecture).data)
    return handle


def _output_axes(handle: ModelHandle) -> tuple[int, ...]:
    """Each output's batch axis: the axis whose size follows the batch size (run with 1 and 2 samples);
    for a model with a static batch of 1, the first axis of size 1. 0 where nothing tells."""
    one = _raw_outputs(handle, handle.data.inputs[:1])
    if handle.fixed_batch is None:
        two = _raw_outputs(handle, handle.data.inputs[[0, 0]])
        return tuple(_changed_axis(a.shape, b.shape, 1, 2) for a, b in zip(one, two))
    if handle.fixed_batch == 1:
        return tuple(next((axis for axis, size in enumerate(a.shape) if size == 1), 0) for a in one)
    return tuple(next((axis for axis, size in enumerate(a.shape) if size == handle.fixed_batch), 0) for a in one)


def _raw_outputs(handle: ModelHandle, batch: Inputs) -> list[np.ndarray]:
    """The model's outputs on one batch exactly as it returns them (no axis moved); [] when it fails
    (``_check_runs`` then says why)."""
    try:
        return handle._run_batch(handle.padded(batch))
    except Exception:  # noqa: BLE001 - the check that follows runs the same example and reports the error
        return []


def _changed_axis(one: tuple[int, ...], two: tuple[int, ...], size_one: int, size_two: int) -> int:
    """The axis that holds ``size_one`` in ``one`` and ``size_two`` in ``two`` (0 when none does)."""
    if len(one) != len(two):
        return 0
    return next((axis for axis, (a, b) in enumerate(zip(one, two)) if (a, b) == (size_one, size_two)), 0)


def _check_runs(handle: ModelHandle) -> list[np.ndarray]:
    """Run one example so that a model that cannot take its declared inputs fails now, clearly; its outputs."""
    example = handle.data.inputs[:1]
    try:
        outputs = handle.run_outputs(example)
    except Exception as exc:
        raise CompressError(
            f"{handle.source or handle.name}: the model does not run on {_inputs_text(example)} "
            f"({first_line(exc)}); check the input shapes"
        ) from exc
    if not outputs:
        raise CompressError(f"{handle.source}: the model returns no tensor; expected a batch of outputs")
    if any(output.ndim == 0 for output in outputs):
        raise CompressError(f"{handle.source}: the model returns a scalar; expected a batch of outputs")
    return outputs


def _inputs_text(example: Inputs) -> str:
    """``input of shape (1, 3, 5)`` for one input, ``inputs input_ids (1, 16), mask (1, 16)`` for several."""
    if len(example.names) == 1:
        return f"input of shape {tuple(example.first.shape)}"
    return f"inputs {example.shapes_text()}"
