"""/metrics, /healthz and /readyz, served from a thread beside the Bytewax workers.

prometheus-client's own server answers every path with metrics, so a probe against it would
prove nothing: this one serves the three paths and 404s the rest.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from app.status import ConnectionStatus


def _handler(status: ConnectionStatus, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                running = status.running
                self._reply(200 if running else 503, "application/json",
                            json.dumps({"running": running}).encode())
            elif path == "/readyz":
                body = status.readiness()
                self._reply(200 if body["ready"] else 503, "application/json",
                            json.dumps(body).encode())
            else:
                self._reply(404, "text/plain", b"not found\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds are not events worth a log line

    return Handler


def start_http_server(host: str, port: int, status: ConnectionStatus,
                      registry: CollectorRegistry = REGISTRY) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; call .shutdown() to stop."""
    server = ThreadingHTTPServer((host, port), _handler(status, registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
