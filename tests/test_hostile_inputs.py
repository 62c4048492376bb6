"""Hostile model and data files, built here: each is one `error:` line with exit code 2 and runs nothing.

The rest of the hostile inputs live beside this file: recipes and regexes in
``test_hostile_plan.py``; uploads, the graph server (``/%00``, other sessions' tokens), failing
background jobs and private working files in ``test_hostile_app.py``.

A payload that would run proves it by creating the file ``pwned`` (pickles) or printing a line
(TorchScript ``__setstate__``); the tests check both are absent, and that the payloads do fire
once the user says they trust the file, so the refusals are not vacuous.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import sympy
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress_core.cli import main
from compress_core.models.torchscript import INPUT_SPEC_EXTRA_FILE
from compress_core.models.trust import is_plain_expression

ROOT = Path(__file__).resolve().parents[1]
MARKER = "pwned"
SETSTATE_OUTPUT = "SETSTATE-PAYLOAD-RAN"
TRUST = "loading it runs code stored in the file, so it is refused unless you say you trust it (CLI: --trust-code"
GIB = 2**30


class WritesMarker:
    """Unpickling this creates a file: the stand-in for any code a hostile pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class SetstatePayload(nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) prints a line."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[float, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[float, bool]) -> None:
        print("SETSTATE-PAYLOAD-RAN")
        self.scale = state[0]
        self.training = state[1]


def _cli(argv: list, capfd) -> tuple[int, str, str]:
    """Run the CLI in this process; its exit code, stderr and stdout (file-descriptor level)."""
    code = main([str(a) for a in argv])
    captured = capfd.readouterr()
    return code, captured.err, captured.out


def _assert_one_line(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err


# ---------------------------------------------------------------- builders: each returns the CLI argv


@pytest.fixture(scope="module")
def pt2_files(tmp_path_factory) -> dict[str, Path]:
    """Clean .pt2 archives of a tiny model: static batch, and dynamic batch (with shape expressions)."""
    folder = tmp_path_factory.mktemp("pt2")
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    torch.export.save(torch.export.export(model, (torch.zeros(1, 4),)), folder / "static.pt2")
    dynamic = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, folder / "dynamic.pt2")
    return {"static": folder / "static.pt2", "dynamic": folder / "dynamic.pt2"}


def _rewrite_zip(
    source: Path, target: Path, edit: Callable[[str, bytes], bytes], extra: dict[str, bytes] | None = None
) -> Path:
    """Copy a zip member by member through ``edit(name, data)``, then add ``extra`` members (stored)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info)))
        prefix = zin.namelist()[0].split("/", 1)[0]
        for name, data in (extra or {}).items():
            zout.writestr(f"{prefix}/{name}", data)
    return target


def _edit_json(suffix: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith(suffix):
            return data
        document = json.loads(data)
        change(document)
        return json.dumps(document).encode()

    return edit


def _pt2_pickled_weight(tmp_path: Path, pt2_files) -> list:
    """The weights config marks weight_0 ``use_pickle``; its blob becomes a pickle that writes the marker."""

    def mark(document: dict) -> None:
        document["config"]["0.weight"]["use_pickle"] = True

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(WritesMarker(tmp_path / MARKER))
        return _edit_json("model_weights_config.json", mark)(name, data)

    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "weights.pt2", edit)]


def _pt2_pickled_object(tmp_path: Path, pt2_files) -> list:
    """A constants config entry ``opaque_obj_0``: torch reads it with ``pickle.loads``."""

    def add(document: dict) -> None:
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        document["config"]["evil"] = entry

    payload = {"data/constants/opaque_obj_0": pickle.dumps(WritesMarker(tmp_path / MARKER))}
    edit = _edit_json("model_constants_config.json", add)
    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "object.pt2", edit, payload)]


def _pt2_pickled_sample_inputs(tmp_path: Path, pt2_files) -> list:
    """Sample inputs that are not plain tensors: torch retries them with ``weights_only=False``."""
    buffer = io.BytesIO()
    torch.save(WritesMarker(tmp_path / MARKER), buffer)

    def edit(name: str, data: bytes) -> bytes:
        return buffer.getvalue() if name.endswith("data/sample_inputs/model.pt") else data

    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "inputs.pt2", edit)]


def _pt2_shape_expression(tmp_path: Path, pt2_files) -> list:
    """A shape expression that is Python: torch evaluates it with ``sympy.sympify``."""
    code = f"__import__('builtins').open({str(tmp_path / MARKER)!r}, 'w')"

    def change(document: dict) -> None:
        size = document["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]
        size["as_expr"]["expr_str"] = code

    edit = _edit_json("models/model.json", change)
    return ["inspect", _rewrite_zip(pt2_files["dynamic"], tmp_path / "expression.pt2", edit)]


def _pt2_python_call(tmp_path: Path, pt2_files) -> list:
    """A graph node whose target is ``os.system`` reached through ``torch.os``."""
    node = {
        "target": "torch.os.system",
        "inputs": [{"name": "command", "arg": {"as_string": f"touch {tmp_path / MARKER}"}, "kind": 1}],
        "outputs": [{"as_none": True}],
        "metadata": {},
        "is_hop_single_tensor_return": None,
        "name": "evil",
    }
    edit = _edit_json("models/model.json", lambda document: document["graph_module"]["graph"]["nodes"].insert(0, node))
    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "call.pt2", edit)]


def _pt2_aoti_library(tmp_path: Path, pt2_files) -> list:
    extra = {"data/aotinductor/model/model.so": b"\x7fELF not really"}
    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "aoti.pt2", lambda name, data: data, extra)]


def _pt2_legacy_layout(tmp_path: Path, pt2_files) -> list:
    """torch's pre-2.7 layout: its loader retries ``serialized_state_dict.json`` with full unpickling."""
    with zipfile.ZipFile(pt2_files["static"]) as source:
        program = source.read(next(name for name in source.namelist() if name.endswith("models/model.json")))
    buffer = io.BytesIO()
    torch.save(((torch.zeros(1, 4),), {}), buffer)
    with zipfile.ZipFile(tmp_path / "legacy.pt2", "w") as archive:
        archive.writestr("version", "8.0")
        archive.writestr("serialized_exported_program.json", program)
        archive.writestr("serialized_state_dict.json", pickle.dumps(WritesMarker(tmp_path / MARKER)))
        archive.writestr("serialized_example_inputs.pt", buffer.getvalue())
    return ["inspect", tmp_path / "legacy.pt2"]


