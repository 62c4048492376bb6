"""The trust gate: model files whose loading can run code stored in them, recognised before torch opens them.

TorchScript archives (their ``__setstate__`` and ``forward`` are code) and full pickles always can.
A ``.pt2`` archive can when it holds pickled entries, a compiled AOTInductor library, shape
expressions that are not plain arithmetic (torch evaluates them with ``sympy.sympify``, i.e. ``eval``)
or graph nodes that call something other than a torch operator. Such files load only when trusted.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from compress_core.errors import CompressError, first_line

TRUST_HINT = (
    "so it is refused unless you say you trust it (CLI: --trust-code; app: tick 'I trust this file: it may run code')"
)
# What reading a damaged zip archive (or a member of one) can raise; RuntimeError is an encrypted member.
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError, zlib.error)
# A .pt2 entry that must be read to be checked (.json, .pt) is not read when larger than this (a graph is far smaller).
MAX_CHECKED_ENTRY_BYTES = 256 * 2**20
AOTI_DIR = "data/aotinductor/"
LEGACY_PREFIX = "serialized_"  # torch < 2.7 wrote serialized_exported_program.json, serialized_state_dict.json, ...
PICKLED_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
# The callables a shape expression (sympy ``srepr`` text) may name: sympy's and torch's symbolic functions.
SYMPY_NAMES = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Mod",
        "Abs",
        "floor",
        "ceiling",
        "Piecewise",
        "ExprCondPair",
        "Equality",
        "Unequality",
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "And",
        "Or",
        "Not",
        "true",
        "false",
        "oo",
        "zoo",
        "nan",
        "int_oo",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "IntTrueDiv",
        "FloatTrueDiv",
        "FloatPow",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "IsNonOverlappingAndDenseIndicator",
        "OpaqueUnaryFn_acos",
        "OpaqueUnaryFn_asin",
        "OpaqueUnaryFn_asinh",
        "OpaqueUnaryFn_atan",
        "OpaqueUnaryFn_cos",
        "OpaqueUnaryFn_cosh",
        "OpaqueUnaryFn_exp",
        "OpaqueUnaryFn_log",
        "OpaqueUnaryFn_log2",
        "OpaqueUnaryFn_sin",
        "OpaqueUnaryFn_sinh",
        "OpaqueUnaryFn_sqrt",
        "OpaqueUnaryFn_tan",
        "OpaqueUnaryFn_tanh",
        "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or",
        "BitwiseFn_bitwise_xor",
    }
)
# Strings in a shape expression: symbol names and Float digits, nothing that sympify could evaluate as code.
PLAIN_STRING = re.compile(r"[A-Za-z0-9_]+|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
PLAIN_AST_NODES = (ast.Expression, ast.Load, ast.UnaryOp, ast.USub, ast.UAdd)
# torch's deserializer resolves a node's target by attribute lookup from one of these.
TARGET_ROOTS = {"torch": torch, "_operator": operator, "math": math}


def require_trust(path: Path, what: str, trusted: bool) -> None:
    """Refuse, in one line, a file that ``what`` describes as able to run code, unless it is trusted."""
    if not trusted:
        raise CompressError(f"{path}: {what}; loading it runs code stored in the file, {TRUST_HINT}")


def is_torchscript(archive: zipfile.ZipFile) -> bool:
    """TorchScript archives hold compiled ``code/`` (or ``constants.pkl``); ``torch.save`` files hold only ``data/``."""
    return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def is_pt2_archive(archive: zipfile.ZipFile) -> bool:
    """Whether ``torch.export.save`` wrote the archive: its ``archive_format`` entry, or torch 2.7's program JSON."""
    names = {_inner_name(name) for name in archive.namelist()}
    return "archive_format" in names or "serialized_exported_program.json" in names


def pt2_code_risk(archive: zipfile.ZipFile) -> str | None:
    """What in a ``.pt2`` archive would make ``torch.export.load`` run code from it, or None.

    The answer completes "is a .pt2 archive that ...". Raises ``ZIP_ERRORS`` for a damaged archive.
    """
    risk = _layout_risk(archive)
    if risk is not None:
        return risk
    for info in archive.infolist():
        risk = _member_risk(archive, info)
        if risk is not None:
            return risk
    return None


def _layout_risk(archive: zipfile.ZipFile) -> str | None:
    """What makes torch read the archive differently from this check: torch's pre-2.7 layout (whose
    loader retries every ``serialized_*`` entry with full unpickling, whatever its name), two entries
    of one name, or a central directory that is not where the end record says (Python's reader then
    shifts every offset, torch's does not, and the two see different files)."""
    names = [_inner_name(info.filename) for info in archive.infolist()]
    legacy = next((name for name in names if name.startswith(LEGACY_PREFIX)), None)
    if legacy is not None:
        return f"is in torch's pre-2.7 layout ('{legacy}'), whose loader unpickles its entries"
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        return f"has two entries named '{repeated}'"
    if archive.fp is None or _central_directory_shift(archive.fp) != 0:
        return "has its zip index away from where the archive's end record says"
    return None


