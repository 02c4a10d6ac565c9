"""Local RocketMQ clusters on loopback from the official Apache jars on Maven Central.

A cluster is one name server, one or more brokers (masters, and slaves that share a master's
broker name with broker id 1) and, for 5.x, an optional proxy in cluster mode; each with its
own ports, data directory, small heap and logs under the run directory (``.run/`` in the
project, git-ignored). Maven resolves the jars into the local Maven cache; we only ask it for
the runtime classpath of one version. Processes are recorded by pid and stopped by exactly
those pids.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.remoting.client import Credentials

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RMQ_HARNESS_DIR", PROJECT_ROOT / ".run"))
POM = Path(__file__).with_name("pom.xml")

#: 4.9.8's namesrv and broker jars are not served by the Maven Central reachable here
#: (404), so the 4.x line is represented by 4.9.7, its newest release that is.
SOURCE_VERSION = os.environ.get("RMQ_SOURCE_VERSION", "4.9.7")
TARGET_VERSION = os.environ.get("RMQ_TARGET_VERSION", "5.5.0")
ADMIN_ACCESS_KEY = "rocketmq-admin"
_MARKER = "-Drmq.harness.cluster="
#: A slave's broker id (any id above 0 is a slave; one slave per master is what we run).
SLAVE_ID = 1


@dataclass(frozen=True)
class BrokerSpec:
    """One broker process: its broker name (shared by a master and its slave), id and port."""

    name: str
    port: int
    broker_id: int = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_master(self) -> bool:
        return self.broker_id == 0

    @property
    def role(self) -> str:
        """Its key in the pid file and the name of its log and config files."""
        return f"broker-{self.name}-{self.broker_id}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Fast remoting (port-2), remoting and HA (port+1)."""
        return (self.port - 2, self.port, self.port + 1)


