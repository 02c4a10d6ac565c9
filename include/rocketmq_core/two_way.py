"""Three-way metadata sync for two-way replication: who changed what since the last sync.

Comparing the two clusters alone cannot tell an addition on one side from a deletion on the
other. Against the snapshot both sides agreed on at the last sync (the base) it can: a change
on one side only is carried to the other; a change on both sides that does not agree is a
conflict, left alone until a person decides. Without a base (the first sync) nothing is
deleted: objects one side lacks are created there, and objects that differ are conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rocketmq_core.metadata.diff import MetadataDiff, diff
from rocketmq_core.metadata.fields import CREATE, DELETE
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot

Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class ThreeWay:
    """Changes to carry to each side, and the objects changed on both sides differently."""

    to_target: MetadataDiff
    to_source: MetadataDiff
    conflicts: tuple[Key, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"to_target": self.to_target.to_dict(), "to_source": self.to_source.to_dict(),
                "conflicts": [{"kind": k, "name": n} for k, n in self.conflicts]}


def _changed(side: ClusterSnapshot, base: ClusterSnapshot, scope: Scope) -> set[Key]:
    """Objects a side created, changed or deleted since the base."""
    return {(c.kind, c.name) for c in diff(side, base, scope).changes}


def _only(d: MetadataDiff, keys: set[Key], allow_delete: bool) -> MetadataDiff:
    kept = tuple(c for c in d.changes if (c.kind, c.name) in keys and (allow_delete or c.action != DELETE))
    return replace(d, changes=kept)


def three_way(source: ClusterSnapshot, target: ClusterSnapshot, base: ClusterSnapshot | None,
              scope: Scope = Scope()) -> ThreeWay:
    source_to_target, target_to_source = diff(source, target, scope), diff(target, source, scope)
    differing = {(c.kind, c.name) for c in source_to_target.changes}
    if base is None:
        creates_on_target = {(c.kind, c.name) for c in source_to_target.changes if c.action == CREATE}
        creates_on_source = {(c.kind, c.name) for c in target_to_source.changes if c.action == CREATE}
        conflicts = differing - creates_on_target - creates_on_source
        return ThreeWay(_only(source_to_target, creates_on_target, False),
                        _only(target_to_source, creates_on_source, False), tuple(sorted(conflicts)))
    by_source, by_target = _changed(source, base, scope), _changed(target, base, scope)
    conflicts = differing & by_source & by_target
    return ThreeWay(_only(source_to_target, (by_source - by_target) & differing, True),
                    _only(target_to_source, (by_target - by_source) & differing, True), tuple(sorted(conflicts)))


def resolve(source: ClusterSnapshot, target: ClusterSnapshot, keys: list[Key], winner: str,
            scope: Scope = Scope()) -> tuple[str, MetadataDiff]:
    """The changes that make the losing side like the winner for the conflicting objects."""
    if winner not in ("source", "target"):
        raise ValueError(f"winner must be source or target, not {winner!r}")
    won, lost = (source, target) if winner == "source" else (target, source)
    return ("target" if winner == "source" else "source"), _only(diff(won, lost, scope), set(keys), True)

