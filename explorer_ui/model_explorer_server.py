"""A local HTTP server for Google's Model Explorer web app, with graphs and overlays the app converted
itself, and nothing leaving 127.0.0.1.

Model Explorer's own server (``model_explorer.server``, Flask) also reads any file the page names
(``/api/v1/read_text_file?path=``), converts any path it is sent, accepts uploads and asks PyPI and
GitHub for a newer release. This server answers none of that. It serves:

* the web app's static files (``model_explorer/web_app``), with ``index.html`` patched so that its
  Google Sans Text faces load from the wheel's own ``static_files/`` (the same ``.woff2`` files that
  ``fonts.gstatic.com`` would send; faces it does not ship are dropped), and with a Content-Security-Policy of ``connect-src 'self'`` and
  ``font-src 'self'`` on every response, so the browser refuses any request to another origin;
* ``/api/v1/load_graphs_json?graph_index=N``: graphs converted in-process by the ONNX adapter
  (``model_explorer_onnx``), published with ``publish_graphs``;
* ``/api/v1/load_node_data?node_data_index=N``: overlays published with ``publish_node_data``;
* ``/api/v1/get_extensions`` (the built-in loaders only) and ``/api/v1/check_new_version`` (no
  version: nothing is looked up).

Published items are kept under random 52-bit indices (``secrets.randbelow``: the web app parses the
index as a JavaScript number), so another session or page cannot guess them; the last
``KEPT_ITEMS`` are kept. ``viewer_path`` builds the page URL (``/?data=...``) that opens models side
by side, their navigation synced, with overlays applied to named models.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from explorer_ui.local_server import LocalHandler, LocalServer
from explorer_ui.netron_server import request_path

KEPT_ITEMS = 64
INDEX_BITS = 52
FONT_ORIGIN = re.compile(r"https://fonts\.gstatic\.com/s/[a-z0-9]+/v[0-9]+/")
FONT_FACE = re.compile(r"@font-face\{[^}]*\}")
FONT_URL = re.compile(r"url\(([^)]*)\)")
FONT_PRECONNECT = re.compile(r'<link rel="preconnect" href="https://fonts\.gstatic\.com"[^>]*>')
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; frame-src 'none'; form-action 'none'; base-uri 'self'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
NO_VERSION = {"version": "", "runningVersion": "", "releaseUrl": "", "desktopAppUrl": ""}


def web_app_dir() -> Path:
    """The folder of Model Explorer's built web app (in the ``ai-edge-model-explorer`` wheel)."""
    import model_explorer

    return Path(model_explorer.__file__).resolve().parent / "web_app"


def onnx_graphs(path: str | Path, graph_id: str) -> str:
    """The Model Explorer graphs JSON of an ONNX file, converted by the ``model-explorer-onnx`` adapter,
    its main graph named ``graph_id``.

    Two models exported alike both call their graph ``main_graph``; the web app would rename the
    second (``main_graph (2)``), so each model's graph gets an id of its own, which its overlays use.
    """
    from model_explorer.utils import convert_adapter_response
    from model_explorer_onnx.main import ONNXAdapter

    converted = convert_adapter_response(ONNXAdapter().convert(str(path), {}))
    converted["graphs"][0]["id"] = graph_id
    return json.dumps(converted)