@dataclass(frozen=True)
class ClusterSpec:
    """What to start: a version, a name server port, the brokers, an optional proxy, and whether
    authentication is on.

    ``masters`` brokers named ``<name>-b<i>`` listen on ``broker_port + 10 * i``; the first
    ``slaves`` of them get a slave, 10 ports further on each. ``proxy_port`` (5.x only) is the
    proxy's remoting port; its gRPC port is the next one.
    """

    name: str
    version: str
    namesrv_port: int
    broker_port: int
    acl: bool = False
    masters: int = 1
    slaves: int = 0
    proxy_port: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.slaves <= self.masters:
            raise ValueError(f"cluster {self.name}: {self.slaves} slave(s) for {self.masters} master(s)")
        if self.proxy_port is not None and self.major < 5:
            raise ValueError(f"cluster {self.name}: RocketMQ {self.version} has no proxy")

    @property
    def brokers(self) -> tuple[BrokerSpec, ...]:
        masters = [BrokerSpec(f"{self.name}-b{i}", self.broker_port + 10 * i) for i in range(self.masters)]
        slaves = [BrokerSpec(m.name, self.broker_port + 10 * (self.masters + i), SLAVE_ID)
                  for i, m in enumerate(masters[:self.slaves])]
        return (*masters, *slaves)

    @property
    def namesrv(self) -> str:
        return f"127.0.0.1:{self.namesrv_port}"

    @property
    def broker(self) -> str:
        """The first master's address."""
        return self.brokers[0].addr

    @property
    def broker_name(self) -> str:
        return self.brokers[0].name

    @property
    def master_addrs(self) -> dict[str, str]:
        """Broker name -> master address, as the name server should list them."""
        return {b.name: b.addr for b in self.brokers if b.is_master}

    @property
    def proxy(self) -> str | None:
        """The proxy's remoting address, which clients may use as their name server."""
        return f"127.0.0.1:{self.proxy_port}" if self.proxy_port else None

    @property
    def proxy_grpc(self) -> str | None:
        return f"127.0.0.1:{self.proxy_port + 1}" if self.proxy_port else None

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the cluster binds."""
        proxy = (self.proxy_port, self.proxy_port + 1) if self.proxy_port else ()
        return (self.namesrv_port, *(p for b in self.brokers for p in b.ports), *proxy)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def home(self) -> Path:
        return RUN_DIR / self.name


# Brokers also bind listenPort-2 (fast remoting) and listenPort+1 (HA), so ports stay 10 apart.
# All ports sit below 32768, outside Linux's ephemeral range: a client socket that happened to
# take 50912 as its local port once kept a broker's HA service from binding (BindException).
CLUSTERS: dict[str, ClusterSpec] = {
    "source": ClusterSpec("source", SOURCE_VERSION, 19876, 20911),
    "target": ClusterSpec("target", TARGET_VERSION, 29876, 30911),
    "source-acl": ClusterSpec("source-acl", SOURCE_VERSION, 11876, 12911, acl=True),
    "target-acl": ClusterSpec("target-acl", TARGET_VERSION, 13876, 14911, acl=True),
    # Production shapes: two masters, the first with a slave (4.9); two masters behind a proxy (5.x).
    "source-ha": ClusterSpec("source-ha", SOURCE_VERSION, 31876, 31911, masters=2, slaves=1),
    "target-ha": ClusterSpec("target-ha", TARGET_VERSION, 32076, 32111, masters=2, proxy_port=32181),
}

#: The clusters ``make demo`` runs as its source and target, by topology (``RMQ_TOPOLOGY``).
TOPOLOGIES: dict[str, dict[str, str]] = {"small": {"source": "source", "target": "target"},
                                         "ha": {"source": "source-ha", "target": "target-ha"}}


def demo_clusters() -> dict[str, ClusterSpec]:
    """``source`` and ``target`` of the demo: one broker each, or the multi-broker clusters."""
    topology = os.environ.get("RMQ_TOPOLOGY", "small")
    if topology not in TOPOLOGIES:
        raise ValueError(f"RMQ_TOPOLOGY={topology!r} is not one of {sorted(TOPOLOGIES)}")
    return {role: CLUSTERS[name] for role, name in TOPOLOGIES[topology].items()}


@dataclass(frozen=True)
class RunningCluster:
    """A started cluster as tests and the demo see it."""

    spec: ClusterSpec
    credentials: Credentials | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namesrv(self) -> str:
        return self.spec.namesrv

    @property
    def broker(self) -> str:
        return self.spec.broker

    @property
    def version(self) -> str:
        return self.spec.version


def classpath(version: str) -> str:
    """Runtime classpath of one RocketMQ version, resolved by Maven and cached in RUN_DIR."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    out = RUN_DIR / f"classpath-{version}.txt"
    if out.exists() and all(Path(p).exists() for p in out.read_text().split(os.pathsep)):
        return out.read_text().strip()
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:build-classpath",
           f"-Drocketmq.version={version}", f"-Dmdep.outputFile={out}"]
    if not version.startswith("4."):
        cmd.append("-Pfive")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Maven could not resolve RocketMQ {version}:\n{result.stdout[-3000:]}")
    return out.read_text().strip()


def _kind(role: str) -> str:
    """namesrv, broker, proxy or mqadmin: what a role runs."""
    return role.split("-", 1)[0]


