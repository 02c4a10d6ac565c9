"""Fleet members on the official Apache RocketMQ Java client (java/FleetMember.java).

They take member.py's options and write its log format, so a fleet can mix both clients. Maven
compiles the module on first use and writes its runtime classpath to target/classpath.txt;
later calls reuse it while it is newer than the sources and every entry on it exists.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

MODULE = Path(__file__).with_name("java")
POM = MODULE / "pom.xml"
MAIN_CLASS = "rocketmqdemo.FleetMember"
#: A member is small: many run next to the brokers on one machine.
JVM_OPTIONS = ("-Xmx96m", "-XX:+UseSerialGC")
#: How long a member that follows the address service keeps a broker connection that carries
#: nothing (the client's own maxIdleTimeSeconds, 120 by default). A moved client stops talking
#: to its old brokers once its routes and heartbeats follow the new name server, and an old
#: broker forgets it when that connection closes: most of a switch's wait after the address
#: poll. Above the 30 s heartbeat, so a connection still in use never idles out.
IDLE_CLOSE_SECONDS = 45


def _fresh(out: Path) -> bool:
    if not out.exists():
        return False
    sources = [POM, *MODULE.glob("src/**/*.java")]
    return (out.stat().st_mtime >= max(p.stat().st_mtime for p in sources)
            and all(Path(p).exists() for p in out.read_text().strip().split(os.pathsep)))


def classpath() -> str:
    """The compiled member's runtime classpath, building it first when missing or stale."""
    target = MODULE / "target"
    target.mkdir(exist_ok=True)
    out = target / "classpath.txt"
    with open(target / ".build.lock", "w") as lock:  # two sessions may start members at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _fresh(out):
            result = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "compile", "dependency:build-classpath",
                                     f"-Dmdep.outputFile={out}"], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"Maven could not build the Java fleet member:\n{result.stdout[-3000:]}")
            out.touch()  # Maven leaves an unchanged classpath file as it was
    return os.pathsep.join([str(target / "classes"), out.read_text().strip()])


def command(member_args: Sequence[str], client_logs: Path, jvm_options: Sequence[str] = ()) -> list[str]:
    """The java command line of one member; member_args are member.py's options.

    The client's own log goes to client_logs instead of ~/logs/rocketmqlogs, shared by all.
    """
    return ["java", *JVM_OPTIONS, f"-Drocketmq.client.logRoot={client_logs}", *jvm_options,
            "-cp", classpath(), MAIN_CLASS, *member_args]


def address_options(domain: str, subgroup: str) -> list[str]:
    """The JVM options of a member that follows the client's own address service: no name
    server, only the service's domain and a subgroup, and the shorter idle close."""
    return [f"-Drocketmq.namesrv.domain={domain}", f"-Drocketmq.namesrv.domain.subgroup={subgroup}",
            f"-Dcom.rocketmq.remoting.client.channel.maxIdleTimeSeconds={IDLE_CLOSE_SECONDS}"]