def _pt2_shifted_index(tmp_path: Path, pt2_files) -> list:
    """Bytes before the archive: Python's zip reader shifts every offset to match, other readers do not,
    so a crafted file can show each reader different entries."""
    target = tmp_path / "shifted.pt2"
    target.write_bytes(b"\0" * 64 + pt2_files["static"].read_bytes())
    return ["inspect", target]


def _pt2_repeated_entry(tmp_path: Path, pt2_files) -> list:
    """Two entries of one name: zip readers differ on which one they read."""
    extra = {"models/model.json": b"{}"}
    return ["inspect", _rewrite_zip(pt2_files["static"], tmp_path / "twice.pt2", lambda name, data: data, extra)]


def _full_pickle(tmp_path: Path, pt2_files) -> list:
    torch.save(WritesMarker(tmp_path / MARKER), tmp_path / "full.pt")
    return ["inspect", tmp_path / "full.pt"]


def _legacy_pickle_state_dict(tmp_path: Path, pt2_files) -> list:
    state = {"fc.weight": torch.zeros(2, 2), "fc.bias": WritesMarker(tmp_path / MARKER)}
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "legacy.pt")
    return ["inspect", tmp_path / "legacy.pt", "--architecture", "digits_mlp"]


def _torchscript(tmp_path: Path, pt2_files) -> list:
    torch.jit.script(SetstatePayload()).save(str(tmp_path / "setstate.ts"))
    return ["inspect", tmp_path / "setstate.ts", "--input-shape", "4"]


def _torchscript_as_pt(tmp_path: Path, pt2_files) -> list:
    torch.jit.script(SetstatePayload()).save(str(tmp_path / "setstate.pt"))
    return ["inspect", tmp_path / "setstate.pt", "--input-shape", "4"]


def _torchscript_spec(text: str) -> Callable[[Path, object], list]:
    def build(tmp_path: Path, pt2_files) -> list:
        traced = torch.jit.trace(nn.Linear(4, 3), torch.zeros(1, 4))
        torch.jit.save(traced, str(tmp_path / "spec.ts"), _extra_files={INPUT_SPEC_EXTRA_FILE: text})
        return ["inspect", tmp_path / "spec.ts", "--trust-code"]

    return build


