"""The Model Explorer server of the Debug page: its page asks nothing from outside, it serves only
what was published, and Model Explorer's file-reading and conversion calls are not there."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

import onnx
import pytest
from onnx import TensorProto, helper

from compress_core.debug.overlay import node_data
from explorer_ui.model_explorer_server import ModelExplorerServer, onnx_graphs


@pytest.fixture(scope="module")
def server():
    running = ModelExplorerServer()
    yield running
    running.stop()


def _get(server: ModelExplorerServer, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(server.url(path), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _tiny_onnx(path) -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")],
        "main_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_index_loads_its_font_locally_under_a_strict_policy(server):
    status, headers, body = _get(server, "/")
    assert status == 200
    text = body.decode()
    assert "fonts.gstatic.com" not in text and "fonts.googleapis.com" not in text
    assert "static_files/" in text
    policy = headers["Content-Security-Policy"]
    assert "connect-src 'self'" in policy and "font-src 'self' data:" in policy
    fonts = set(re.findall(r"static_files/([\w-]+\.woff2)", text))
    assert len(fonts) >= 10  # Latin, Latin Extended, Greek, Cyrillic, Vietnamese in three weights
    assert all(_get(server, f"/static_files/{font}")[0] == 200 for font in fonts)  # no face asked for in vain


def test_serves_published_graphs_and_overlays_only(server, tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    graphs = server.publish_graphs(onnx_graphs(tmp_path / "tiny.onnx", "int8 graph"))
    overlay = server.publish_node_data(node_data({"/fc/MatMul": 12.5}, ["main_graph"], "own_sqnr_db"), "int8 graph")
    status, _, body = _get(server, f"/api/v1/load_graphs_json?graph_index={graphs}")
    assert status == 200
    served = json.loads(body)["graphs"][0]
    assert served["id"] == "int8 graph" and any(node["id"] == "/fc/MatMul" for node in served["nodes"])
    content = json.loads(json.loads(_get(server, f"/api/v1/load_node_data?node_data_index={overlay}")[2])["content"])
    assert content["int8 graph"]["results"] == {"/fc/MatMul": {"value": 12.5}}
    assert _get(server, f"/api/v1/load_graphs_json?graph_index={graphs + 1}")[0] == 404
    assert _get(server, "/api/v1/load_node_data?node_data_index=x")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/read_text_file?path=/etc/passwd",
        "/api/v1/send_command?json=%7B%7D",
        "/apipost/v1/upload",
        "/../../etc/passwd",
        "/%2e%2e/server.py",
        "/static_files/%00.png",
    ],
)
def test_no_file_reading_conversion_or_escape(server, path):
    assert _get(server, path)[0] == 404


def test_viewer_path_opens_both_models_synced(server):
    path = server.viewer_path([("fp32", 1, "fp32 graph"), ("int8", 2, "int8 graph")], [("own", 3, "int8")])
    data = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["data"][0])
    assert data["models"] == [{"url": "graphs://fp32/1"}, {"url": "graphs://int8/2"}]
    assert data["nodeData"] == ["node_data://own/3"] and data["nodeDataTargets"] == ["int8"]
    assert [pane["selectedGraphId"] for pane in data["uiState"]["paneStates"]] == ["fp32 graph", "int8 graph"]
    assert data["sync"] == {"mode": "match_node_id"}
    assert server.url(path, "localhost:8501").startswith(f"http://localhost:{server.port}/?")
    assert server.url(path, "example.org").startswith(f"http://127.0.0.1:{server.port}/?")
