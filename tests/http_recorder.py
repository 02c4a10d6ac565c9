"""A real HTTP endpoint for tests: records every request (a JSON or form body), answers per path (default 200)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingServer:
    def __init__(self, failures: dict[str, tuple[int, bytes]] | None = None):
        self.requests: list[tuple[str, dict]] = []
        failures = failures or {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Type") == "application/x-www-form-urlencoded":
                    body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(), keep_blank_values=True).items()}
                else:
                    body = json.loads(raw or b"{}")
                recorder.requests.append((self.path, body))
                status, text = failures.get(self.path, (200, b'{"ok": true}'))
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            do_POST = do_PUT = do_PATCH = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def connection(self) -> dict:
        """The fields of an Airflow http connection pointing here."""
        return {"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http"}

    def wait_for(self, predicate, timeout: float = 60) -> list[tuple[str, dict]]:
        """The requests matching ``predicate``, once there is at least one."""
        deadline = time.monotonic() + timeout
        while not (matching := [(path, body) for path, body in self.requests if predicate(path, body)]):
            assert time.monotonic() < deadline, f"no matching request within {timeout}s: {self.requests}"
            time.sleep(0.5)
        return matching

    def close(self) -> None:
        self.server.shutdown()