class ModelExplorerServer(LocalServer):
    """Model Explorer's web app plus published graphs and overlays, on ``127.0.0.1`` at a free port."""

    def __init__(self) -> None:
        self._graphs: dict[int, str] = {}
        self._node_data: dict[int, str] = {}
        self._lock = threading.Lock()
        self._root = web_app_dir()
        self.extensions = json.dumps(_builtin_extensions())
        super().__init__(_Handler, "model-explorer")

    def _keep(self, store: dict[int, str], content: str) -> int:
        index = secrets.randbelow(2**INDEX_BITS)
        with self._lock:
            store[index] = content
            for stale in list(store)[:-KEPT_ITEMS]:
                del store[stale]
        return index

    def publish_graphs(self, graphs_json: str) -> int:
        """Keep a graphs JSON (``onnx_graphs``); returns the index its ``graphs://`` URL names."""
        return self._keep(self._graphs, graphs_json)

    def publish_node_data(self, node_data: dict[str, Any], graph_id: str) -> int:
        """Keep an overlay (``compress_core.debug.overlay.node_data``, one graph's data, whatever its
        key) for the graph ``graph_id``; returns its index."""
        graph: dict[str, Any] = next(iter(node_data.values()), {"results": {}})
        return self._keep(self._node_data, json.dumps({graph_id: graph}))

    def viewer_path(
        self,
        models: list[tuple[str, int, str]],
        overlays: list[tuple[str, int, str]],
        sync: bool = True,
    ) -> str:
        """The page path that opens ``models`` (name, graphs index, graph id) side by side, each overlay
        (name, index, target model name) applied to its model, layers flattened (every op node shown:
        the ONNX adapter groups them all under one node named after the graph), navigation synced by
        node id."""
        data: dict[str, Any] = {
            "models": [{"url": f"graphs://{name}/{index}"} for name, index, _ in models],
            "nodeData": [f"node_data://{name}/{index}" for name, index, _ in overlays],
            "nodeDataTargets": [target for _, _, target in overlays],
        }
        if len(models) > 1:
            data["uiState"] = {
                "paneStates": [
                    {
                        "deepestExpandedGroupNodeIds": [],
                        "flattenLayers": True,
                        "selectedNodeId": "",
                        "selectedGraphId": graph,
                        "selectedCollectionLabel": name,
                        "widthFraction": 1 / len(models),
                    }
                    for name, _, graph in models
                ]
            }
            if sync:
                data["sync"] = {"mode": "match_node_id"}
        return "/?" + urllib.parse.urlencode({"data": json.dumps(data), "renderer": "webgl"})

    def graphs(self, index: int) -> str | None:
        with self._lock:
            return self._graphs.get(index)

    def node_data(self, index: int) -> str | None:
        with self._lock:
            return self._node_data.get(index)

    def static(self, path: str) -> bytes | None:
        """One of the web app's files (``index.html`` patched), None for anything else."""
        if path in ("/", "/index.html"):
            return _index_html(self._root)
        try:
            file = (self._root / path.lstrip("/")).resolve()
            inside = file.is_relative_to(self._root) and file.suffix in CONTENT_TYPES and file.is_file()
            return file.read_bytes() if inside else None
        except OSError:
            return None


def _builtin_extensions() -> list[dict[str, Any]]:
    """The metadata of Model Explorer's built-in adapters (the JSON loader among them), no extension loaded."""
    from model_explorer.extension_manager import ExtensionManager

    manager = ExtensionManager([])
    manager.load_extensions()
    return list(manager.get_extensions_metadata())


def _index_html(root: Path) -> bytes:
    """The web app's index.html with its Google web font served from the wheel's own files.

    The wheel ships the Latin, Latin Extended, Vietnamese, Greek and Cyrillic faces; the rules of the
    other scripts' faces are dropped (those characters fall back to a system font), so that the page
    asks for no file that is not there.
    """
    text = (root / "index.html").read_text(encoding="utf-8")
    text = FONT_PRECONNECT.sub("", text)
    text = FONT_ORIGIN.sub("static_files/", text)

    def shipped(rule: re.Match[str]) -> str:
        url = FONT_URL.search(rule.group(0))
        return rule.group(0) if url is None or (root / url.group(1).lstrip("/")).is_file() else ""

    text = FONT_FACE.sub(shipped, text)
    if "fonts.gstatic.com" in text or "fonts.googleapis.com" in text:
        raise RuntimeError(f"Model Explorer's index.html in {root} has changed; update model_explorer_server")
    return text.encode("utf-8")


class _Handler(LocalHandler):
    """Serves the web app, the published graphs and overlays, and the two harmless API calls."""

    server_state: ModelExplorerServer
    content_security_policy = CONTENT_SECURITY_POLICY

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = request_path(self.path)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        state = self.server_state
        if path is None:
            self._send(None, "")
        elif path == "/api/v1/load_graphs_json":
            graphs = state.graphs(_index(query, "graph_index"))
            self._send(None if graphs is None else graphs.encode(), CONTENT_TYPES[".json"])
        elif path == "/api/v1/load_node_data":
            data = state.node_data(_index(query, "node_data_index"))
            self._send(None if data is None else json.dumps({"content": data}).encode(), CONTENT_TYPES[".json"])
        elif path == "/api/v1/get_extensions":
            self._send(state.extensions.encode(), CONTENT_TYPES[".json"])
        elif path == "/api/v1/check_new_version":
            self._send(json.dumps(NO_VERSION).encode(), CONTENT_TYPES[".json"])
        elif path.startswith(("/api", "/apipost", "/apistream")):
            self._send(None, "")
        else:
            self._send(state.static(path), CONTENT_TYPES.get(Path(path).suffix or ".html", "text/plain"))


def _index(query: dict[str, list[str]], key: str) -> int:
    try:
        return int(query.get(key, ["-1"])[0])
    except ValueError:
        return -1
