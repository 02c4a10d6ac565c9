"""Resident memory (PSS) of the processes the harness started, read from /proc."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rocketmq_harness import airflow_standalone
from rocketmq_harness.clusters import CLUSTERS, RUN_DIR, _is_ours, _recorded_pids


def _rss(pid: int) -> int:
    """Proportional set size: shared pages (forked workers, mapped jars) are split, not repeated."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:  # the process ended while we looked
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("Pss:")), 0)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    members.append(int(entry))
            except ProcessLookupError:
                continue
    return members


def resident_memory() -> list[tuple[str, int]]:
    """(label, bytes) for every JVM of every running cluster and the Airflow process group."""
    rows = []
    for spec in CLUSTERS.values():
        for role, pid in _recorded_pids(spec).items():
            if _is_ours(pid, spec):
                rows.append((f"{spec.name} {role} (pid {pid})", _rss(pid)))
    demo = RUN_DIR / "demo"
    fleet_pids = demo / "fleet" / "pids.json"
    members = list(json.loads(fleet_pids.read_text()).values()) if fleet_pids.exists() else []
    if (demo / "address-service.pid").exists():
        members.append(int((demo / "address-service.pid").read_text()))
    if members:
        rows.append((f"demo fleet and address service ({len(members)} processes)", sum(_rss(p) for p in members)))
    pgid = airflow_standalone.recorded_pid()
    if pgid:
        members = _group_members(pgid)
        rows.append((f"airflow standalone ({len(members)} processes)", sum(_rss(p) for p in members)))
    return rows
