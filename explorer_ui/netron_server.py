"""A local HTTP server for netron's viewer and one model file, with nothing leaving 127.0.0.1.

Netron's page, as shipped, asks ipinfo.io where the user is, shows a cookie-consent prompt, and
then sends usage telemetry (with the page title, i.e. the model's file name) to Google Analytics.
This server prevents all of it:

* every response sets the ``consent`` cookie that ``browser.js`` checks before it asks ipinfo.io
  and shows the prompt (``if (this._getCookie('consent') || ...) return;``);
* every response carries a Content-Security-Policy with ``connect-src 'self'``, so the browser
  refuses any request to another origin (telemetry included);
* ``index.html`` is served with its build date set to today, so netron's "please update" screen
  (shown 180 days after its build) never blocks an offline viewer.

The model is opened from the URL (``/?url=model/<digest>/<name>.onnx``), so the graph shows at
once. ``publish`` adds a model (the server is shared by every session of the app, so it keeps the
last ``KEPT_MODELS`` published, each under its own content digest); ``stop`` ends the server.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import re
import threading
import urllib.parse
from pathlib import Path

import netron

NETRON_DIR = Path(netron.__file__).resolve().parent
HOST = "127.0.0.1"
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
MODEL_PREFIX = "/model/"
KEPT_MODELS = 8


class NetronServer:
    """netron's static files plus one published model, on ``127.0.0.1`` at a free port."""

    def __init__(self) -> None:
        self._models: dict[str, bytes] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="netron-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    def publish(self, filename: str, content: bytes) -> str:
        """Serve ``content`` as the model and return the viewer's path (``/?url=...``) that opens it.

        The digest in the model's path changes with the content, so a browser never shows a stale graph.
        """
        digest = hashlib.sha256(content).hexdigest()[:12]
        path = f"{MODEL_PREFIX}{digest}/{urllib.parse.quote(Path(filename).name)}"
        with self._lock:
            self._models.pop(path, None)
            self._models[path] = content
            for stale in list(self._models)[:-KEPT_MODELS]:
                del self._models[stale]
        return "/?" + urllib.parse.urlencode({"url": path.lstrip("/")})

    def viewer_url(self, viewer_path: str, page_host: str | None) -> str:
        """The absolute URL of ``viewer_path`` for a browser showing the app at ``page_host``.

        The server listens on 127.0.0.1 only. When the app itself is open at ``localhost`` the viewer
        is addressed as ``localhost`` too, so that it is the same site as the app and its consent
        cookie is not a (blocked) third-party cookie.
        """
        name = (page_host or HOST).rsplit(":", 1)[0]
        return f"http://{'localhost' if name == 'localhost' else HOST}:{self.port}{viewer_path}"

    def model(self, path: str) -> bytes | None:
        """The bytes of the published model at ``path``, if it is still kept."""
        with self._lock:
            return self._models.get(path)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``/`` (netron's index.html, patched date), netron's files, and the published model."""

    server_state: NetronServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path.startswith(MODEL_PREFIX):
            content = self.server_state.model(urllib.parse.quote(path))
            self._send(content, "application/octet-stream")
        elif path in ("/", "/index.html"):
            self._send(_index_html(), CONTENT_TYPES[".html"])
        else:
            file = (NETRON_DIR / path.lstrip("/")).resolve()
            inside = file.is_relative_to(NETRON_DIR) and file.is_file() and file.suffix in CONTENT_TYPES
            self._send(file.read_bytes() if inside else None, CONTENT_TYPES.get(file.suffix, "text/plain"))

    def _send(self, content: bytes | None, content_type: str) -> None:
        if content is None:
            content, content_type = b"not found", "text/plain"
            self.send_response(404)
        else:
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("Set-Cookie", f"{CONSENT_COOKIE}=1; Path=/; Max-Age=31536000; SameSite=Lax")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        """Keep the app's console quiet."""


def _index_html() -> bytes:
    text = (NETRON_DIR / "index.html").read_text(encoding="utf-8")
    today = datetime.date.today().isoformat()
    return DATE_META.sub(f'<meta name="date" content="{today} 00:00:00">', text).encode("utf-8")