def _corrupt_central_directory(tmp_path: Path, pt2_files) -> list:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    data = buffer.getvalue()
    (tmp_path / "cd.pt").write_bytes(data.replace(b"PK\x01\x02", b"XX\x01\x02"))
    return ["inspect", tmp_path / "cd.pt", "--architecture", "digits_mlp"]


def _npz_as_pt2(tmp_path: Path, pt2_files) -> list:
    np.savez(tmp_path / "z.npz", inputs=np.zeros((2, 4), np.float32))
    (tmp_path / "z.npz").rename(tmp_path / "z.pt2")
    return ["inspect", tmp_path / "z.pt2"]


def _empty(name: str) -> Callable[[Path, object], list]:
    def build(tmp_path: Path, pt2_files) -> list:
        (tmp_path / name).write_bytes(b"")
        return ["inspect", tmp_path / name]

    return build


def _folder(tmp_path: Path, pt2_files) -> list:
    (tmp_path / "model.onnx").mkdir()
    return ["inspect", tmp_path / "model.onnx"]


def _truncated_safetensors(tmp_path: Path, pt2_files) -> list:
    safetensors.torch.save_file({"w": torch.zeros(8)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) - 5])
    return ["inspect", tmp_path / "w.safetensors", "--architecture", "digits_mlp"]


