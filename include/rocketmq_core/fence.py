"""The source fence: the migrated topics made read-only on every source master before the drain.

Once the producers have moved, a straggler (a stale config, a restarted pod, a producer of a
group no spec lists) must not write where nobody will read. A topic's permission reaches the
clients through its route: the Java client stops sending to a read-only topic at its next route
refresh (``No route info of this topic``). A 4.9 broker does not itself refuse such a send, so
the fence does not stand alone: the cutover still re-measures the topics' writes (checks.
WritesUnchanged) and refuses when anything got through. Consumers keep reading: only the write
bit goes. What each broker had is returned, so lifting the fence restores exactly that.

Where a broker has plain ACL on (4.9's plain_acl.yml), the broker itself refuses: every
account that is not an admin gets the topics as ``SUB`` (it read them) or ``DENY`` (it did not),
so a send fails with NO_PERMISSION at once, whatever client sends it and whatever route it holds.
An admin account passes every ACL check; the fence names those it cannot stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from rocketmq_core.acl import PlainAccount, plain_acl_on, plain_accounts, put_plain_account
from rocketmq_core.admin import BrokerInfo, ClusterAdmin
from rocketmq_core.errors import RocketMQError
from rocketmq_core.model import PERM_WRITE, TopicConfig

#: broker name -> topic -> the permission it had before the fence
Perms = dict[str, dict[str, int]]
#: broker name -> access key -> topic -> the account's own entry for it before the fence ("" for none)
AclPerms = dict[str, dict[str, dict[str, str]]]
_READS = {"SUB", "PUB|SUB", "SUB|PUB", "ANY"}
#: What the fence gives an account for a fenced topic.
_FENCED_ENTRIES = {"SUB", "DENY"}


#: (master address, the config as read, the config the fence writes)
TopicWrite = tuple[str, TopicConfig, TopicConfig]
#: (master address, the account as read, the account the fence writes)
AccountWrite = tuple[str, PlainAccount, PlainAccount]


class FenceRaced(RocketMQError):
    """A topic or account changed between the fence's read and its write: writing what was read
    would revert that change (a queue expansion, an ACL edit), so nothing is written."""


@dataclass(frozen=True)
class Fence:
    """A fence read before anything changes: what every broker and account had (the record that
    lifting it restores), and the writes that put it up, so the record and the writes agree."""

    perms: Perms
    acl: AclPerms
    unstoppable: dict[str, list[str]]  # broker -> admin accounts that pass every ACL check
    topic_writes: tuple[TopicWrite, ...]
    account_writes: tuple[AccountWrite, ...]


async def plan_fence(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                     expected_brokers: Iterable[str] = ()) -> Fence:
    """Read the fence of the topics on every master, changing nothing; ``put_fence`` puts it up."""
    perms, topic_writes = await _read_perms(admin, set(topics), cluster, expected_brokers)
    acl, unstoppable, account_writes = await _read_accounts(admin, sorted(set(topics)), cluster, expected_brokers)
    return Fence(perms, acl, unstoppable, tuple(topic_writes), tuple(account_writes))


async def put_fence(admin: ClusterAdmin, fence: Fence) -> None:
    await _write(admin, fence.topic_writes, fence.account_writes)


async def _write(admin: ClusterAdmin, topic_writes: Iterable[TopicWrite],
                 account_writes: Iterable[AccountWrite]) -> None:
    """Write the fence, once every topic and account is read again and found as first read."""
    topic_writes, account_writes = list(topic_writes), list(account_writes)
    changed = []
    for addr in sorted({addr for addr, _, _ in topic_writes}):
        now = await admin.topic_configs(addr)
        changed += [f"topic {read.name} on {addr}" for a, read, _ in topic_writes
                    if a == addr and now.get(read.name) != read]
    for addr in sorted({addr for addr, _, _ in account_writes}):
        now = await plain_accounts(admin, addr)
        changed += [f"account {read.access_key} on {addr}" for a, read, _ in account_writes
                    if a == addr and now.get(read.access_key) != read]
    if changed:
        raise FenceRaced(f"changed since the fence read them, nothing written: {', '.join(changed)}; run it again")
    for addr, _, config in topic_writes:
        await admin.create_topic(addr, config)
    for addr, _, account in account_writes:
        await put_plain_account(admin, addr, account)


async def fence_topics(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                       expected_brokers: Iterable[str] = ()) -> Perms:
    """Take the write permission of the topics away on every master that holds them; what each had."""
    perms, writes = await _read_perms(admin, set(topics), cluster, expected_brokers)
    await _write(admin, writes, ())
    return perms


async def _read_perms(admin: ClusterAdmin, wanted: set[str], cluster: str | None,
                      expected: Iterable[str]) -> tuple[Perms, list[TopicWrite]]:
    before: Perms = {}
    writes = []
    for broker in await admin.masters(cluster, expected):
        assert broker.master is not None
        configs = await admin.topic_configs(broker.master)
        for name in sorted(wanted & set(configs)):
            config = configs[name]
            before.setdefault(broker.name, {})[name] = config.perm
            if config.perm & PERM_WRITE:
                writes.append((broker.master, config, msgspec.structs.replace(config, perm=config.perm & ~PERM_WRITE)))
    return before, writes


async def lift_fence(admin: ClusterAdmin, before: Perms, cluster: str | None = None) -> dict[str, list[str]]:
    """Give every topic back the permission ``fence_topics`` found; broker -> topics restored."""
    restored: dict[str, list[str]] = {}
    for broker in await admin.masters(cluster, before):
        assert broker.master is not None
        configs = await admin.topic_configs(broker.master)
        for name, perm in sorted(before.get(broker.name, {}).items()):
            config = configs.get(name)
            if config is not None and config.perm != perm:
                await admin.create_topic(broker.master, msgspec.structs.replace(config, perm=perm))
                restored.setdefault(broker.name, []).append(name)
    return restored


def carried_over(earlier: Any, now: Any) -> Any:
    """What to restore, when an earlier run's fence may still stand (``Perms`` or ``AclPerms``):
    at each leaf, what the earlier record says where the value now is what a fence sets (no
    write bit, SUB or DENY, or gone), else what is there now (the fence was lifted since)."""
    if isinstance(earlier, dict) or isinstance(now, dict):
        earlier, now = earlier or {}, now or {}
        return {key: carried_over(earlier.get(key), now.get(key)) for key in sorted(set(earlier) | set(now))}
    fenced = now is None or (isinstance(now, int) and not now & PERM_WRITE) or now in _FENCED_ENTRIES
    return earlier if earlier is not None and fenced else now


def _entries(account: PlainAccount) -> dict[str, str]:
    return dict(entry.partition("=")[::2] for entry in account.topic_perms)


def _with_entries(account: PlainAccount, entries: dict[str, str]) -> PlainAccount:
    return replace(account, topic_perms=tuple(sorted(f"{t}={p}" for t, p in entries.items())))


async def _acl_masters(admin: ClusterAdmin, cluster: str | None, expected: Iterable[str]) -> list[tuple[str, str]]:
    """(broker name, master address) of every master with plain ACL on."""
    return await _with_plain_acl(admin, await admin.masters(cluster, expected))


async def _with_plain_acl(admin: ClusterAdmin, brokers: Iterable[BrokerInfo]) -> list[tuple[str, str]]:
    found = []
    for broker in brokers:
        assert broker.master is not None
        if plain_acl_on(await admin.broker_config(broker.master)):
            found.append((broker.name, broker.master))
    return found


async def accounts_that_publish(admin: ClusterAdmin, topics: Iterable[str],
                                masters: Iterable[BrokerInfo]) -> dict[str, dict[str, list[str]]]:
    """Per master (of those given) with plain ACL on, the non-admin accounts that may send to any
    of the topics (broker -> account -> topics): empty while the fence's ACL part stands. Admins
    pass every check whatever their entries; the fence names them when it goes up."""
    wanted = sorted(set(topics))
    found: dict[str, dict[str, list[str]]] = {}
    for name, addr in await _with_plain_acl(admin, masters):
        for key, account in sorted((await plain_accounts(admin, addr)).items()):
            publishing = [t for t in wanted if not account.admin and account.may_publish(t)]
            if publishing:
                found.setdefault(name, {})[key] = publishing
    return found


async def deny_writes(admin: ClusterAdmin, topics: Iterable[str], cluster: str | None = None,
                      expected_brokers: Iterable[str] = ()) -> tuple[AclPerms, dict[str, list[str]]]:
    """On every master with plain ACL on, give every non-admin account the topics as ``SUB`` or
    ``DENY``; what each account had, and per broker the admin accounts the fence cannot stop.
    Every account is checked before the first is changed."""
    before, unstoppable, writes = await _read_accounts(admin, sorted(set(topics)), cluster, expected_brokers)
    await _write(admin, (), writes)
    return before, unstoppable


async def _read_accounts(admin: ClusterAdmin, wanted: list[str], cluster: str | None, expected: Iterable[str],
                         ) -> tuple[AclPerms, dict[str, list[str]], list[AccountWrite]]:
    before: AclPerms = {}
    unstoppable: dict[str, list[str]] = {}
    writes: list[AccountWrite] = []
    for name, addr in await _acl_masters(admin, cluster, expected):
        for key, account in sorted((await plain_accounts(admin, addr)).items()):
            if account.admin:
                unstoppable.setdefault(name, []).append(key)
                continue
            entries = _entries(account)
            before.setdefault(name, {})[key] = {t: entries.get(t, "") for t in wanted}
            for topic in wanted:
                entries[topic] = "SUB" if account.topic_perm(topic) in _READS else "DENY"
            fenced = _with_entries(account, entries)
            fenced.validate()
            writes.append((addr, account, fenced))
    return before, unstoppable, writes


async def allow_writes(admin: ClusterAdmin, before: AclPerms, cluster: str | None = None) -> dict[str, list[str]]:
    """Give every account back its own entries for the topics; broker -> accounts restored.

    4.9 cannot store an empty topic list through an update: an account that had no entry at
    all gets its default spelled out for the topics, which grants the same."""
    restored: dict[str, list[str]] = {}
    if not before:
        return restored
    for name, addr in await _acl_masters(admin, cluster, before):
        accounts = await plain_accounts(admin, addr)
        for key, had in sorted(before.get(name, {}).items()):
            account = accounts.get(key)
            if account is None:
                continue
            entries = _entries(account)
            for topic, entry in had.items():
                if entry:
                    entries[topic] = entry
                else:
                    entries.pop(topic, None)
            if not entries:
                entries = dict.fromkeys(had, account.default_topic_perm or "DENY")
            await put_plain_account(admin, addr, _with_entries(account, entries))
            restored.setdefault(name, []).append(key)
    return restored