def _java_opts(spec: ClusterSpec, role: str) -> list[str]:
    # Each process gets its own user.home and log directory: 5.x keeps logs (and the name
    # server its kvConfig) under user.home, and two brokers must not write one another's files.
    home = spec.home / role
    opts = [f"{_MARKER}{spec.name}/{role}", f"-Drocketmq.home.dir={spec.home / 'home'}",
            f"-Duser.home={home}", f"-Drocketmq.log.dir={home / 'logs'}",
            "-Drocketmq.broker.diskSpaceWarningLevelRatio=0.98", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1" if role == "mqadmin" else "-XX:+UseStringDeduplication"]
    if spec.major == 4:
        opts += ["--add-opens", "java.base/java.nio=ALL-UNNAMED",
                 "--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED",
                 "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED"]
    return opts


_HEAPS = {"namesrv": ["-Xms64m", "-Xmx96m"],
          "broker": ["-Xms192m", "-Xmx256m", "-XX:MaxDirectMemorySize=256m"],
          "proxy": ["-Xms96m", "-Xmx160m", "-XX:MaxDirectMemorySize=128m"],
          "mqadmin": ["-Xmx128m"]}

_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${{rocketmq.log.dir}}/{role}.log</file>
    <encoder><pattern>%d{{yyyy-MM-dd HH:mm:ss.SSS}} %p %c{{0}} - %m%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def _secret(spec: ClusterSpec) -> str:
    path = spec.home / "admin-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def credentials(spec: ClusterSpec) -> Credentials | None:
    return Credentials(ADMIN_ACCESS_KEY, _secret(spec)) if spec.acl else None


def _store(spec: ClusterSpec, broker: BrokerSpec) -> Path:
    return spec.home / broker.role / "store"


def _conf(spec: ClusterSpec, role: str) -> Path:
    return spec.home / f"{role}.conf"


def _write_configs(spec: ClusterSpec) -> None:
    conf = spec.home / "home" / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (spec.home / "logs").mkdir(exist_ok=True)
    for role in ("namesrv", "broker", "tools"):
        (conf / f"logback_{role}.xml").write_text(_LOGBACK.format(role=role))
    bind = ["bindAddress=127.0.0.1"] if spec.major >= 5 else []
    _conf(spec, "namesrv").write_text("\n".join([f"listenPort={spec.namesrv_port}", *bind]) + "\n")
    secret = _secret(spec) if spec.acl else ""
    auth: list[str] = []
    if spec.acl and spec.major == 4:
        auth.append("aclEnable=true")
        (conf / "plain_acl.yml").write_text(
            "globalWhiteRemoteAddresses: []\naccounts:\n"
            f"  - accessKey: {ADMIN_ACCESS_KEY}\n    secretKey: {secret}\n    admin: true\n")
    elif spec.acl:
        user = json.dumps({"username": ADMIN_ACCESS_KEY, "password": secret})
        inner = json.dumps({"accessKey": ADMIN_ACCESS_KEY, "secretKey": secret})
        auth += [
            "authenticationEnabled=true", "authorizationEnabled=true",
            "authenticationProvider=org.apache.rocketmq.auth.authentication.provider.DefaultAuthenticationProvider",
            "authorizationProvider=org.apache.rocketmq.auth.authorization.provider.DefaultAuthorizationProvider",
            "authenticationMetadataProvider=org.apache.rocketmq.auth.authentication.provider.LocalAuthenticationMetadataProvider",
            "authorizationMetadataProvider=org.apache.rocketmq.auth.authorization.provider.LocalAuthorizationMetadataProvider",
            f"authConfigPath={spec.home / 'auth'}",
            f"initAuthenticationUser={user}", f"innerClientAuthenticationCredentials={inner}",
        ]
    if spec.acl:
        (conf / "tools.yml").write_text(f"accessKey: {ADMIN_ACCESS_KEY}\nsecretKey: {secret}\n")
    for broker in spec.brokers:
        store = _store(spec, broker)
        lines = [
            f"brokerClusterName={spec.name}", f"brokerName={broker.name}", f"brokerId={broker.broker_id}",
            f"brokerRole={'ASYNC_MASTER' if broker.is_master else 'SLAVE'}",
            "brokerIP1=127.0.0.1", f"listenPort={broker.port}", f"namesrvAddr={spec.namesrv}",
            f"storePathRootDir={store}", f"storePathCommitLog={store / 'commitlog'}",
            "mappedFileSizeCommitLog=67108864", "mappedFileSizeConsumeQueue=600000",
            "mappedFileSizeTimerLog=16777216", "maxIndexNum=100000", "maxHashSlotNum=10000",
            "flushDiskType=ASYNC_FLUSH", "transientStorePoolEnable=false",
            "autoCreateTopicEnable=true", "autoCreateSubscriptionGroup=true",
            "diskMaxUsedSpaceRatio=95", "diskSpaceWarningLevelRatio=0.98", *bind, *auth,
        ]
        _conf(spec, broker.role).write_text("\n".join(lines) + "\n")
    if spec.proxy_port:
        _conf(spec, "proxy").write_text(json.dumps({
            "rocketMQClusterName": spec.name, "namesrvAddr": spec.namesrv,
            # The address the proxy puts in the routes it serves; by default the host's own IP.
            "localServeAddr": "127.0.0.1", "remotingAccessAddr": "127.0.0.1",
            "remotingListenPort": spec.proxy_port, "grpcServerPort": spec.proxy_port + 1}))


def _pid_file(spec: ClusterSpec) -> Path:
    return spec.home / "pids.json"


def _recorded_pids(spec: ClusterSpec) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(_pid_file(spec).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _is_ours(pid: int, spec: ClusterSpec) -> bool:
    """True while pid is alive and still the JVM we started for this cluster."""
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline:  # empty while the process is between fork and exec
            return f"{_MARKER}{spec.name}/".encode() in cmdline
        time.sleep(0.02)
    return False


_MAINS = {"namesrv": ("org.apache.rocketmq.namesrv.NamesrvStartup", "-c"),
          "broker": ("org.apache.rocketmq.broker.BrokerStartup", "-c"),
          "proxy": ("org.apache.rocketmq.proxy.ProxyStartup", "-pc")}


def _launch(spec: ClusterSpec, role: str, cp: str) -> subprocess.Popen[bytes]:
    main, conf_flag = _MAINS[_kind(role)]
    cmd = ["java", *_HEAPS[_kind(role)], *_java_opts(spec, role), "-cp", cp, main, conf_flag, str(_conf(spec, role))]
    if _kind(role) == "broker":
        cmd += ["-n", spec.namesrv]
    elif role == "proxy":
        cmd += ["-pm", "cluster"]
    (spec.home / role).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROCKETMQ_HOME": str(spec.home / "home")}
    with open(spec.home / "logs" / f"{role}.out", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=spec.home)
    return proc


async def _registered_brokers(namesrv: str, creds: Credentials | None) -> dict[str, dict[int, str]]:
    """Broker name -> broker id -> address, as the name server reports them."""
    async with ClusterAdmin(namesrv, creds, timeout=3, connect_timeout=1) as admin:
        return {b.name: b.addrs for b in await admin.brokers()}


def brokers_registered(spec: ClusterSpec) -> bool:
    """The name server answers and lists every broker of the spec at its address and id."""
    try:
        registered = asyncio.run(_registered_brokers(spec.namesrv, credentials(spec)))
    except Exception:
        return False
    return all(registered.get(b.name, {}).get(b.broker_id) == b.addr for b in spec.brokers)


def listening(port: int) -> bool:
    """Something on this machine accepts connections on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def is_up(spec: ClusterSpec) -> bool:
    """Every broker is registered, and the proxy (if any) takes connections on both its ports."""
    proxy = (spec.proxy_port, spec.proxy_port + 1) if spec.proxy_port else ()
    return brokers_registered(spec) and all(listening(p) for p in proxy)


def store_config_dir(spec: ClusterSpec) -> Path:
    """Where the first master keeps topics.json, subscriptionGroup.json, consumerOffset.json, ..."""
    return _store(spec, spec.brokers[0]) / "config"


def start(spec: ClusterSpec, timeout: float = 120,
          seed: Callable[[Path], None] | None = None) -> RunningCluster:
    """Start the cluster unless ours is already running; wait for every broker to register and the
    proxy (started once the brokers are registered) to listen.

    ``seed``, when given, is called with the first master's store config directory after the
    configs are written and before the broker starts, to pre-seed files such as topics.json or
    subscriptionGroup.json (loading 20,000 topics from a file takes the broker a second; creating
    them one request at a time takes minutes). A cluster that is already up cannot be seeded.
    """
    if is_up(spec):  # ours, or another checkout's harness on the same ports: reuse it
        if seed is not None:
            raise RuntimeError(f"cluster {spec.name} is already running: it cannot be pre-seeded")
        return RunningCluster(spec, credentials(spec))
    stop(spec)
    cp = classpath(spec.version)
    _write_configs(spec)
    if seed is not None:
        store_config_dir(spec).mkdir(parents=True, exist_ok=True)
        seed(store_config_dir(spec))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def launch(role: str) -> None:
        procs[role] = _launch(spec, role, cp)
        _pid_file(spec).write_text(json.dumps({r: p.pid for r, p in procs.items()}))

    for role in ("namesrv", *(b.role for b in spec.brokers)):
        launch(role)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spec.proxy_port and "proxy" not in procs and brokers_registered(spec):
            launch("proxy")
        if is_up(spec):
            return RunningCluster(spec, credentials(spec))
        if any(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.5)
    tails = "\n".join(_tail(spec.home / "logs" / f"{role}.out") for role in procs)
    stop(spec)
    raise RuntimeError(f"cluster {spec.name} ({spec.version}) did not come up:\n{tails}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing"


def stop(spec: ClusterSpec, grace: float = 15, roles: tuple[str, ...] = ("namesrv", "broker", "proxy")) -> list[int]:
    """Stop exactly the processes this harness recorded for the cluster; return their pids.

    A role is a kind (``broker`` stops every broker, as tests of a broker failure need) or one
    process (``BrokerSpec.role``: one master, or one slave).
    """
    recorded = _recorded_pids(spec)
    chosen = {role for role in recorded if role in roles or _kind(role) in roles}
    pids = [pid for role, pid in recorded.items() if role in chosen and _is_ours(pid, spec)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_is_ours(p, spec) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _is_ours(pid, spec):
            os.kill(pid, signal.SIGKILL)
    remaining = {role: pid for role, pid in recorded.items() if role not in chosen}
    if remaining:
        _pid_file(spec).write_text(json.dumps(remaining))
    else:
        _pid_file(spec).unlink(missing_ok=True)
    return pids


def mqadmin(spec: ClusterSpec, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the reference admin tool of the cluster's version; `-n` defaults to its name server."""
    if "-n" not in args:
        args = [*args, "-n", spec.namesrv]
    if not (spec.home / "home" / "conf").exists():
        _write_configs(spec)
    cmd = ["java", *_HEAPS["mqadmin"], *_java_opts(spec, "mqadmin"), "-cp", classpath(spec.version),
           "org.apache.rocketmq.tools.command.MQAdminStartup", *args]
    env = {**os.environ, "ROCKETMQ_HOME": str(spec.home / "home")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def parse_consumer_progress(out: str) -> tuple[dict[tuple[str, str, int], tuple[int, int, int]], int]:
    """mqadmin consumerProgress: (topic, broker, queue id) -> (broker offset, consumer offset, diff),
    and its Diff Total."""
    rows, total = {}, None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and not line.startswith("#") and all(p.lstrip("-").isdigit() for p in parts[2:6]):
            rows[(parts[0], parts[1], int(parts[2]))] = (int(parts[3]), int(parts[4]), int(parts[5]))
        match = re.search(r"Diff Total:\s*(-?\d+)", line)
        if match:
            total = int(match.group(1))
    if total is None:
        raise RuntimeError(f"no Diff Total in mqadmin consumerProgress output:\n{out[-2000:]}")
    return rows, total
