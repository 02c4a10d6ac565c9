"""Whether a fleet has moved, as the brokers see it: the evidence a switch waits for.

A switch that changes a config is only a request; the clients act on it at their next poll (a
Java client asks its address service every two minutes) and the old brokers forget them when
their connections expire. So a switch is done when the brokers say so: for a full move, no
client of the fleet's groups is left on the cluster it leaves and the one it joins has as many
as the two had before; for a canary, some client of every group is on the new cluster and gone
from the old one, and, for consumers, the old cluster still has one (a canary never strips a
group while producers may still write there). Client ids name the members that did not move.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rocketmq_core.admin import ClusterAdmin


async def clients_by_group(admin: ClusterAdmin, role: str, groups: list[str]) -> dict[str, frozenset[str]]:
    """Client ids of each group's ``role`` clients on every master of the cluster."""
    masters = [b.master for b in await admin.masters()]
    return {group: await admin.online_clients(masters, role, group) for group in groups}


@dataclass(frozen=True)
class Whereabouts:
    """Per group, the client ids online on the cluster a fleet leaves and on the one it joins."""

    leaving: dict[str, frozenset[str]]
    joining: dict[str, frozenset[str]]

    def to_dict(self) -> dict[str, dict[str, list[str]]]:
        return {"leaving": {g: sorted(c) for g, c in self.leaving.items()},
                "joining": {g: sorted(c) for g, c in self.joining.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, list[str]]]) -> Whereabouts:
        return cls(*({g: frozenset(c) for g, c in data[side].items()} for side in ("leaving", "joining")))

    def moved_share(self) -> dict[str, float | None]:
        """Per group, the share of its online clients on the joining cluster only (None: none online)."""
        shares: dict[str, float | None] = {}
        for group in sorted(set(self.leaving) | set(self.joining)):
            leaving, joining = self.leaving.get(group, frozenset()), self.joining.get(group, frozenset())
            every = leaving | joining
            shares[group] = len(joining - leaving) / len(every) if every else None
        return shares

    def beyond(self, share: float) -> bool:
        """Every group already has at least ``share`` of its clients on the joining cluster: a
        canary of ``share`` now would move some of them back (a run after an earlier one)."""
        moved = self.moved_share()
        return bool(moved) and all(m is not None and m >= share for m in moved.values())


@dataclass(frozen=True)
class MoveVerdict:
    """``done`` when the brokers show the move complete; ``stripped`` names consumer groups a
    canary left with no consumer on the old cluster (the move must be undone); ``waiting`` says
    per group what has not happened yet."""

    done: bool
    stripped: tuple[str, ...]
    waiting: tuple[str, ...]


def judge_move(before: Whereabouts, now: Whereabouts, role: str, canary: bool) -> MoveVerdict:
    """A canary holds once some client of every group is on the new cluster only; a full move
    once none is left on the old one and the new one has every client seen before the switch."""
    waiting, stripped = [], []
    for group in sorted(before.leaving):
        left = now.leaving.get(group, frozenset())
        there = now.joining.get(group, frozenset())
        if canary:
            if not there - left:
                waiting.append(f"no {role} of {group} is on the new cluster only yet (on the new one:"
                               f" {sorted(there)}, on the old one: {sorted(left)})")
            elif role == "consumer" and not left:
                stripped.append(group)
            continue
        was = before.leaving[group] | before.joining.get(group, frozenset())
        if left:
            waiting.append(f"{role}(s) {sorted(left)} of {group} are still on the old cluster")
        if len(there) < len(was):
            waiting.append(f"{len(there)} {role}(s) of {group} on the new cluster, {len(was)} before the"
                           f" switch (not seen there: {sorted(was - there)})")
    return MoveVerdict(not waiting and not stripped, tuple(stripped), tuple(waiting))


async def whereabouts(leaving: ClusterAdmin, joining: ClusterAdmin, role: str, groups: list[str]) -> Whereabouts:
    """Where the groups' clients are now, on the cluster a fleet leaves and the one it joins."""
    return Whereabouts(await clients_by_group(leaving, role, groups), await clients_by_group(joining, role, groups))


def move_event(verdict: MoveVerdict, now: Whereabouts) -> dict[str, object]:
    """A finished wait as data (a trigger's event): ``done``, ``stripped`` or ``timeout``."""
    status = "stripped" if verdict.stripped else "done" if verdict.done else "timeout"
    return {"status": status, "now": now.to_dict(), "stripped": list(verdict.stripped),
            "waiting": list(verdict.waiting)}


async def wait_for_move(leaving: ClusterAdmin, joining: ClusterAdmin, role: str, before: Whereabouts,
                        canary: bool, deadline: float, poll_seconds: float) -> tuple[MoveVerdict, Whereabouts]:
    """Poll the brokers until the move shows, a canary strips a consumer group, or ``deadline``
    (epoch seconds) passes; the last verdict and what it saw."""
    groups = sorted(before.leaving)
    while True:
        now = await whereabouts(leaving, joining, role, groups)
        verdict = judge_move(before, now, role, canary)
        if verdict.done or verdict.stripped or time.time() >= deadline:
            return verdict, now
        await asyncio.sleep(poll_seconds)


def manual_instructions(fleet: str, role: str, groups: list[str], share: float, namesrv: str,
                        how: str = "") -> str:
    """What the on-call changes by hand for one switch: which clients, how many, where to."""
    which = ("all of its members" if share >= 1 else
             f"a canary of {share:.0%} of each group's members (at least one, never all of a consumer group)")
    text = (f"Point the {role}s of fleet {fleet} (groups {', '.join(groups)}), {which}, at the name"
            f" server(s) {namesrv}.")
    return f"{text} {how.strip()}" if how.strip() else text
