"""A fault-injecting HTTP proxy for tests, to stand between a store and a real S3 server.

It forwards every request to the server unchanged and sends the answer back, except that it can
cut a response body short: the client gets the full headers (Content-Length included), then
only the first half of the body, then the connection closes, as a flaky network or a dying
load balancer would do. Which bodies are cut is decided by ``cut(method, path, n)``, where ``n``
counts the GET bodies seen so far for that path (1 for the first), so a test can cut
deterministically: every third body, the first two attempts at a key, or every attempt. With
``honest_length=False`` a cut body comes with a Content-Length that matches it, as a server that
loses bytes without noticing would send: only a check of the ranged answer can catch that.
``hold(method, path)`` makes the requests it picks wait, unanswered, until ``release()`` (or the
proxy's end), as a store that stopped answering would.

    with CuttingProxy(moto_server.endpoint, cut=lambda method, path, n: n <= 2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ...
    assert proxy.cuts > 0
"""

from __future__ import annotations

import collections
import http.client
import http.server
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

CutRule = Callable[[str, str, int], bool]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "proxy-authenticate", "proxy-authorization"}


class CuttingProxy:
    def __init__(self, upstream: str, cut: CutRule | None = None, *, honest_length: bool = True,
                 hold: Callable[[str, str], bool] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.cut: CutRule = cut or (lambda method, path, n: False)
        self.honest_length = honest_length
        self.cuts = 0
        self.hold = hold or (lambda method, path: False)
        self.held = 0
        self._released = threading.Event()
        self.gets: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CuttingProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy",
                                        daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Let the held requests (and any later ones) through."""
        self._released.set()

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _decide(self, method: str, path: str) -> bool:
        """Whether to cut this response's body (counted per path for GETs)."""
        if method != "GET":
            return False
        with self._lock:
            self.gets[path] += 1
            cut = self.cut(method, path, self.gets[path])
            self.cuts += cut
        return cut

    def _handler_class(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _forward(self) -> None:
                body = self._request_body()
                if not proxy._released.is_set() and proxy.hold(self.command, urlsplit(self.path).path):
                    with proxy._lock:
                        proxy.held += 1
                    proxy._released.wait()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    cut = bool(data) and response.status in (200, 206) and proxy._decide(
                        self.command, urlsplit(self.path).path)
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    sent = data[: len(data) // 2] if cut else data
                    self.send_header("Content-Length", str(len(data if proxy.honest_length else sent)))
                    if cut:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(sent)
                    self.wfile.flush()
                    if cut:
                        self.close_connection = True
                finally:
                    upstream.close()

            def _request_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
