"""Where a topic lives across a cluster's brokers, and where it goes on the target's (rule 2)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from rocketmq_core.errors import InvalidSpec
from rocketmq_core.metadata.fields import FieldChange
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot
from rocketmq_core.model import Share, TopicConfig


@dataclass(frozen=True)
class BrokerMapping:
    """Where a live source's topics go on a live target's brokers.

    ``pairs`` maps brokers one to one: the user's ``broker_map``, then equal names, then the
    rest in sorted order when as many are left on both sides (source broker i -> target broker
    i). A topic whose brokers all have a pair keeps its per-broker layout; otherwise a topic on
    some source brokers stays on as many (a topic pinned to one broker stays on one), and one
    on every source broker goes on every target broker.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    pairs: Mapping[str, str]
    per_broker_perm: bool = False

    @classmethod
    def of(cls, source: ClusterSnapshot, target: ClusterSnapshot, scope: Scope = Scope()) -> BrokerMapping | None:
        """None unless both sides were read from brokers (a file has no layout)."""
        if not source.brokers or not target.brokers:
            return None
        src, tgt = tuple(sorted(b.name for b in source.brokers)), tuple(sorted(b.name for b in target.brokers))
        wrong = sorted(set(scope.broker_map) - set(src)) + sorted(set(scope.broker_map.values()) - set(tgt))
        if wrong:
            raise InvalidSpec(f"broker_map names unknown broker(s) {', '.join(wrong)}: the source's masters are "
                              f"{', '.join(src)}, the target's {', '.join(tgt)}")
        pairs = dict(scope.broker_map)
        pairs.update({b: b for b in src if b in tgt and b not in pairs})
        rest_src = [b for b in src if b not in pairs]
        rest_tgt = [b for b in tgt if b not in pairs.values()]
        if len(rest_src) == len(rest_tgt):
            pairs.update(zip(rest_src, rest_tgt))
        return cls(src, tgt, pairs, scope.per_broker_perm)

    def _rule(self, brokers: Sequence[str]) -> str:
        if all(b in self.pairs for b in brokers):
            return "pairs"
        return "some" if len(brokers) < len(self.source) else "every"

    def place(self, shares: Mapping[str, Share]) -> dict[str, Share]:
        """The target's shares of a topic that has ``shares`` on the source."""
        if len(shares) == 1:  # the common case, fast: 20,000 topics are placed in every diff
            (name, share), = shares.items()
            if name in self.pairs:
                return {self.pairs[name]: share}
        widest = _widest(shares.values())
        names = sorted(shares)
        rule = self._rule(names)
        if rule == "every":
            counts = {(s.read, s.write) for s in shares.values()}
            if len(counts) == 1:
                (read, write), = counts
                return {t: Share(read, write, widest) for t in self.target}
            return spread(sum(s.read for s in shares.values()), sum(s.write for s in shares.values()), widest,
                           {}, self.target)
        targets = [self.pairs[b] for b in names] if rule == "pairs" else \
            [self.target[i % len(self.target)] for i in range(len(names))]
        layout: dict[str, Share] = {}
        for target, name in zip(targets, names):
            share = shares[name]
            perm = share.perm if self.per_broker_perm else widest
            have = layout.get(target)
            layout[target] = Share(share.read, share.write, perm) if have is None else \
                Share(have.read + share.read, have.write + share.write, have.perm | perm)
        return layout

    def explain(self, shares: Mapping[str, Share]) -> str:
        """The rule that placed a topic, and the source brokers' perms when they disagree."""
        names = sorted(shares)
        rule = self._rule(names)
        if rule == "pairs":
            text = ", ".join(f"{b} -> {self.pairs[b]}" for b in names)
        elif rule == "some":
            text = f"on {len(names)} of {len(self.source)} source brokers: stays on {min(len(names), len(self.target))}"
        else:
            text = "on every source broker: on every target broker"
        if len({s.perm for s in shares.values()}) > 1:
            text += (f"; source brokers disagree on perm ({', '.join(f'{b} {shares[b].perm}' for b in names)}): "
                     + ("each keeps its own" if self.per_broker_perm else
                        f"perm {_widest(shares.values())} (the widest) on every target broker"))
        return text


def _widest(shares: Iterable[Share]) -> int:
    perm = 0
    for share in shares:
        perm |= share.perm
    return perm


def spread(read: int, write: int, perm: int, have: Mapping[str, Share], brokers: Sequence[str]) -> dict[str, Share]:
    """Totals on the target: split as the target already splits them, else evenly over the
    brokers holding the topic (all of ``brokers`` for a new one)."""
    if have and (sum(s.read for s in have.values()), sum(s.write for s in have.values())) == (read, write):
        return {b: Share(s.read, s.write, perm) for b, s in have.items()}
    names = sorted(have) or list(brokers)
    reads, writes = split_queues(read, names), split_queues(write, names)
    return {b: Share(reads[b], writes[b], perm) for b in names if reads[b] or writes[b]}


def totals(topic: TopicConfig, layout: Mapping[str, Share]) -> TopicConfig:
    """The topic as a cluster holding ``layout`` shows it (rule 2)."""
    shares = list(layout.values())
    totals = shares[0] if len(shares) == 1 else Share(sum(s.read for s in shares), sum(s.write for s in shares),
                                                      _widest(shares))
    if totals == (topic.read_queues, topic.write_queues, topic.perm):
        return topic
    return msgspec.structs.replace(topic, read_queues=totals.read, write_queues=totals.write, perm=totals.perm)


def share_changes(want: Mapping[str, Share], have: Mapping[str, Share]) -> tuple[FieldChange, ...]:
    """One field per broker whose share differs, named ``queues@<broker>``."""
    return tuple(FieldChange(f"queues@{b}", str(want[b]) if b in want else "absent",
                             str(have[b]) if b in have else "absent")
                 for b in sorted(want.keys() | have.keys()) if want.get(b) != have.get(b))


def split_queues(total: int, brokers: Sequence[str]) -> dict[str, int]:
    """Spread a cluster total over brokers: equal shares, the remainder to the first by name."""
    share, extra = divmod(total, len(brokers))
    return {b: share + (1 if i < extra else 0) for i, b in enumerate(sorted(brokers))}
