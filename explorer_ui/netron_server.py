"""A local HTTP server for netron's viewer and one model file, with nothing leaving 127.0.0.1.

Netron's page, as shipped, asks ipinfo.io where the user is, shows a cookie-consent prompt, and
then sends usage telemetry (with the page title, i.e. the model's file name) to Google Analytics.
This server prevents all of it:

* every response sets the ``consent`` cookie that ``browser.js`` checks before it asks ipinfo.io
  and shows the prompt (``if (this._getCookie('consent') || ...) return;``);
* every response carries a Content-Security-Policy with ``connect-src 'self'``, so the browser
  refuses any request to another origin (telemetry included);
* ``index.html`` is served with its build date set to today, so netron's "please update" screen
  (shown 180 days after its build) never blocks an offline viewer;
* ``index.html`` is served with its version set to ``0.0.0``, netron's mark of a development build:
  ``browser.js`` starts Google Analytics (and its error reports) only for a packaged version
  (``packaged: version !== '0.0.0'``), so the telemetry is never started, not only blocked.

The model is opened from the URL (``/?url=model/<token>/<digest>/<name>.onnx``), so the graph
shows at once. Netron has no URL parameter that selects a node, so ``index.html`` also loads this
server's ``focus.js``: with ``&node=<ONNX node name>`` in the URL (``with_node``) it waits for the
graph to be drawn, then selects that node and scrolls it into view, as netron's own Find does. The server is shared by every session of the app, and a model is served only under
the token of the session that published it: an unguessable ``secrets.token_urlsafe`` that only
that session's page holds (``for_session``), so no other session, and no other web page that
guesses the port, can fetch it. ``publish`` adds a model (the server keeps the last
``KEPT_MODELS`` published, all sessions together, each under its token and content digest);
``stop`` ends the server. A request the server cannot read (bad percent-encoding, a control
character, invalid UTF-8, overlong) is answered 404 like any unknown path.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import netron

from explorer_ui.local_server import LocalHandler, LocalServer

NETRON_DIR = Path(netron.__file__).resolve().parent
CONSENT_COOKIE = "consent"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; frame-src 'none'; "
    "form-action 'none'; base-uri 'self'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".svg": "image/svg+xml",
}
DATE_META = re.compile(r'<meta name="date" content="[^"]*">')
VERSION_META = re.compile(r'<meta name="version" content="[^"]*">')
DEVELOPMENT_VERSION = "0.0.0"  # browser.js: packaged (telemetry on) only when the version is not this
INDEX_SCRIPT = '<script type="text/javascript" src="index.js"></script>'
FOCUS_PATH = "/focus.js"
FOCUS_ATTRIBUTE = "data-focused-node"  # set on <body> once the node of ``&node=`` is selected
FOCUS_SECONDS = 120  # how long focus.js waits for a large graph to be drawn
FOCUS_SCRIPT = f"""// Compression Explorer: select the node named by ?node= once netron has drawn the graph.
(function () {{
  'use strict';
  var wanted = new URLSearchParams(window.location.search).get('node');
  if (!wanted) {{
    return;
  }}
  var started = Date.now();
  var timer = window.setInterval(function () {{
    if (Date.now() - started > {FOCUS_SECONDS * 1000}) {{
      window.clearInterval(timer);
      return;
    }}
    var view = window.__view__;
    var graph = view && view._target;
    var classes = window.exports && window.exports.view;
    if (!graph || !graph._table || !classes || !document.querySelector('#canvas g.node')) {{
      return;
    }}
    try {{
      var found = null;
      graph._table.forEach(function (element, value) {{
        if (!found && value && value.name === wanted && element instanceof classes.Node) {{
          found = value;
        }}
      }});
      window.clearInterval(timer);
      if (found) {{
        graph.scrollTo(graph.select([found]), 'instant');
        document.body.setAttribute('{FOCUS_ATTRIBUTE}', wanted);
      }}
    }} catch (error) {{
      // the graph is still being laid out: try again on the next tick
    }}
  }}, 250);
}})();
"""
MODEL_PREFIX = "/model/"
KEPT_MODELS = 8
TOKEN_BYTES = 24
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32}")  # what token_urlsafe(TOKEN_BYTES) gives
MAX_PATH_LENGTH = 2048
BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a '%' not followed by two hex digits
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def new_token() -> str:
    """A fresh, unguessable session token for model URLs."""
    return secrets.token_urlsafe(TOKEN_BYTES)


class NetronServer(LocalServer):
    """netron's static files plus the published models, on ``127.0.0.1`` at a free port."""

    def __init__(self) -> None:
        self._models: dict[str, bytes] = {}
        self._lock = threading.Lock()
        super().__init__(_Handler, "netron-server")

    def publish(self, filename: str, content: bytes, token: str) -> str:
        """Serve ``content`` under the session ``token`` and return the viewer's path (``/?url=...``)
        that opens it.

        The digest in the model's path changes with the content, so a browser never shows a stale graph.
        """
        if not TOKEN_SHAPE.fullmatch(token):
            raise ValueError("a model is published under a token made by new_token()")
        digest = hashlib.sha256(content).hexdigest()[:12]
        path = f"{MODEL_PREFIX}{token}/{digest}/{Path(filename).name}"
        with self._lock:
            self._models.pop(path, None)
            self._models[path] = content
            for stale in list(self._models)[:-KEPT_MODELS]:
                del self._models[stale]
        return "/?" + urllib.parse.urlencode({"url": urllib.parse.quote(path.lstrip("/"))})

    @staticmethod
    def with_node(viewer_path: str, node: str | None) -> str:
        """``viewer_path`` that opens with the ONNX node ``node`` selected and in view (as is for None)."""
        return viewer_path if not node else f"{viewer_path}&{urllib.parse.urlencode({'node': node})}"

    def for_session(self, token: str) -> SessionViewer:
        """This server as the session holding ``token`` uses it."""
        return SessionViewer(self, token)

    def viewer_url(self, viewer_path: str, page_host: str | None) -> str:
        """The absolute URL of ``viewer_path`` for a browser showing the app at ``page_host``.

        The server listens on 127.0.0.1 only. When the app itself is open at ``localhost`` the viewer
        is addressed as ``localhost`` too, so that it is the same site as the app and its consent
        cookie is not a (blocked) third-party cookie (``LocalServer.url``).
        """
        return self.url(viewer_path, page_host)

    def model(self, path: str) -> bytes | None:
        """The bytes of the published model at ``path`` (decoded, token included), if it is still kept."""
        with self._lock:
            return self._models.get(path)