def _central_directory_shift(stream: IO[bytes]) -> int:
    """How far the central directory sits from where the end record says (``zipfile``'s "concat"): 0 in
    an archive that every zip reader reads alike."""
    end = zipfile._EndRecData(stream)  # type: ignore[attr-defined]  # zipfile's own reading of the end record
    if end is None:
        return -1
    shift = end[zipfile._ECD_LOCATION] - end[zipfile._ECD_SIZE] - end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        shift -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    return int(shift)


def _member_risk(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    name = _inner_name(info.filename)
    if name.startswith(AOTI_DIR):
        return f"holds AOTInductor compiled code ('{name}')"
    if name.endswith(".pkl"):
        return f"has a pickled entry '{name}'"
    if not name.endswith((".pt", ".json")):
        return None
    if info.file_size > MAX_CHECKED_ENTRY_BYTES:
        return f"has an entry '{name}' of {info.file_size:,} bytes, too large to check"
    if name.endswith(".pt"):
        plain = _loads_as_weights(archive.read(info))
        return None if plain else f"has an entry '{name}' that is a pickle of more than tensors"
    return _json_risk(name, archive.read(info))


def _inner_name(member: str) -> str:
    """A member's name as torch reads it: without the archive's top folder (messages use it too)."""
    return member.split("/", 1)[-1]


def _loads_as_weights(data: bytes) -> bool:
    """torch reads ``.pt`` entries with ``weights_only=True`` and, when that fails, unpickles them fully."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure here sends torch down its full-unpickling fallback
        return False
    return True


def _json_risk(member: str, data: bytes) -> str | None:
    try:
        document = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return f"has an entry '{member}' that is not JSON"  # torch would fail on it, or take another path
    for node in _dicts(document):
        risk = _payload_risk(member, node) or _expression_risk(node) or _target_risk(node)
        if risk is not None:
            return risk
    return None


def _dicts(document: Any) -> Iterator[dict]:
    """Every JSON object inside ``document``, depth first, without recursion."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _payload_risk(member: str, node: dict) -> str | None:
    """Weights and constants configs: entries marked ``use_pickle`` and pickled custom objects."""
    path_name = str(node.get("path_name", ""))
    if node.get("use_pickle"):
        return f"stores '{path_name}' as a pickle (use_pickle in '{member}')"
    if path_name.startswith(PICKLED_OBJECT_PREFIXES):
        return f"stores a pickled object '{path_name}' (in '{member}')"
    return None


def _expression_risk(node: dict) -> str | None:
    text = node.get("expr_str")
    if isinstance(text, str) and not is_plain_expression(text):
        return f"has a shape expression that is not plain arithmetic ({text[:80]!r})"
    return None


def _target_risk(node: dict) -> str | None:
    target = node.get("target")
    if isinstance(target, str) and "inputs" in node and "outputs" in node and not _is_operator(target):
        return f"has a graph node calling '{target[:80]}', which is not a torch operator"
    return None


def is_plain_expression(text: str) -> bool:
    """Whether ``text`` is sympy ``srepr`` arithmetic: known constructors, numbers and plain strings only."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return all(_is_plain_node(node) for node in ast.walk(tree))


def _is_plain_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name)
    if isinstance(node, ast.Name):
        return node.id in SYMPY_NAMES
    if isinstance(node, ast.keyword):
        return node.arg is not None
    if isinstance(node, ast.Constant):
        value = node.value
        return (
            value is None
            or isinstance(value, (int, float))
            or (isinstance(value, str) and PLAIN_STRING.fullmatch(value) is not None)
        )
    return isinstance(node, PLAIN_AST_NODES)


def _is_operator(target: str) -> bool:
    """Resolve ``target`` as torch's deserializer does; accept only operators, never other callables."""
    from torch._export.serde.serialize import _SYM_OPS

    root, *names = target.split(".")
    value = TARGET_ROOTS.get(root)
    if value is None or any(name.startswith("__") for name in names):
        return False
    for name in names:
        value = getattr(value, name, None)
        if value is None:
            return False
    if isinstance(value, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    return any(value is op for op in _SYM_OPS)


@contextmanager
def zip_archive(path: Path, what: str, content: bytes | None = None) -> Iterator[zipfile.ZipFile]:
    """``path`` (or its ``content``, already read) open as a zip archive; a damaged one (also while
    reading) is a one-line error naming ``what``.

    The body must not raise ``CompressError`` itself: it is a ``ValueError``, one of ``ZIP_ERRORS``.
    """
    try:
        with zipfile.ZipFile(path if content is None else io.BytesIO(content)) as archive:
            yield archive
    except ZIP_ERRORS as exc:
        raise CompressError(f"{path}: not a readable {what} ({first_line(exc)})") from exc
