"""What the target lacks, has differently or has in addition, and how that reads."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rocketmq_core import acl
from rocketmq_core.metadata.fields import (
    CREATE, DELETE, KIND_GROUP, KIND_TOPIC, UPDATE, FieldChange, field_changes, fields_of, group_fields, topic_fields,
)
from rocketmq_core.metadata.layout import BrokerMapping, share_changes, spread, totals
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot
from rocketmq_core.model import GroupConfig, Share, TopicConfig


@dataclass(frozen=True)
class Change:
    """Create (only on the source), update (on both, fields differ) or delete (only on the target)."""

    action: str
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    source: Any = field(default=None, repr=False, compare=False)
    target: Any = field(default=None, repr=False, compare=False)
    #: A topic's wanted share per target broker (rule 2), and the rule that chose it.
    layout: Mapping[str, Share] | None = field(default=None, compare=False)
    note: str = field(default="", compare=False)

    def summary(self) -> str:
        """One line, no secrets: the object created or deleted, or each field's target -> source."""
        return describe(self.action, self.kind, self.target if self.action == DELETE else self.source, self.fields,
                         self.layout, self.note)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "name": self.name,
                "fields": [f.to_dict() for f in self.fields], "summary": self.summary(),
                **layout_dict(self.layout, self.note)}


@dataclass(frozen=True)
class MetadataDiff:
    """What the target lacks (create), has differently (update) or has in addition (delete)."""

    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()
    compare_v5: bool = False
    scope: Scope = Scope()

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, action: str | None = None, kind: str | None = None) -> list[Change]:
        return [c for c in self.changes if action in (None, c.action) and kind in (None, c.kind)]

    def find(self, kind: str, name: str) -> Change | None:
        return next((c for c in self.changes if c.kind == kind and c.name == name), None)

    def counts(self) -> dict[str, int]:
        return {a: len(self.of(a)) for a in (CREATE, UPDATE, DELETE)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Airflow XCom); secrets are masked."""
        return {"empty": self.empty, "counts": self.counts(), "compare_v5": self.compare_v5,
                "scope": self.scope.to_dict(), "notes": list(self.notes),
                "changes": [c.to_dict() for c in self.changes]}

    def render(self) -> str:
        """A text table, one row per changed field (per object for create and delete)."""
        if self.empty:
            return "no differences in scope\n" + "".join(f"note: {n}\n" for n in self.notes)
        rows = [("ACTION", "KIND", "NAME", "FIELD", "SOURCE", "TARGET")]
        for c in self.changes:
            if c.action == UPDATE:
                rows += [(c.action, c.kind, c.name, f.field, _cell(f.source), _cell(f.target)) for f in c.fields]
            elif c.action == CREATE:
                rows.append((c.action, c.kind, c.name, "-", c.summary(), "(missing)"))
            else:
                rows.append((c.action, c.kind, c.name, "-", "(missing)", c.summary()))
        counts = ", ".join(f"{n} {a}" for a, n in self.counts().items())
        return _table(rows) + f"{len(self.changes)} changes: {counts}\n" + "".join(f"note: {n}\n" for n in self.notes)


def diff(source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope = Scope()) -> MetadataDiff:
    """Compare two snapshots under the module's normalisation rules."""
    v5 = source.v5 and target.v5
    changes = [
        *_diff_topics(source, target, scope, v5),
        *_diff_table(KIND_GROUP, _wanted_groups(source, target), target.groups, lambda n, _: scope.group(n), v5),
    ]
    notes = [] if v5 else ["5.x-only fields (topic attributes, group consumeMessageOrderly, consumeTimeoutMinute, "
                           "groupRetryPolicy, groupSysFlag) not compared: "
                           f"{'source' if not source.v5 else 'target'} is not 5.x"]
    for kind in acl.ACL_KINDS:
        src, tgt = source.acl.of_kind(kind), target.acl.of_kind(kind)
        if src is None or tgt is None:
            if src is not None or tgt is not None:
                notes.append(f"{kind} not compared: not readable on {'source' if src is None else 'target'}")
            continue
        changes += _diff_table(kind, src, tgt, lambda _, e: scope.principal(acl.principal(e)), v5)
    return MetadataDiff(tuple(changes), tuple(notes), v5, scope)


