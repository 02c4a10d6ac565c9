"""The name-server address service RocketMQ clients already ask, served durably, with a switch API.

An official Java client started without a name-server address (no ``namesrvAddr``, no
``NAMESRV_ADDR``) fetches one from ``http://{rocketmq.namesrv.domain}/rocketmq/{subgroup}``
(``rocketmq.namesrv.domain.subgroup``, default ``nsaddr``) at start, 10 s later and then every
two minutes, and takes its routes from whatever ``host:port;host:port`` the answer names. So a
fleet whose clients share a subgroup moves to another cluster, without a restart, when the
subgroup's answer changes. This module is that endpoint plus the call that changes an answer:

- ``GET /rocketmq/{subgroup}``: the addresses, as text (404 for a subgroup nobody set);
- ``GET /subgroups``: every subgroup and its addresses, as JSON;
- ``PUT /subgroups/{subgroup}`` with ``{"namesrv": "host:port;host:port"}``: set one; answers
  the previous and the new value. With a token configured it needs ``Authorization: Bearer``.

Every change is written to the state file (to a temporary file, flushed, then renamed) before it
is answered, so a restart serves the last answer given and a crash never leaves half a file.
Run it with ``python -m rocketmq_core.address_service --state FILE [--port N] [--token-env VAR]``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# What a client takes: addresses separated by ';' (the Java client splits on it).
_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")
_SUBGROUP = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class InvalidAddresses(ValueError):
    """A subgroup or name-server list a client could not use."""


def parse_namesrv(value: str) -> str:
    """``host:port;host:port`` normalised, or InvalidAddresses naming the bad part."""
    parts = [p.strip() for p in str(value).replace(",", ";").split(";") if p.strip()]
    if not parts:
        raise InvalidAddresses("namesrv must name at least one host:port")
    bad = [p for p in parts if not _ADDRESS.match(p) or not 0 < int(p.rsplit(":", 1)[1]) < 65536]
    if bad:
        raise InvalidAddresses(f"namesrv entries {bad} are not host:port")
    return ";".join(parts)


def check_subgroup(subgroup: str) -> str:
    if not _SUBGROUP.match(subgroup):
        raise InvalidAddresses(f"subgroup {subgroup!r} must be 1-128 of letters, digits, '_', '.', '-'")
    return subgroup


class AddressBook:
    """Subgroup -> name-server addresses, kept in one JSON file that every change rewrites."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text() or "{}")
            self._answers = {check_subgroup(k): parse_namesrv(v) for k, v in data.get("subgroups", {}).items()}

    def get(self, subgroup: str) -> str | None:
        with self._lock:
            return self._answers.get(subgroup)

    def all(self) -> dict[str, str]:
        with self._lock:
            return dict(self._answers)

    def set(self, subgroup: str, namesrv: str) -> str | None:
        """Set one answer durably; return the one it replaced."""
        subgroup, namesrv = check_subgroup(subgroup), parse_namesrv(namesrv)
        with self._lock:
            previous = self._answers.get(subgroup)
            answers = {**self._answers, subgroup: namesrv}
            self._write(answers)
            self._answers = answers
            return previous

    def _write(self, answers: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        with open(scratch, "w") as out:
            json.dump({"subgroups": answers}, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, self.path)


def make_server(book: AddressBook, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None) -> ThreadingHTTPServer:
    """An HTTP server over ``book``; call ``serve_forever`` on it (port 0 picks a free one)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/subgroups":
                return self._answer(200, json.dumps(book.all()), "application/json")
            match = re.fullmatch(r"/rocketmq/([^/?]+)(\?.*)?", self.path)
            answer = book.get(match.group(1)) if match else None
            if answer is None:
                return self._answer(404, f"no addresses for {self.path}\n")
            self._answer(200, answer)

        def do_PUT(self) -> None:
            match = re.fullmatch(r"/subgroups/([^/?]+)", self.path)
            if not match:
                return self._answer(404, f"no such resource {self.path}\n")
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                return self._answer(401, "a valid bearer token is required\n")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                namesrv = body.get("namesrv") if isinstance(body, dict) else None
                if not isinstance(namesrv, str):
                    raise InvalidAddresses('the body must be {"namesrv": "host:port;host:port"}')
                previous = book.set(match.group(1), namesrv)
            except ValueError as exc:  # InvalidAddresses and JSON errors both
                return self._answer(400, json.dumps({"error": str(exc)}), "application/json")
            self._answer(200, json.dumps({"subgroup": match.group(1), "previous": previous,
                                          "namesrv": book.get(match.group(1))}), "application/json")

        def _answer(self, status: int, text: str, content_type: str = "text/plain") -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # clients poll every two minutes: keep quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path, help="JSON file holding every subgroup's answer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="8080 is what a client assumes without one")
    parser.add_argument("--token-env", help="environment variable holding the bearer token PUT needs")
    parser.add_argument("--set", action="append", default=[], metavar="SUBGROUP=NAMESRV",
                        help="an answer to set at start where the state has none (repeatable)")
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        parser.error(f"--token-env {args.token_env}: the variable is not set")
    try:
        book = AddressBook(args.state)
        for item in args.set:
            subgroup, _, namesrv = item.partition("=")
            if book.get(subgroup) is None:
                book.set(subgroup, namesrv)
    except (InvalidAddresses, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    server = make_server(book, args.host, args.port, token)
    print(f"address service on http://{args.host}:{server.server_address[1]}, state {args.state}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
