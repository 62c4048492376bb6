"""The engine calls the app repeats, cached: models with ``st.cache_resource``, numbers with ``st.cache_data``.

Cached models are shared by every session and never mutated (``apply_plan`` copies). Functions that
take a model key it on ``key`` (``ModelSource.key``); the ``_handle`` argument is not hashed. Each
model has one ``PreparedModel`` (``original``: its inventory, ONNX export and baseline, computed
once), and each (model, plan) one ``CompressedModel`` (``compressed``), which Apply builds and
Recover and Export reuse. The netron server is shared too, but each session publishes its graphs
under its own token (``VIEWER_TOKEN`` in ``st.session_state``).
"""

from __future__ import annotations

import atexit
import json
import time
from typing import Any

import streamlit as st

from compress_core import LayerInfo, ModelHandle, load_model
from compress_core.models.handle import Quality
from compress_core.ort.export import to_onnx
from compress_core.ort.layer_map import layer_targets
from compress_core.pipeline import CompressedModel, PreparedModel, compress
from compress_core.plan import Plan

from . import layer_data
from .netron_server import NetronServer, SessionViewer, new_token
from .sources import ModelSource

VIEWER_TOKEN = "netron_token"  # this session's secret in the netron server's model URLs


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(key: str, _source: ModelSource) -> ModelHandle:
    """``_source`` loaded; cached under ``key``, which names it exactly (``ModelSource.key``)."""
    return load_model(
        _source.source,
        input_shape=_source.input_shape,
        inputs=dict(_source.inputs),
        data=_source.data,
        architecture=_source.architecture,
        trust_code=_source.trust_code,
        quality=Quality(_source.task, _source.output, _source.ctc_blank),
    )


def load_handle(source: ModelSource) -> ModelHandle:
    """The loaded model of ``source``; raises ``CompressError`` (never cached) for a bad one."""
    return _load(source.key, source)


@st.cache_resource(show_spinner=False, max_entries=8)
def original(key: str, _handle: ModelHandle) -> PreparedModel:
    """The model named by ``key`` with its inventory, ONNX export and baseline, each computed once (shared)."""
    return PreparedModel(_handle)


@st.cache_resource(show_spinner=False, max_entries=4)
def _compressed(key: str, plan_json: str, _handle: ModelHandle) -> CompressedModel:
    return compress(original(key, _handle), Plan.from_dict(json.loads(plan_json), "plan"))


def compressed(key: str, plan: Plan, handle: ModelHandle) -> CompressedModel:
    """The model named by ``key`` with ``plan`` applied, built once per (model, plan) and shared; a
    ``CompressError`` for a plan the model cannot take (never cached)."""
    return _compressed(key, json.dumps(plan.to_dict(), sort_keys=True), handle)


@st.cache_data(show_spinner=False, max_entries=16)
def inventory(key: str, _handle: ModelHandle) -> list[LayerInfo]:
    """The layer inventory of the model named by ``key`` (a copy of ``original``'s)."""
    return original(key, _handle).inventory


@st.cache_data(show_spinner=False, max_entries=16)
def baseline_metrics(key: str, _handle: ModelHandle) -> dict[str, Any]:
    """Accuracy, fidelity, size and compute of the uncompressed model (a copy of ``original``'s)."""
    return original(key, _handle).baseline().metrics


@st.cache_resource(show_spinner=False, max_entries=8)
def pass_seconds(key: str, _handle: ModelHandle) -> float:
    """Seconds for one run of the model over its evaluation data (what a sweep cell or an evaluation costs)."""
    started = time.perf_counter()
    _handle.run(_handle.data.inputs)
    return time.perf_counter() - started


@st.cache_data(show_spinner=False, max_entries=4)
def onnx_bytes(key: str, _handle: ModelHandle) -> bytes:
    """The model as a serialized ONNX file (BatchNorm kept, so the graph mirrors the model)."""
    return to_onnx(_handle, fold_batchnorm=False).SerializeToString()


@st.cache_data(show_spinner=False, max_entries=16)
def onnx_node_names(key: str, _handle: ModelHandle) -> dict[str, str]:
    """Layer name -> the ONNX node that computes it in the served graph (layers found there only)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes(key, _handle))
    targets = layer_targets(_handle, model, inventory(key, _handle))
    return {name: target.node for name, target in targets.items()}


@st.cache_data(show_spinner=False, max_entries=64)
def quantization_view(
    key: str, _handle: ModelHandle, layer: str, bits: int, scheme: str, granularity: str, channel: int
) -> dict[str, Any]:
    """``layer_data.quantization_view`` of one layer's weight."""
    info = _layer(key, _handle, layer)
    return layer_data.quantization_view(
        layer_data.layer_weight(_handle, info), info.out_axis, bits, scheme, granularity, channel
    )


@st.cache_data(show_spinner=False, max_entries=32)
def spectrum_view(key: str, _handle: ModelHandle, layer: str) -> dict[str, Any]:
    """``layer_data.spectrum_view`` of one layer's weight."""
    info = _layer(key, _handle, layer)
    return layer_data.spectrum_view(layer_data.layer_weight(_handle, info), info.out_axis)


@st.cache_data(show_spinner=False, max_entries=32)
def mask_view(key: str, _handle: ModelHandle, layer: str, ratio: float, kind: str) -> dict[str, Any]:
    """``layer_data.mask_view`` of one layer's weight."""
    info = _layer(key, _handle, layer)
    return layer_data.mask_view(layer_data.layer_weight(_handle, info), info.out_axis, ratio, kind)


def _layer(key: str, handle: ModelHandle, name: str) -> LayerInfo:
    return next(info for info in inventory(key, handle) if info.name == name)


@st.cache_resource(show_spinner=False)
def _netron_server() -> NetronServer:
    """The one netron server of this app process, stopped when the process exits."""
    server = NetronServer()
    atexit.register(server.stop)
    return server


def netron_server() -> SessionViewer:
    """The netron server as this session uses it: the graphs it publishes are served only under
    this session's unguessable token."""
    token = st.session_state.get(VIEWER_TOKEN)
    if token is None:
        token = st.session_state[VIEWER_TOKEN] = new_token()
    return _netron_server().for_session(token)