@dataclass(frozen=True)
class SessionViewer:
    """The server as one session sees it: what it publishes is served under its own token only."""

    server: NetronServer
    token: str

    def publish(self, filename: str, content: bytes) -> str:
        """``NetronServer.publish`` under this session's token."""
        return self.server.publish(filename, content, self.token)

    def viewer_url(self, viewer_path: str, page_host: str | None, node: str | None = None) -> str:
        """``NetronServer.viewer_url`` of ``viewer_path`` opened at ``node`` (``NetronServer.with_node``)."""
        return self.server.viewer_url(NetronServer.with_node(viewer_path, node), page_host)


class _Handler(LocalHandler):
    """Serves ``/`` (netron's index.html, patched), ``focus.js``, netron's files, and the published models."""

    server_state: NetronServer
    content_security_policy = CONTENT_SECURITY_POLICY
    extra_headers = (("Set-Cookie", f"{CONSENT_COOKIE}=1; Path=/; Max-Age=31536000; SameSite=Lax"),)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = request_path(self.path)
        if path is None:
            self._send(None, "")
        elif path.startswith(MODEL_PREFIX):
            self._send(self.server_state.model(path), "application/octet-stream")
        elif path in ("/", "/index.html"):
            self._send(_index_html(), CONTENT_TYPES[".html"])
        elif path == FOCUS_PATH:
            self._send(FOCUS_SCRIPT.encode("utf-8"), CONTENT_TYPES[".js"])
        else:
            self._send(_static_file(path), CONTENT_TYPES.get(Path(path).suffix, "text/plain"))


def request_path(target: str) -> str | None:
    """The decoded path of a request target; None when it is overlong, badly percent-encoded, not
    UTF-8, or holds a control character (a NUL among them)."""
    if len(target) > MAX_PATH_LENGTH:
        return None
    try:
        encoded = urllib.parse.urlsplit(target).path
        path = urllib.parse.unquote_to_bytes(encoded).decode("utf-8")
    except ValueError:  # UnicodeDecodeError among them
        return None
    if not path.startswith("/") or BAD_PERCENT.search(encoded) or CONTROL_CHARACTER.search(path):
        return None
    return path


def _static_file(path: str) -> bytes | None:
    """The bytes of one of netron's own files (by a known suffix), None for anything else."""
    try:
        file = (NETRON_DIR / path.lstrip("/")).resolve()
        inside = file.is_relative_to(NETRON_DIR) and file.suffix in CONTENT_TYPES and file.is_file()
        return file.read_bytes() if inside else None
    except OSError:
        return None


def _index_html() -> bytes:
    """netron's index.html dated today, marked a development build (no telemetry), loading ``focus.js``."""
    text = (NETRON_DIR / "index.html").read_text(encoding="utf-8")
    today = datetime.date.today().isoformat()
    text = DATE_META.sub(f'<meta name="date" content="{today} 00:00:00">', text)
    text, versions = VERSION_META.subn(f'<meta name="version" content="{DEVELOPMENT_VERSION}">', text)
    if versions != 1 or INDEX_SCRIPT not in text:  # another netron: refuse to serve it with telemetry on
        raise RuntimeError(f"netron's index.html in {NETRON_DIR} has changed; update netron_server._index_html")
    focus = f'<script type="text/javascript" src="{FOCUS_PATH.lstrip("/")}"></script>'
    return text.replace(INDEX_SCRIPT, f"{INDEX_SCRIPT}\n{focus}", 1).encode("utf-8")
