"""The station PC's metrics: its station worker's samples over plain HTTP.

A station PC runs no API and has no database and no user accounts, so the supervisor
(role ``station``) serves the metrics directory its worker children write on
``metrics.listen_host:listen_port``, in a thread: ``GET /metrics`` and nothing else, no
authentication. The samples are counts and latencies by step and status, never a device or
a chip: bind it to the address the line's Prometheus reaches and let the firewall allow
only that host.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from provisioner.errors import ConfigError
from provisioner.metrics import multiproc
from provisioner.metrics.exposition import render
from provisioner.settings import Settings

log = logging.getLogger("provisioner.metrics")


def _handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    directory = multiproc.directory(settings)

    class Handler(BaseHTTPRequestHandler):
        server_version = "provisioner-metrics"
        sys_version = ""

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._plain(404, b"only /metrics is served here\n")
                return
            try:
                body, content_type = render(settings, None, directory=directory)
            except Exception:
                log.exception("metrics exporter: the scrape failed")
                self._plain(500, b"the scrape failed: see the supervisor's log\n")
                return
            self._send(200, body, content_type)

        def do_HEAD(self) -> None:
            self._plain(405, b"")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD

        def _plain(self, code: int, body: bytes) -> None:
            self._send(code, body, "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            if code == 405:
                self.send_header("Allow", "GET")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape every 15 s is noise, not a record

    return Handler


def start_exporter(settings: Settings) -> Callable[[], None]:
    """Serve this PC's metrics in a daemon thread until the returned ``stop()`` is called.
    A port in use is a ConfigError naming the setting; with ``metrics.enabled = false``
    nothing is served."""
    if not settings.metrics.enabled:
        return lambda: None
    host, port = settings.metrics.listen_host, settings.metrics.listen_port
    try:
        server = ThreadingHTTPServer((host, port), _handler(settings))
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise ConfigError(
            f"metrics.listen_host:listen_port {host}:{port} {why}: set another port in the "
            "[metrics] section, or metrics.enabled = false"
        ) from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    log.info("metrics served on http://%s:%s/metrics", host, server.server_address[1])

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