def _onnx_model(initializer: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [initializer],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _onnx_external(location: Callable[[Path], str], length: int | None = None) -> Callable[[Path, object], list]:
    """An ONNX file whose weight lives in external data at ``location(tmp_path)``."""

    def build(tmp_path: Path, pt2_files) -> list:
        folder = tmp_path / "onnx"
        folder.mkdir()
        np.ones((3, 4), np.float32).tofile(tmp_path / "outside.bin")
        np.ones((3, 4), np.float32).tofile(folder / "w.bin")
        (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
        weight = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entries = {"location": location(tmp_path), **({"length": str(length)} if length else {})}
        for key, value in entries.items():
            weight.external_data.add(key=key, value=value)
        onnx.save(_onnx_model(weight), folder / "ext.onnx")
        return ["inspect", folder / "ext.onnx"]

    return build


def _truncated_onnx(tmp_path: Path, pt2_files) -> list:
    data = _onnx_model(numpy_helper.from_array(np.ones((3, 4), np.float32), "w")).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    return ["inspect", tmp_path / "cut.onnx"]


def _npz(**arrays) -> Callable[[Path, object], list]:
    def build(tmp_path: Path, pt2_files) -> list:
        np.savez(tmp_path / "data.npz", **arrays)
        return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]

    return build


def _npy_named_npz(tmp_path: Path, pt2_files) -> list:
    with (tmp_path / "data.npz").open("wb") as stream:
        np.save(stream, np.zeros((3, 1, 8, 8), np.float32))
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


def _npz_size_mismatch(tmp_path: Path, pt2_files) -> list:
    """The header says 10 samples, the member holds 5."""
    with zipfile.ZipFile(tmp_path / "data.npz", "w") as archive, archive.open("inputs.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (10, 1, 8, 8)})
        member.write(np.zeros((5, 1, 8, 8), np.float32).tobytes())
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


def _npz_negative_shape(tmp_path: Path, pt2_files) -> list:
    """A header whose sizes multiply to a plausible count: (-1, -4) holds 4 values."""
    with zipfile.ZipFile(tmp_path / "data.npz", "w") as archive, archive.open("inputs.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (-1, -4)})
        member.write(bytes(16))
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


def _npz_grows_when_loaded(tmp_path: Path, pt2_files) -> list:
    """300 MiB of booleans (compressed to almost nothing) become 1.2 GiB of float32 once loaded."""
    count = 300 * 2**20
    with zipfile.ZipFile(tmp_path / "data.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("inputs.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|b1", "fortran_order": False, "shape": (count, 1)})
            chunk = bytes(2**24)
            for _ in range(count // len(chunk)):
                member.write(chunk)
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


def _npz_empty(tmp_path: Path, pt2_files) -> list:
    (tmp_path / "data.npz").write_bytes(b"")
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


def _npz_data_folder(tmp_path: Path, pt2_files) -> list:
    (tmp_path / "data.npz").mkdir()
    return ["inspect", "digits_cnn", "--data", tmp_path / "data.npz"]


STRINGS = np.full((3, 1, 8, 8), "a")
FLOATS = np.zeros((3, 1, 8, 8), np.float32)

HOSTILE = {
    "full pickle": (_full_pickle, f"full.pt: is a full Python pickle, not plain weights; {TRUST}"),
    "legacy pickle state_dict": (
        _legacy_pickle_state_dict,
        f"legacy.pt: is a full Python pickle, not plain weights; {TRUST}",
    ),
    "TorchScript .ts": (_torchscript, f"setstate.ts: is a TorchScript archive; {TRUST}"),
    "TorchScript .pt": (_torchscript_as_pt, f"setstate.pt: is a TorchScript archive; {TRUST}"),
    "pt2 use_pickle weight": (
        _pt2_pickled_weight,
        "weights.pt2: is a .pt2 archive that stores 'weight_0' as a pickle (use_pickle in 'data/weights/model_weights_config.json')",
    ),
    "pt2 pickled object": (
        _pt2_pickled_object,
        "object.pt2: is a .pt2 archive that stores 'opaque_obj_0' as a pickle",
    ),
    "pt2 pickled sample inputs": (
        _pt2_pickled_sample_inputs,
        "inputs.pt2: is a .pt2 archive that has an entry 'data/sample_inputs/model.pt' that is a pickle of more than tensors",
    ),
    "pt2 Python shape expression": (
        _pt2_shape_expression,
        "expression.pt2: is a .pt2 archive that has a shape expression that is not plain arithmetic (\"__import__('builtins')",
    ),
    "pt2 node calling os.system": (
        _pt2_python_call,
        "call.pt2: is a .pt2 archive that has a graph node calling 'torch.os.system', which is not a torch operator",
    ),
    "pt2 AOTInductor library": (
        _pt2_aoti_library,
        "aoti.pt2: is a .pt2 archive that holds AOTInductor compiled code ('data/aotinductor/model/model.so')",
    ),
    "pt2 pre-2.7 layout": (
        _pt2_legacy_layout,
        "legacy.pt2: is a .pt2 archive that is in torch's pre-2.7 layout ('serialized_exported_program.json'), "
        "whose loader unpickles its entries",
    ),
    "pt2 shifted zip index": (
        _pt2_shifted_index,
        "shifted.pt2: is a .pt2 archive that has its zip index away from where the archive's end record says",
    ),
    "pt2 repeated entry": (
        _pt2_repeated_entry,
        "twice.pt2: is a .pt2 archive that has two entries named 'models/model.json'",
    ),
    "TorchScript spec not JSON": (
        _torchscript_spec("{not json"),
        f"spec.ts: its stored input spec ({INPUT_SPEC_EXTRA_FILE}) is malformed (Expecting property name",
    ),
    "TorchScript spec bad shape": (
        _torchscript_spec('{"shape": "1,8,8"}'),
        'is malformed (got \'{"shape": "1,8,8"}\'); expected JSON like {"shape": [1, 8, 8]',
    ),
    "TorchScript spec bad dtype": (
        _torchscript_spec('{"shape": [4], "dtype": "str"}'),
        "with dtype one of float32, int64",
    ),
    ".pt with corrupt central directory": (
        _corrupt_central_directory,
        "cd.pt: not a readable PyTorch file (Bad magic number for central directory)",
    ),
    "zip that is not a .pt2": (
        _npz_as_pt2,
        "z.pt2: not a readable torch.export (.pt2) program (it has no 'archive_format' entry",
    ),
    "empty .pt": (_empty("e.pt"), "e.pt: is empty (0 bytes); expected a model file"),
    "empty .onnx": (_empty("e.onnx"), "e.onnx: is empty (0 bytes)"),
    "empty .pt2": (_empty("e.pt2"), "e.pt2: is empty (0 bytes)"),
    "folder": (_folder, "model.onnx: is a folder; expected a model file"),
    "truncated safetensors": (
        _truncated_safetensors,
        "w.safetensors: not a readable safetensors file (Error while deserializing header",
    ),
    "truncated ONNX": (_truncated_onnx, "cut.onnx: not a valid ONNX model"),
    "ONNX external data ..": (_onnx_external(lambda p: "../outside.bin"), "points outside the directory"),
    "ONNX external data absolute": (
        _onnx_external(lambda p: str(p / "outside.bin")),
        "should be a relative path, but it is an absolute path",
    ),
    "ONNX external data symlink": (_onnx_external(lambda p: "link.bin"), "but it is a symbolic link"),
    "ONNX external data oversized": (
        _onnx_external(lambda p: "w.bin", length=10**12),
        "External data length (1000000000000) exceeds available data (48 bytes",
    ),
    ".npy named .npz": (
        _npy_named_npz,
        "data.npz: is a .npy array, not an .npz archive; save with numpy.savez(path, inputs=..., labels=...)",
    ),
    "string labels": (
        _npz(inputs=FLOATS, labels=np.array(["a", "b", "c"])),
        "data.npz: 'labels' has dtype <U1 (strings); expected integer class labels",
    ),
    "float labels": (
        _npz(inputs=FLOATS, labels=np.zeros(3)),
        "data.npz: 'labels' has dtype <f8 (floats); expected integer class labels",
    ),
    "string inputs": (
        _npz(inputs=STRINGS),
        "data.npz: 'inputs' has dtype <U1 (strings); expected numbers (bool, integer or float)",
    ),
    "object inputs": (
        _npz(inputs=np.array([[1], [{}]], dtype=object)),
        "data.npz: 'inputs' has dtype |O (Python objects)",
    ),
    "structured inputs": (
        _npz(inputs=np.zeros((3, 1, 8, 8), dtype=[("a", "f4")])),
        "'inputs' has dtype |V4 (structured/void records)",
    ),
    "datetime inputs": (
        _npz(inputs=np.zeros((3, 1, 8, 8), dtype="datetime64[s]")),
        "'inputs' has dtype <M8[s] (datetimes)",
    ),
    "wrong input shape": (
        _npz(inputs=np.zeros((3, 64), np.float32)),
        "data.npz: input 'input' has samples of shape (64,), but the model takes input float32[N, 1, 8, 8]",
    ),
    "no inputs": (
        _npz(x=FLOATS),
        "data.npz: has no array for input 'input' (found: x); expected 'input' (or 'inputs') and optional 'labels'",
    ),
    "no samples": (
        _npz(inputs=np.zeros((0, 1, 8, 8), np.float32)),
        "input 'input' has no samples (shape (0, 1, 8, 8)); give at least one",
    ),
    "member size mismatch": (
        _npz_size_mismatch,
        "data.npz: member 'inputs.npy' is 1,408 bytes, but its header declares 2,688 (shape (10, 1, 8, 8), float32); "
        "the archive is damaged",
    ),
    "negative shape": (
        _npz_negative_shape,
        "data.npz: member 'inputs.npy' declares the shape (-1, -4), with a negative size",
    ),
    "array that grows when loaded": (
        _npz_grows_when_loaded,
        "data.npz: member 'inputs.npy' takes 1,258,291,200 bytes once loaded (shape (314572800, 1), bool), "
        "over the limit of 536,870,912 bytes",
    ),
    "empty .npz": (_npz_empty, "data.npz: is empty (0 bytes); expected an .npz archive; save with numpy.savez"),
    "data folder": (_npz_data_folder, "data.npz: is a folder; expected an .npz file"),
}
# Payloads that do run once the file is trusted: proof that the refusals above guard something.
FIRES_WHEN_TRUSTED = [
    "full pickle",
    "pt2 use_pickle weight",
    "pt2 pickled object",
    "pt2 pickled sample inputs",
    "pt2 Python shape expression",
]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_one_line_and_runs_nothing(name, tmp_path, pt2_files, capfd):
    build, fragment = HOSTILE[name]
    code, err, out = _cli(build(tmp_path, pt2_files), capfd)
    _assert_one_line(code, err, fragment)
    assert not (tmp_path / MARKER).exists()
    assert SETSTATE_OUTPUT not in out


@pytest.mark.parametrize("name", FIRES_WHEN_TRUSTED)
def test_payload_runs_once_trusted(name, tmp_path, pt2_files, capfd):
    build, _ = HOSTILE[name]
    code, err, _ = _cli([*build(tmp_path, pt2_files), "--trust-code"], capfd)
    assert (tmp_path / MARKER).exists()
    assert code == 2 and err.count("\n") == 1, err  # the payload ran, and the file is still not a model


@pytest.mark.parametrize("name", ["TorchScript .ts", "TorchScript .pt"])
def test_torchscript_setstate_runs_only_when_trusted(name, tmp_path, pt2_files, capfd, monkeypatch):
    argv = HOSTILE[name][0](tmp_path, pt2_files)
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: pytest.fail("torch.jit.load called without trust"))
    code, err, out = _cli(argv, capfd)
    assert code == 2 and "is a TorchScript archive" in err and SETSTATE_OUTPUT not in out
    monkeypatch.setattr(torch.jit, "load", real_load)
    code, err, out = _cli([*argv, "--trust-pickle"], capfd)
    assert code == 0 and SETSTATE_OUTPUT in out


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_clean_pt2_loads_without_trust(kind, pt2_files, capfd):
    code, err, out = _cli(["inspect", pt2_files[kind]], capfd)
    assert code == 0 and "2 layers" not in err and "fc" not in err and "1 layers" in out


def test_real_shape_expressions_are_plain_and_python_is_not():
    s0 = sympy.Symbol("s0", positive=True, integer=True)
    from torch.utils._sympy.functions import FloorDiv

    for expression in (s0, 2 * s0 + 1, sympy.Max(1, s0), FloorDiv(s0, 2), sympy.Eq(s0, 4), -sympy.oo, 1.5 * s0):
        assert is_plain_expression(sympy.srepr(expression)), sympy.srepr(expression)
    for code in (
        "__import__('os').system('x')",
        "Symbol('s0').__class__",
        "open('pwned', 'w')",
        "Max(1, 'Symbol(1)')",
        "Max(1, sympify('x'))",
        "Symbol(*['s0'])",
        "lambda: 0",
    ):
        assert not is_plain_expression(code), code


# ---------------------------------------------------------------- the npz bomb and a few runs in a fresh process


def _stream_zeros_member(archive: zipfile.ZipFile, name: str, count: int) -> None:
    """A float32 .npy member of ``count`` zeros, written 4 MiB at a time (never held in memory)."""
    with archive.open(name, "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
        chunk = bytes(4 * 2**20)
        for _ in range(count * 4 // len(chunk)):
            member.write(chunk)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Two ~5 MB .npz files that unpack to 1 GiB: as 'inputs', and as an unused member beside valid inputs."""
    folder = tmp_path_factory.mktemp("bombs")
    with zipfile.ZipFile(folder / "inputs_bomb.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        _stream_zeros_member(archive, "inputs.npy", GIB // 4)
    with zipfile.ZipFile(folder / "junk_bomb.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("inputs.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros((8, 1, 8, 8), np.float32))
        _stream_zeros_member(archive, "junk.npy", GIB // 4)
    return {name: folder / f"{name}.npz" for name in ("inputs_bomb", "junk_bomb")}


def _run(argv: list, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "compress_core", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_npz_bomb_is_refused_from_its_header(bombs, capfd):
    assert bombs["inputs_bomb"].stat().st_size < 8 * 2**20
    started = time.monotonic()
    code, err, _ = _cli(["inspect", "digits_cnn", "--data", bombs["inputs_bomb"]], capfd)
    assert time.monotonic() - started < 10
    _assert_one_line(
        code,
        err,
        "inputs_bomb.npz: member 'inputs.npy' takes 1,073,741,824 bytes once loaded (shape (268435456,), float32), "
        "over the limit of 536,870,912 bytes; use less data or raise COMPRESS_EXPLORER_MAX_DATA_BYTES",
    )


def test_unused_huge_member_is_never_read(bombs):
    # The peak is read from /proc (VmHWM starts again at exec); ru_maxrss survives exec and would
    # report this test process's own size when it forked the child.
    script = (
        "import resource, sys\n"
        "from compress_core.cli import main\n"
        "code = main(['inspect', 'digits_cnn', '--data', sys.argv[1]])\n"
        "try:\n"
        "    peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "except OSError:\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('peak-kib', peak)\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    command = [sys.executable, "-c", script, str(bombs["junk_bomb"])]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    peak_kib = int(result.stdout.split("peak-kib")[-1])
    assert peak_kib < GIB // 1024, f"peak memory {peak_kib} KiB"


FRESH_PROCESS = ["full pickle", "TorchScript .ts", "pt2 use_pickle weight", ".npy named .npz", "string labels"]


@pytest.mark.parametrize("name", FRESH_PROCESS)
def test_fresh_process_prints_one_line_and_no_traceback(name, tmp_path, pt2_files):
    build, fragment = HOSTILE[name]
    result = _run(build(tmp_path, pt2_files))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and fragment in result.stderr
    assert "Traceback" not in result.stderr and SETSTATE_OUTPUT not in result.stdout
    assert not (tmp_path / MARKER).exists()


def test_npz_bomb_in_a_fresh_process(bombs):
    result = _run(["inspect", "digits_cnn", "--data", bombs["inputs_bomb"]], timeout=60)
    assert result.returncode == 2 and "over the limit of 536,870,912 bytes" in result.stderr
    assert "Traceback" not in result.stderr
