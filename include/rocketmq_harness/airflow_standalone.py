"""Airflow standalone (SQLite, LocalExecutor, SimpleAuthManager) for the demo and end-to-end tests,
or the same Airflow with FAB's auth manager, as production runs it.

It runs this project's dags/ and plugins/ with rocketmq connections for the local clusters, the
harness's users, and a shared JWT secret; it is recorded by pid and stopped by process group.
``airflow standalone`` forces SimpleAuthManager, so the FAB flavour starts the four components
itself.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rocketmq_demo.address import ADDRESS_PORT, address_token
from rocketmq_harness.clusters import PROJECT_ROOT, RUN_DIR, demo_clusters, listening
from rocketmq_provider.replication_runner import LocalProcessRunner

USER = "admin"
#: The users and roles of the demo and the tests (SimpleAuthManager's roles): the on-call, who
#: answers the gates of specs naming them; a developer, who may trigger runs but is named by no
#: spec; a watcher, who may only look.
USERS = {USER: "admin", "oncall": "user", "developer": "user", "watcher": "viewer"}
#: Under FAB the same users hold FAB's roles; the on-call also holds the rotation's role, which a
#: spec names as ``role:orders-oncall``.
ROTATION = "orders-oncall"
FAB_ROLES = {USER: ["Admin"], "oncall": ["User", ROTATION], "developer": ["User"], "watcher": ["Viewer"]}


@dataclass(frozen=True)
class StandaloneSpec:
    """One Airflow standalone: its home (SQLite DB, logs, passwords), API port and DAG folder."""

    home: Path
    port: int
    dags_folder: Path
    specs_dir: Path = PROJECT_ROOT / "specs"
    auth: str = "simple"  # or "fab"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


DEMO = StandaloneSpec(RUN_DIR / "airflow", int(os.environ.get("AIRFLOW_DEMO_PORT", "8080")), PROJECT_ROOT / "dags")


@dataclass(frozen=True)
class RunningAirflow:
    url: str
    username: str
    password: str

    def token(self) -> str:
        """A JWT for the REST API, as POST /auth/token hands it out."""
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["access_token"]


def passwords(spec: StandaloneSpec = DEMO) -> dict[str, str]:
    """Each user's password, made once per Airflow home (kept in its passwords file, mode 600)."""
    path = spec.home / "simple_auth_manager_passwords.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if set(known) != set(USERS):
        spec.home.mkdir(parents=True, exist_ok=True)
        known = {user: known.get(user) or secrets.token_urlsafe(12) for user in USERS}
        path.write_text(json.dumps(known))
        path.chmod(0o600)
    return known


def login(spec: StandaloneSpec, user: str) -> RunningAirflow:
    """The running Airflow as one of ``USERS`` sees it."""
    return RunningAirflow(spec.url, user, passwords(spec)[user])


