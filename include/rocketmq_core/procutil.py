"""Process helpers shared by the replication runner and the demo fleet."""

from __future__ import annotations

import os
from pathlib import Path


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
