"""The name-server address service, run as its own process: what a client fetches, how a switch
changes it, what survives a restart, and what is refused without changing anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster_side import wait_for

TOKEN = "address-token-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """``python -m rocketmq_core.address_service`` on a free port, with its state in ``state``."""

    def __init__(self, state: Path, *extra: str):
        self.port = free_port()
        env = {**os.environ, "ADDRESS_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rocketmq_core.address_service", "--state", str(state), "--port", str(self.port),
             "--token-env", "ADDRESS_TOKEN", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or self._listening(), "the address service listening", 30)
        assert self.proc.poll() is None, self.proc.stdout.read().decode()

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def request(self, method: str, path: str, body: object = None, token: str | None = TOKEN) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "addresses.json"


def test_a_subgroup_answers_what_the_last_switch_set_even_after_a_restart(state):
    service = Service(state, "--set", "orders=127.0.0.1:9876")
    try:
        assert service.request("GET", "/rocketmq/orders", token=None) == (200, "127.0.0.1:9876")
        status, body = service.request("PUT", "/subgroups/orders", {"namesrv": "10.0.0.1:9876, 10.0.0.2:9876"})
        assert status == 200
        assert json.loads(body) == {"subgroup": "orders", "previous": "127.0.0.1:9876",
                                    "namesrv": "10.0.0.1:9876;10.0.0.2:9876"}
        assert service.request("GET", "/rocketmq/orders", token=None) == (200, "10.0.0.1:9876;10.0.0.2:9876")
    finally:
        service.stop()
    # --set only fills a subgroup the state does not have: the switch made before the restart holds
    service = Service(state, "--set", "orders=127.0.0.1:9876")
    try:
        assert service.request("GET", "/rocketmq/orders", token=None) == (200, "10.0.0.1:9876;10.0.0.2:9876")
        assert json.loads(service.request("GET", "/subgroups")[1]) == {"orders": "10.0.0.1:9876;10.0.0.2:9876"}
        assert service.request("GET", "/rocketmq/nsaddr", token=None)[0] == 404
    finally:
        service.stop()


@pytest.mark.parametrize("body, token, status, message", [
    ({"namesrv": "10.0.0.1:9876"}, None, 401, "bearer token"),
    ({"namesrv": "10.0.0.1:9876"}, "wrong", 401, "bearer token"),
    ({"namesrv": "10.0.0.1"}, TOKEN, 400, "['10.0.0.1'] are not host:port"),
    ({"namesrv": "10.0.0.1:99999"}, TOKEN, 400, "are not host:port"),
    ({"namesrv": ""}, TOKEN, 400, "at least one host:port"),
    ({"addr": "10.0.0.1:9876"}, TOKEN, 400, "the body must be"),
])
def test_a_refused_switch_names_why_and_changes_nothing(state, body, token, status, message):
    service = Service(state, "--set", "orders=127.0.0.1:9876")
    try:
        before = state.read_text()
        answer = service.request("PUT", "/subgroups/orders", body, token=token)
        assert answer[0] == status and message in answer[1]
        assert state.read_text() == before
        assert service.request("GET", "/rocketmq/orders", token=None) == (200, "127.0.0.1:9876")
    finally:
        service.stop()


def test_a_bad_subgroup_or_start_value_is_refused_by_name(state):
    service = Service(state)
    try:
        status, body = service.request("PUT", "/subgroups/bad%20name", {"namesrv": "10.0.0.1:9876"})
        assert status == 400 and "subgroup 'bad%20name'" in body and not state.exists()
    finally:
        service.stop()
    proc = subprocess.run([sys.executable, "-m", "rocketmq_core.address_service", "--state", str(state),
                           "--port", str(free_port()), "--set", "orders=nowhere"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "['nowhere'] are not host:port" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rocketmq_core.address_service", "--state", str(state),
                           "--token-env", "NO_SUCH_VARIABLE_SET"], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if k != "NO_SUCH_VARIABLE_SET"})
    assert proc.returncode == 2 and "NO_SUCH_VARIABLE_SET" in proc.stderr