def environment(spec: StandaloneSpec = DEMO) -> dict[str, str]:
    """The environment every Airflow process of a standalone runs with."""
    jwt_file = spec.home / "jwt-secret"
    if not jwt_file.exists():
        spec.home.mkdir(parents=True, exist_ok=True)
        jwt_file.write_text(secrets.token_urlsafe(32))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        # standalone starts its components as `airflow ...` found on PATH
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW_HOME": str(spec.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(spec.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(spec.home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(spec.port),
        "AIRFLOW__API__WORKERS": "1",
        # LocalExecutor with the guard that takes a gate's answer at once (rocketmq_provider.executors)
        "AIRFLOW__CORE__EXECUTOR": "rocketmq_provider.executors.GateSafeLocalExecutor",
        # LocalExecutor forks `parallelism` workers up front; 32 idle ones cost 4 GiB.
        "AIRFLOW__CORE__PARALLELISM": "6",
        "AIRFLOW__API__BASE_URL": spec.url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{spec.url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_file.read_text().strip(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "RMQ_TASK_SPECS_DIR": str(spec.specs_dir),
        # replication workers' config, pids and counters: one standalone's tasks never see another's
        "RMQ_STATE_DIR": str(spec.home / "state"),
    }
    if spec.auth == "fab":
        env["AIRFLOW__CORE__AUTH_MANAGER"] = "rocketmq_provider.auth.OnCallFabAuthManager"
        env["AIRFLOW__API__SECRET_KEY"] = env["AIRFLOW__API_AUTH__JWT_SECRET"]
    return env


def _fab_users(spec: StandaloneSpec, env: dict[str, str]) -> None:
    """FAB keeps users in the metadata database: the rotation's role, then every user, in one
    process (rocketmq_harness.fab_users), the passwords on its stdin."""
    wanted = {"roles": [ROTATION],
              "users": {user: {"password": password, "roles": FAB_ROLES[user]}
                        for user, password in passwords(spec).items()}}
    subprocess.run([sys.executable, "-m", "rocketmq_harness.fab_users"], input=json.dumps(wanted).encode(), env=env,
                   check=True, capture_output=True)


def connections() -> dict[str, dict]:
    """The demo's connections. They go into the metadata database, not the environment, so that
    Admin → Connections shows them and an operator can edit them (secrets stay masked there)."""
    conns = {"address_service": {"conn_type": "http", "host": "127.0.0.1", "schema": "http", "port": ADDRESS_PORT,
                                 "password": address_token()}}
    for name, cluster in demo_clusters().items():
        conns[f"rocketmq_{name}"] = {"conn_type": "rocketmq", "host": "127.0.0.1", "port": cluster.namesrv_port}
    return conns


def _pid_file(spec: StandaloneSpec) -> Path:
    return spec.home / "standalone.pid"


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"airflow" in cmdline


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as resp:
            health = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return health.get("scheduler", {}).get("status") == "healthy"


def start(spec: StandaloneSpec = DEMO, timeout: float = 240) -> RunningAirflow:
    """Start standalone unless ours already answers; wait for the API and a healthy scheduler."""
    running = login(spec, USER)
    env = environment(spec)
    fingerprint = json.dumps({k: v for k, v in sorted(env.items()) if k.startswith(("AIRFLOW", "RMQ_"))})
    fingerprint_file = spec.home / "environment.json"
    pid = recorded_pid(spec)
    if (pid and _alive(pid) and _healthy(spec.url) and fingerprint_file.exists()
            and fingerprint_file.read_text() == fingerprint):
        return running
    stop(spec)
    if listening(spec.port):  # its health check would then answer for a server we did not start
        raise RuntimeError(f"port {spec.port} is taken by a process this harness did not start (an Airflow of "
                           f"another checkout or an earlier run?): stop it, or give this Airflow another port")
    fingerprint_file.write_text(fingerprint)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    conn_file = spec.home / "connections.json"
    conn_file.unlink(missing_ok=True)
    conn_file.touch(mode=0o600)
    conn_file.write_text(json.dumps(connections()))
    try:
        subprocess.run([airflow, "connections", "import", "--overwrite", str(conn_file)], env=env, check=True,
                       capture_output=True)
    finally:
        conn_file.unlink()  # it holds the address service's token: the database keeps it from here
    if spec.auth == "fab":
        _fab_users(spec, env)
        command = ["sh", "-c", " & ".join(f"{airflow} {c}" for c in ("api-server", "scheduler", "dag-processor",
                                                                    "triggerer")) + " & wait"]
    else:
        command = [airflow, "standalone"]
    with open(spec.home / "standalone.log", "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=spec.home)
    _pid_file(spec).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(spec.url):
            return running
        if proc.poll() is not None:
            break
        time.sleep(1)
    tail = "\n".join((spec.home / "standalone.log").read_text(errors="replace").splitlines()[-40:])
    stop(spec)
    raise RuntimeError(f"Airflow standalone did not become healthy on {spec.url}:\n{tail}")


def recorded_pid(spec: StandaloneSpec = DEMO) -> int | None:
    try:
        return int(_pid_file(spec).read_text())
    except (OSError, ValueError):
        return None


def stop(spec: StandaloneSpec = DEMO, grace: float = 30) -> int | None:
    """Stop the standalone we started (its whole process group) and the replication workers its
    tasks started (they run detached, to outlive an Airflow restart); return its pid."""
    LocalProcessRunner(spec.home / "state").stop_all()
    pid = recorded_pid(spec)
    if not pid or not _alive(pid):
        _pid_file(spec).unlink(missing_ok=True)
        return None
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.5)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    _pid_file(spec).unlink(missing_ok=True)
    return pid


def _group_alive(pgid: int) -> bool:
    try:  # the leader is our child when this process started it: an unreaped one still counts for killpg
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