def _diff_topics(source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope, v5: bool) -> list[Change]:
    """Topics compared as totals and, when the target was read from brokers, per broker (rule 2)."""
    mapping = BrokerMapping.of(source, target, scope)
    brokers = sorted(b.name for b in target.brokers)
    changes = []
    for name in sorted(set(source.topics) | set(target.topics)):
        src, tgt = source.topics.get(name), target.topics.get(name)
        if not scope.topic(name):
            continue
        if src is None:
            changes.append(Change(DELETE, KIND_TOPIC, name, target=tgt))
            continue
        have = target.layout.get(name, {})
        if mapping is not None:
            layout: dict[str, Share] | None = mapping.place(source.layout[name])
        elif brokers:  # a file's perm is one broker's: it widens, never narrows
            layout = spread(src.read_queues, src.write_queues, src.perm | (tgt.perm if tgt else 0), have, brokers)
        else:
            layout = None
        want = src if layout is None else totals(src, layout)
        if tgt is not None and want == tgt and (layout is None or layout == have):
            continue  # equal objects are equal under every rule: skip the field-by-field compare
        note = mapping.explain(source.layout[name]) if mapping is not None else ""
        if tgt is None:
            changes.append(Change(CREATE, KIND_TOPIC, name, source=want, layout=layout, note=note))
            continue
        fields = field_changes(topic_fields(want, v5), topic_fields(tgt, v5))
        if layout is not None and len(layout.keys() | have.keys()) > 1:
            fields += share_changes(layout, have)
        if fields:
            changes.append(Change(UPDATE, KIND_TOPIC, name, fields, source=want, target=tgt, layout=layout, note=note))
    return changes


def _wanted_groups(source: ClusterSnapshot, target: ClusterSnapshot) -> Mapping[str, GroupConfig]:
    """Rule 5 for a file read against live brokers: a retryQueueNums equal to the sum over the
    target's masters holding the group (all alike) is mqadmin's sum, so their own value."""
    if source.brokers or not target.brokers:
        return source.groups
    wanted = dict(source.groups)
    for name, group in source.groups.items():
        values = [b.groups[name].retry_queues for b in target.brokers if name in b.groups]
        if len(set(values)) == 1 and group.retry_queues == sum(values) != values[0]:
            wanted[name] = msgspec.structs.replace(group, retry_queues=values[0])
    return wanted


def _diff_table(kind: str, source: Mapping[str, Any], target: Mapping[str, Any],
                in_scope: Callable[[str, Any], bool], v5: bool) -> list[Change]:
    changes = []
    for name in sorted(set(source) | set(target)):
        src, tgt = source.get(name), target.get(name)
        if src == tgt or not in_scope(name, src if src is not None else tgt):
            continue  # equal objects are equal under every rule: skip the field-by-field compare
        if tgt is None:
            changes.append(Change(CREATE, kind, name, source=src))
        elif src is None:
            changes.append(Change(DELETE, kind, name, target=tgt))
        else:
            fields = field_changes(fields_of(kind, src, v5), fields_of(kind, tgt, v5))
            if fields:
                changes.append(Change(UPDATE, kind, name, fields, source=src, target=tgt))
    return changes


def describe(action: str, kind: str, obj: Any, fields: Sequence[FieldChange],
              layout: Mapping[str, Share] | None = None, note: str = "") -> str:
    if action == UPDATE:
        text = ", ".join(f"{f.field}: {_cell(f.target)} -> {_cell(f.source)}" for f in fields)
    else:
        text = _summary(kind, obj)
    return text + _layout_text(layout, note)


def layout_dict(layout: Mapping[str, Share] | None, note: str) -> dict[str, Any]:
    if layout is None:
        return {}
    return {"layout": {b: s._asdict() for b, s in sorted(layout.items())}, "note": note}


def _summary(kind: str, obj: Any) -> str:
    if kind == KIND_TOPIC:
        base = topic_fields(TopicConfig(obj.name), True)
        shown = {k: v for k, v in topic_fields(obj, True).items()
                 if k in ("readQueueNums", "writeQueueNums", "perm", "order") or base.get(k) != v}
    elif kind == KIND_GROUP:
        base = group_fields(GroupConfig(obj.name), True)
        shown = {k: v for k, v in group_fields(obj, True).items() if base.get(k) != v} or {"defaults": True}
    else:
        shown = {k: v for k, v in acl.describe(obj).items() if k != "name"}
    return " ".join(f"{k}={_cell(v)}" for k, v in shown.items())


def _cell(value: object, width: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (bool, list, dict)) or value is None else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def _layout_text(layout: Mapping[str, Share] | None, note: str) -> str:
    if not layout:
        return ""
    return "; on " + ", ".join(f"{b} {s}" for b, s in sorted(layout.items())) + (f" ({note})" if note else "")
