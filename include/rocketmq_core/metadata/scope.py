"""Which topics, groups and ACL principals a diff or a migration covers."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rocketmq_core.errors import InvalidSpec
from rocketmq_core.model import is_system_group, is_system_topic


def _patterns(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


_PATTERN_KEYS = ("topics", "exclude_topics", "groups", "exclude_groups", "acl", "exclude_acl")


@dataclass(frozen=True)
class Scope:
    """Which topics, groups and ACL principals a diff covers (fnmatch include and exclude
    patterns), and how topics land on the target's brokers (rule 2).

    Matching is case-sensitive, like RocketMQ names. System metadata is never in scope.
    ``broker_map`` pins source brokers to target brokers; ``per_broker_perm`` copies each
    source broker's perm instead of the widest, for a user who wants a broker kept read-only.
    """

    topics: tuple[str, ...] = ("*",)
    exclude_topics: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("*",)
    exclude_groups: tuple[str, ...] = ()
    acl: tuple[str, ...] = ("*",)
    exclude_acl: tuple[str, ...] = ()
    broker_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    per_broker_perm: bool = False

    def __post_init__(self) -> None:
        for name in _PATTERN_KEYS:
            object.__setattr__(self, name, _patterns(getattr(self, name)))  # a bare string is one pattern
        if not isinstance(self.broker_map, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.broker_map.items()):
            raise InvalidSpec(f"broker_map must map source broker names to target broker names, "
                              f"not {self.broker_map!r}")
        object.__setattr__(self, "broker_map", dict(self.broker_map))

    def topic(self, name: str, system_topics: frozenset[str] = frozenset()) -> bool:
        return not is_system_topic(name, system_topics) and _matches(name, self.topics, self.exclude_topics)

    def group(self, name: str) -> bool:
        return not is_system_group(name) and _matches(name, self.groups, self.exclude_groups)

    def principal(self, name: str) -> bool:
        return _matches(name, self.acl, self.exclude_acl)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: list(getattr(self, k)) for k in _PATTERN_KEYS}, "broker_map": dict(self.broker_map),
                "per_broker_perm": self.per_broker_perm}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scope:
        unknown = set(data) - set(cls().to_dict())
        if unknown:
            raise InvalidSpec(f"unknown scope keys {sorted(unknown)}")
        return cls(**data)


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if not exclude and "*" in include:  # everything (the default scope): asked 40,000 times per diff
        return True
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))
