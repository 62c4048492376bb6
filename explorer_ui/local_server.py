"""A viewer's HTTP server: 127.0.0.1 only, a free port, a daemon thread, quiet, every answer with a CSP.

netron's server (``netron_server``) and Model Explorer's (``model_explorer_server``) are both one:
``LocalServer`` starts it with a ``LocalHandler`` subclass whose ``server_state`` is the server.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any, ClassVar

HOST = "127.0.0.1"


class LocalServer:
    """Serves ``handler`` (a ``LocalHandler`` subclass) on ``HOST`` at a free port until ``stop``."""

    def __init__(self, handler: type[LocalHandler], name: str) -> None:
        bound = type("Handler", (handler,), {"server_state": self})
        self._httpd = http.server.ThreadingHTTPServer((HOST, 0), bound)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    def url(self, path: str, page_host: str | None = None) -> str:
        """The absolute URL of ``path`` for a browser showing the app at ``page_host``: ``localhost``
        when the app is open there (the same site as the app, so a frame may keep its cookies and
        storage, which a cross-site frame is denied), else 127.0.0.1, where the server listens."""
        name = (page_host or HOST).rsplit(":", 1)[0]
        return f"http://{'localhost' if name == 'localhost' else HOST}:{self.port}{path}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


class LocalHandler(http.server.BaseHTTPRequestHandler):
    """Answers with ``_send``: the content (or a 404), its type, ``content_security_policy``, no
    caching and ``extra_headers``; logs nothing."""

    server_state: Any
    content_security_policy: ClassVar[str] = "default-src 'none'"
    extra_headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def _send(self, content: bytes | None, content_type: str) -> None:
        if content is None:
            content, content_type = b"not found", "text/plain"
            self.send_response(404)
        else:
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Security-Policy", self.content_security_policy)
        for name, value in self.extra_headers:
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            self.wfile.write(content)
        except ConnectionError:  # the browser went away: nothing to answer
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        """Keep the app's console quiet."""
