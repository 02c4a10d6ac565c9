"""Launch the demo fleet's member processes and account for every message.

Loss is counted per consumer group: every key a producer recorded as sent must have been
received by every group. Duplicates are receipts beyond the first, per group.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocketmq_core.procutil import alive, signal_quietly

from rocketmq_demo import java_member
from rocketmq_demo.config_service import FleetConfig

#: Where the C++ client writes its log, one file per process id.
CPP_CLIENT_LOGS = Path.home() / "logs" / "rocketmq-cpp"


@dataclass
class FleetLayout:
    """Who is in the fleet: fleet names, the topic, the producer group and the consumer groups.

    Members run on the C++ client (member.py) unless named in java_members: those run on the
    official Java client (java_member.py), so one fleet can mix both. The first member of each
    group is its canary: with an address service it asks the fleet's canary subgroup.
    """

    topic: str
    producer_group: str
    consumer_groups: list[str]
    producer_fleet: str = "order-producers"
    consumer_fleet: str = "order-consumers"
    producers: int = 2
    consumers_per_group: int = 2
    rate: float = 20.0
    java_members: set[str] = field(default_factory=set)

    def members(self) -> list[tuple[str, str, str, str]]:
        """(member id, fleet, role, group) of every member."""
        rows = [(f"producer-{i}", self.producer_fleet, "producer", self.producer_group) for i in range(self.producers)]
        rows += [(f"{g}-{i}", self.consumer_fleet, "consumer", g)
                 for g in self.consumer_groups for i in range(self.consumers_per_group)]
        return rows

    def subgroup(self, member: str) -> str:
        """The address-service subgroup a member asks: its fleet's, or the fleet's canary one."""
        fleet = next(f for m, f, _, _ in self.members() if m == member)
        return f"{fleet}-canary" if member.endswith("-0") else fleet


@dataclass
class DemoFleet:
    """The member processes. Each follows the config service at ``config_url``, or, given
    ``address_domain``, the name-server address service there: a Java member is told only
    -Drocketmq.namesrv.domain and its subgroup and its client does the rest; a C++ member asks
    the same URL itself (its client reads it only at start). ``cluster_names`` relabels what
    such members log as their cluster (the name-server addresses they hold) with its name."""

    layout: FleetLayout
    run_dir: Path
    config_url: str | None
    address_domain: str | None = None
    cluster_names: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def register(self, config: FleetConfig, cluster: str) -> None:
        for member, fleet, _, group in self.layout.members():
            config.add_member(fleet, member, group, cluster)

    def log_path(self, member: str) -> Path:
        return self.run_dir / f"{member}.jsonl"

    def start(self, roles: tuple[str, ...] = ("consumer", "producer")) -> None:
        """Consumers first, so nothing is produced before someone listens."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for role in roles:
            for member, _, member_role, group in self.layout.members():
                if member_role != role or member in self.pids:
                    continue
                cmd = self._command(member, role, group)
                with open(self.run_dir / f"{member}.out", "ab") as out:
                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=self.run_dir)
                self.pids[member] = proc.pid
        (self.run_dir / "pids.json").write_text(json.dumps(self.pids))

    def _command(self, member: str, role: str, group: str) -> list[str]:
        """A Java member given an address service is told only its domain and subgroup (its
        client asks by itself); any other member is told the URL it follows."""
        args = ["--member", member, "--role", role, "--group", group, "--topic", self.layout.topic,
                "--log", str(self.log_path(member)), "--rate", str(self.layout.rate)]
        subgroup = self.layout.subgroup(member)
        java = member in self.layout.java_members
        if java and self.address_domain:
            return java_member.command(args, self.run_dir / f"{member}.client-logs",
                                       java_member.address_options(self.address_domain, subgroup))
        follows = (["--address-url", f"http://{self.address_domain}/rocketmq/{subgroup}"] if self.address_domain
                   else ["--config-url", self.config_url])
        if java:
            return java_member.command([*follows, *args], self.run_dir / f"{member}.client-logs", [])
        return [sys.executable, "-m", "rocketmq_demo.member", *follows, *args]

    def stop(self, roles: tuple[str, ...] = ("producer", "consumer"), grace: float = 30) -> None:
        """Producers first, so consumers can still take what was sent last."""
        for role in roles:
            self.stop_members([m for m, _, r, _ in self.layout.members() if r == role], grace)

    def stop_members(self, members: list[str], grace: float = 30) -> None:
        """Stop members cleanly (their clients shut down and unregister), killing stragglers."""
        members = [m for m in members if m in self.pids]
        for member in members:
            signal_quietly(self.pids[member], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(self.pids[m]) for m in members):
            time.sleep(0.2)
        for member in members:
            signal_quietly(self.pids.pop(member), signal.SIGKILL)
        (self.run_dir / "pids.json").write_text(json.dumps(self.pids))

    def events(self) -> list[dict[str, Any]]:
        rows = []
        for member, *_ in self.layout.members():
            path = self.log_path(member)
            if path.exists():
                rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if row.get("cluster") in self.cluster_names:
                row["cluster"] = self.cluster_names[row["cluster"]]
        return rows

    def account(self) -> dict[str, Any]:
        events = self.events()
        sent = {e["key"] for e in events if e["e"] == "sent"}
        sent_by_cluster = Counter(e["cluster"] for e in events if e["e"] == "sent")
        groups = {}
        for group in self.layout.consumer_groups:
            receipts = Counter(e["key"] for e in events if e["e"] == "recv" and e["group"] == group)
            lost = sorted(sent - set(receipts))
            groups[group] = {"received": len(set(receipts) & sent), "lost": len(lost), "lost_keys": lost[:20],
                             "duplicates": sum(n - 1 for n in receipts.values() if n > 1),
                             "by_cluster": dict(Counter(e["cluster"] for e in events
                                                        if e["e"] == "recv" and e["group"] == group))}
            if lost:
                groups[group]["lost_where"] = _where_lost(events, group, set(lost))
                groups[group]["cpp_offset_reads_failed"] = self._cpp_offset_reads_failed(group)
        return {"sent": len(sent), "sent_by_cluster": dict(sent_by_cluster),
                "failed_sends": sum(1 for e in events if e["e"] == "fail"), "groups": groups,
                "lost": sum(g["lost"] for g in groups.values()),
                "duplicates": sum(g["duplicates"] for g in groups.values())}

    def _cpp_offset_reads_failed(self, group: str) -> list[str]:
        """What the group's running C++ members logged when a queue's committed offset could not
        be read: that client then starts the queue at its end (CONSUME_FROM_LAST_OFFSET), every
        release through 2.2.0, so these lines are where a skip ahead shows."""
        lines, queue_of_topic = [], f"topic={self.layout.topic},"
        for member, _, _, member_group in self.layout.members():
            if member_group != group or member in self.layout.java_members or member not in self.pids:
                continue
            for path in sorted(CPP_CLIENT_LOGS.glob(f"{self.pids[member]}_rocketmq-cpp.log*")):
                lines += [f"{member}: {line.strip()}" for line in path.read_text(errors="replace").splitlines()
                          if "is -1" in line and queue_of_topic in line or "response is null" in line]
        return lines[-20:]

    def wait_until_received(self, timeout: float = 120) -> dict[str, Any]:
        """Poll the accounting until nothing is missing or the timeout passes; return the last."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.account()
            if result["lost"] == 0 or time.monotonic() > deadline:
                return result
            time.sleep(1)


def _where_lost(events: list[dict[str, Any]], group: str, lost: set[str]) -> list[dict[str, Any]]:
    """Per queue, the offsets a group never received and what it received on that queue just
    before and after them (member, its cluster label, seconds into the run): the evidence that
    tells a consumer skipping ahead from a message never stored. A key's queue is known where a
    Java client saw it (its send or any group's receipt); the C++ client reports no broker."""
    located = {e["key"]: (e["broker"], e["queue"], e["offset"]) for e in events
               if e["e"] in ("sent", "recv") and e.get("broker") is not None}
    start = min(e["t"] for e in events)
    by_queue: dict[tuple[str, int], list[int]] = {}
    for key in lost:
        if key in located:
            broker, queue, offset = located[key]
            by_queue.setdefault((broker, queue), []).append(offset)
    received: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
    for e in events:
        if e["e"] == "recv" and e["group"] == group and e["key"] in located:
            broker, queue, offset = located[e["key"]]
            received.setdefault((broker, queue), []).append((offset, e))

    def seen(entry: tuple[int, dict[str, Any]] | None) -> dict[str, Any] | None:
        if entry is None:
            return None
        offset, e = entry
        return {"offset": offset, "member": e["member"], "cluster": e["cluster"], "at_s": round(e["t"] - start, 1)}

    rows = []
    for (broker, queue), offsets in sorted(by_queue.items()):
        got = received.get((broker, queue), [])
        low, high = min(offsets), max(offsets)
        rows.append({"broker": broker, "queue": queue, "lost_offsets": [low, high], "located": len(offsets),
                     "before": seen(max((g for g in got if g[0] < low), default=None, key=lambda g: g[0])),
                     "after": seen(min((g for g in got if g[0] > high), default=None, key=lambda g: g[0]))})
    return rows
