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
        return {"sent": len(sent), "sent_by_cluster": dict(sent_by_cluster),
                "failed_sends": sum(1 for e in events if e["e"] == "fail"), "groups": groups,
                "lost": sum(g["lost"] for g in groups.values()),
                "duplicates": sum(g["duplicates"] for g in groups.values())}

    def wait_until_received(self, timeout: float = 120) -> dict[str, Any]:
        """Poll the accounting until nothing is missing or the timeout passes; return the last."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.account()
            if result["lost"] == 0 or time.monotonic() > deadline:
                return result
            time.sleep(1)

