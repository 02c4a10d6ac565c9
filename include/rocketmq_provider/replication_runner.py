"""Where replication workers run. Pluggable: the first runner starts them as local processes.

A runner starts N workers of one replication direction from a config (JSON, no secret), hands
each its secrets through the environment, stops them, and reports each worker's liveness and
the counters it last wrote. Other runners (containers, Kubernetes pods) implement the same three
methods; README.md shows the container and pod equivalents of what LocalProcessRunner does.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from rocketmq_core.procutil import alive, read_json, signal_quietly, write_json

STATE_DIR_ENV = "RMQ_STATE_DIR"


def state_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / ".run" / "state"
    return Path(os.environ.get(STATE_DIR_ENV, str(default)))


WORKER_MODULE = "rocketmq_core.replication.worker"


def worker_alive(pid: int) -> bool:
    """Alive and still a replication worker: a recorded pid the kernel gave to another process
    since must not count as a running worker, nor be signalled."""
    if not alive(pid):
        return False
    try:
        return WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class WorkerRunner(ABC):
    @abstractmethod
    def start(self, name: str, config: dict[str, Any], secrets: dict[str, str], workers: int) -> list[str]:
        """Start the workers of ``name`` (idempotent: running ones are kept); return their ids."""

    @abstractmethod
    def stop(self, name: str) -> list[str]:
        """Stop every worker of ``name`` cleanly (they commit and unregister); return their ids."""

    @abstractmethod
    def status(self, name: str) -> dict[str, dict[str, Any]]:
        """Per worker id: whether it is alive and the stats it last wrote (None before the first)."""

    @abstractmethod
    def log_tail(self, name: str, worker: str, lines: int = 20) -> str:
        """The last lines a worker logged: why it exited, for the task that started it."""

    @abstractmethod
    def last_config(self, name: str) -> dict[str, Any] | None:
        """The config the workers of ``name`` were last started with."""

    @abstractmethod
    def exclusive(self, task: str) -> AbstractContextManager[None]:
        """Held while one operator acts on the task: actions never interleave."""

    @abstractmethod
    def get_state(self, task: str) -> str | None:
        """The task's recorded state: running, paused or stopped (None before its first start)."""

    @abstractmethod
    def set_state(self, task: str, state: str) -> None:
        ...


class LocalProcessRunner(WorkerRunner):
    """Workers as detached local processes, with config, pid, stats and log files in the state dir."""

    def __init__(self, root: Path | None = None):
        self.root = (root or state_dir()) / "replication"

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _pids(self, name: str) -> dict[str, int]:
        path = self._dir(name) / "pids.json"
        return read_json(path) or {}

    def start(self, name: str, config: dict[str, Any], secrets: dict[str, str], workers: int) -> list[str]:
        folder = self._dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "config.json", config)
        pids = {w: p for w, p in self._pids(name).items() if worker_alive(p)}
        for i in range(workers):
            worker = f"worker-{i}"
            if worker in pids:
                continue
            cmd = [sys.executable, "-m", WORKER_MODULE, "--config", str(folder / "config.json"),
                   "--worker-id", worker, "--stats", str(folder / f"{worker}.stats.json")]
            with open(folder / f"{worker}.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **secrets}, start_new_session=True, cwd=folder)
            pids[worker] = proc.pid
        write_json(folder / "pids.json", pids)
        return sorted(pids)

    def stop(self, name: str, grace: float = 60) -> list[str]:
        pids = self._pids(name)
        running = [pid for pid in pids.values() if worker_alive(pid)]
        for pid in running:
            signal_quietly(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in running):
            time.sleep(0.2)
        for pid in running:
            if worker_alive(pid):
                signal_quietly(pid, signal.SIGKILL)
        if self._dir(name).exists():
            write_json(self._dir(name) / "pids.json", {})
        return sorted(pids)

    def stop_all(self) -> list[str]:
        """Stop the workers of every task this state dir records; return the names that had some."""
        names = [str(f.parent.relative_to(self.root)) for f in sorted(self.root.glob("**/pids.json"))]
        return [name for name in names if self.stop(name)]

    def status(self, name: str) -> dict[str, dict[str, Any]]:
        folder = self._dir(name)
        result = {}
        for worker, pid in self._pids(name).items():
            stats_file = folder / f"{worker}.stats.json"
            stats = read_json(stats_file)
            result[worker] = {"alive": worker_alive(pid), "pid": pid, "stats": stats}
        return result

    def log_tail(self, name: str, worker: str, lines: int = 20) -> str:
        path = self._dir(name) / f"{worker}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def last_config(self, name: str) -> dict[str, Any] | None:
        path = self._dir(name) / "config.json"
        return read_json(path)

    @contextmanager
    def exclusive(self, task: str) -> Iterator[None]:
        self._dir(task).mkdir(parents=True, exist_ok=True)
        with open(self._dir(task) / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def get_state(self, task: str) -> str | None:
        path = self._dir(task) / "state.json"
        return (read_json(path) or {}).get("state")

    def set_state(self, task: str, state: str) -> None:
        self._dir(task).mkdir(parents=True, exist_ok=True)
        write_json(self._dir(task) / "state.json", {"state": state, "at": time.time()})
