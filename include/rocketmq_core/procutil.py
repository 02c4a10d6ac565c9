"""Process and state-file helpers shared by the replication worker, its runner and the demo fleet."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """Alive and not a zombie; reaps the process if it is our child and has exited."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def signal_quietly(pid: int, sig: int) -> None:
    """Send a signal to a process that may already be gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def write_json(path: Path, data: Any) -> None:
    """Replace the file at once: a process reading it meanwhile never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The file's JSON, or None while it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
