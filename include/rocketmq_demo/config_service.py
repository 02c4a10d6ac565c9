"""The config center the demo fleet reads its cluster from, and the HTTP switcher writes to.

State: the clusters (connection id -> name server) and, per fleet, its members with their
group and current cluster. A switch request ``{"groups", "share", "cluster"}`` moves, per
group, the first ceil(share * members) members (by member id) to the cluster, so a canary
always covers every group. State is kept in a JSON file so the service can restart.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FleetConfig:
    def __init__(self, path: Path, clusters: dict[str, str] | None = None):
        self.path = path
        self._lock = threading.Lock()
        if path.exists():
            self.state = json.loads(path.read_text())
        else:
            self.state = {"clusters": clusters or {}, "fleets": {}}
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        tmp.replace(self.path)

    def add_member(self, fleet: str, member: str, group: str, cluster: str) -> None:
        with self._lock:
            self.state["fleets"].setdefault(fleet, {"members": {}})["members"][member] = {
                "group": group, "cluster": cluster}
            self._save()

    def member(self, member: str) -> dict[str, Any] | None:
        for fleet in self.state["fleets"].values():
            if member in fleet["members"]:
                entry = fleet["members"][member]
                return {**entry, "namesrv": self.state["clusters"][entry["cluster"]]}
        return None

    def switch(self, fleet: str, request: dict[str, Any]) -> dict[str, Any]:
        cluster = request.get("cluster")
        share = float(request.get("share", 1.0))
        with self._lock:
            if fleet not in self.state["fleets"]:
                raise KeyError(f"unknown fleet {fleet!r}")
            if cluster not in self.state["clusters"]:
                raise KeyError(f"unknown cluster {cluster!r}; known: {sorted(self.state['clusters'])}")
            if not 0 < share <= 1:
                raise ValueError(f"share {share} is not in (0, 1]")
            members = self.state["fleets"][fleet]["members"]
            groups = request.get("groups") or sorted({m["group"] for m in members.values()})
            moved = []
            for group in groups:
                ids = sorted(m for m, e in members.items() if e["group"] == group)
                for member in ids[:math.ceil(share * len(ids))]:
                    if members[member]["cluster"] != cluster:
                        members[member]["cluster"] = cluster
                        moved.append(member)
            self._save()
            return {"fleet": fleet, "moved": moved, "members": members}


def serve(config: FleetConfig, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the HTTP API in a background thread; port 0 picks a free port."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "members" and (entry := config.member(parts[1])):
                return self._reply(200, entry)
            if len(parts) == 2 and parts[0] == "fleets" and parts[1] in config.state["fleets"]:
                return self._reply(200, config.state["fleets"][parts[1]])
            if parts == ["state"]:
                return self._reply(200, config.state)
            self._reply(404, {"error": f"nothing at {self.path}"})

        def _switch(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "fleets":
                return self._reply(404, {"error": f"nothing at {self.path}"})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                self._reply(200, config.switch(parts[1], request))
            except (KeyError, ValueError) as exc:
                self._reply(400, {"error": str(exc)})

        do_PUT = do_POST = do_PATCH = _switch

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="fleet-config").start()
    return server
