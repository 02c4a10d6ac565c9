"""ACL accounts of a RocketMQ cluster: 4.9 plain ACL (ACL 1.0) and 5.x ACL 2.0 users and policies.

Wire names come from apache/rocketmq (tags rocketmq-all-4.9.7 and rocketmq-all-5.3.3, broker
``AdminBrokerProcessor``) and were confirmed against 4.9.7 and 5.5.0 brokers:

* ACL 1.0, 4.9.x up to 5.3.2: GET_BROKER_CLUSTER_ACL_CONFIG (54) answers
  ``{"globalWhiteAddrs": [...], "plainAccessConfigs": [PlainAccessConfig]}``;
  UPDATE_AND_CREATE_ACL_CONFIG (50) takes the account as header fields accessKey, secretKey,
  whiteRemoteAddress, admin, defaultTopicPerm, defaultGroupPerm, topicPerms and groupPerms
  (the two lists comma-joined ``res=PERM``); DELETE_ACL_CONFIG (51) takes accessKey.
* ACL 2.0, 5.3+: users (3001..3005) have header ``username`` (list: ``filter``) and a UserInfo body
  ``{username, password, userType: Super|Normal, userStatus: enable|disable}``; ACLs
  (3006..3010) have header ``subject`` (``User:name``; delete adds ``resource`` and
  ``policyType``; list: ``subjectFilter``, ``resourceFilter``) and an AclInfo body
  ``{subject, policies: [{policyType, entries: [{resource, actions, sourceIps, decision}]}]}``.

How a broker without ACL answers, and why reading is gated on its configuration first:

* 4.9.x with ``aclEnable=false`` does not answer code 54 at all (the handler throws on the
  missing validator and writes no response), so a plain read would only time out.
* 5.5.0 answers code 54 with REQUEST_CODE_NOT_SUPPORTED (ACL 1.0 was removed in 5.3.3).
* 5.x without an ``authenticationMetadataProvider`` / ``authorizationMetadataProvider`` answers
  the 30xx codes with SYSTEM_ERROR ("... is not configured").

Secrets (secretKey, password) never appear in ``repr()``, in ``describe()`` (the form for logs
and XCom) or in error messages: brokers echo a rejected secret key in their remark, so write
failures are re-raised with the secret replaced by ``***``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rocketmq_core.errors import InvalidSpec, ResponseError, response_error
from rocketmq_core.remoting.codec import RemotingCommand
from rocketmq_core.remoting.fastjson import loads
from rocketmq_core.remoting.protocol import RequestCode, ResponseCode

if TYPE_CHECKING:
    from rocketmq_core.admin import ClusterAdmin

T = TypeVar("T")
MASK = "***"
#: Field names (wire spelling) whose values are secrets; shown as MASK wherever values are shown.
SECRET_FIELDS = frozenset({"secretKey", "password"})

KIND_ACCOUNT = "acl_account"   # 4.9 plain ACL account
KIND_USER = "acl_user"         # 5.x ACL 2.0 user
KIND_POLICY = "acl_policy"     # 5.x ACL 2.0 policy set of one subject

#: 4.9 refuses access and secret keys of 6 characters or fewer (AclConstants.*_MIN_LENGTH = 6).
PLAIN_KEY_MIN_LENGTH = 7
_PLAIN_PERMS = {"DENY", "PUB", "SUB", "PUB|SUB", "SUB|PUB"}
_PUBLISHING = {"PUB", "PUB|SUB", "SUB|PUB", "ANY"}
_USER_TYPES = {"super": "Super", "normal": "Normal"}
_USER_STATUSES = {"enable", "disable"}
_DECISIONS = {"allow": "Allow", "deny": "Deny"}
_POLICY_TYPES = {"custom": "Custom", "default": "Default"}
_RESOURCE_TYPES = {"cluster", "namespace", "topic", "group"}
_ACTIONS = {"All", "Any", "Pub", "Sub", "Create", "Update", "Delete", "Get", "List"}


@dataclass(frozen=True)
class PlainAccount:
    """A 4.9 plain ACL account (one entry of plain_acl.yml)."""

    access_key: str
    secret_key: str = field(default="", repr=False)
    admin: bool = False
    white_remote_address: str = ""
    default_topic_perm: str = ""
    default_group_perm: str = ""
    topic_perms: tuple[str, ...] = ()
    group_perms: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"PlainAccount(access_key={self.access_key!r}, secret_key={MASK!r}, admin={self.admin})"

    @property
    def name(self) -> str:
        return self.access_key

    def topic_perm(self, topic: str) -> str:
        """What the account may do with a topic: its own entry, else its default ("" for none)."""
        own = next((perm for entry in self.topic_perms for name, _, perm in [entry.partition("=")] if name == topic),
                   "")
        return own or self.default_topic_perm

    def may_publish(self, topic: str) -> bool:
        """Whether the broker lets this account send to the topic (an admin passes every check)."""
        return self.admin or self.topic_perm(topic) in _PUBLISHING

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PlainAccount:
        return cls(
            access_key=str(data["accessKey"]), secret_key=str(data.get("secretKey") or ""),
            admin=bool(data.get("admin", False)),
            white_remote_address=str(data.get("whiteRemoteAddress") or ""),
            default_topic_perm=str(data.get("defaultTopicPerm") or ""),
            default_group_perm=str(data.get("defaultGroupPerm") or ""),
            topic_perms=tuple(sorted(str(p) for p in data.get("topicPerms") or ())),
            group_perms=tuple(sorted(str(p) for p in data.get("groupPerms") or ())),
        )

    def fields(self) -> dict[str, object]:
        """Comparable fields, wire names; the secret is included (compare it, never print it)."""
        return {"secretKey": self.secret_key, "admin": self.admin, "whiteRemoteAddress": self.white_remote_address,
                "defaultTopicPerm": self.default_topic_perm, "defaultGroupPerm": self.default_group_perm,
                "topicPerms": list(self.topic_perms), "groupPerms": list(self.group_perms)}

    def header(self) -> dict[str, object]:
        """extFields of UPDATE_AND_CREATE_ACL_CONFIG; empty optional fields are left out
        because 4.9 rejects an empty perm list and keeps the stored value for absent ones."""
        header: dict[str, object] = {"accessKey": self.access_key, "secretKey": self.secret_key,
                                     "admin": str(self.admin).lower()}
        optional = {"whiteRemoteAddress": self.white_remote_address, "defaultTopicPerm": self.default_topic_perm,
                    "defaultGroupPerm": self.default_group_perm, "topicPerms": ",".join(self.topic_perms),
                    "groupPerms": ",".join(self.group_perms)}
        header.update({k: v for k, v in optional.items() if v})
        return header

    def validate(self) -> None:
        for what, value in (("access key", self.access_key), ("secret key", self.secret_key)):
            if len(value) < PLAIN_KEY_MIN_LENGTH:
                raise InvalidSpec(f"plain ACL account {self.access_key!r}: the {what} must have at least "
                                  f"{PLAIN_KEY_MIN_LENGTH} characters")
        for perm in (self.default_topic_perm, self.default_group_perm):
            if perm and perm not in _PLAIN_PERMS:
                raise InvalidSpec(f"plain ACL account {self.access_key!r}: default perm {perm!r} is not one of "
                                  f"{sorted(_PLAIN_PERMS)}")
        for entry in (*self.topic_perms, *self.group_perms):
            resource, sep, perm = entry.partition("=")
            if not sep or not resource.strip() or perm.strip() not in _PLAIN_PERMS:
                raise InvalidSpec(f"plain ACL account {self.access_key!r}: {entry!r} is not 'resource=PERM'")


@dataclass(frozen=True)
class AclUser:
    """A 5.x ACL 2.0 user."""

    username: str
    password: str = field(default="", repr=False)
    user_type: str = "Normal"
    user_status: str = "enable"

    def __repr__(self) -> str:
        return f"AclUser(username={self.username!r}, password={MASK!r}, user_type={self.user_type!r})"

    @property
    def name(self) -> str:
        return self.username

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> AclUser:
        return cls(username=str(data["username"]), password=str(data.get("password") or ""),
                   user_type=_USER_TYPES.get(str(data.get("userType") or "normal").lower(), "Normal"),
                   user_status=str(data.get("userStatus") or "enable").lower())

    def to_wire(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "userType": self.user_type,
                "userStatus": self.user_status}

    def fields(self) -> dict[str, object]:
        return {"password": self.password, "userType": self.user_type, "userStatus": self.user_status}

    def validate(self) -> None:
        if not self.username or not self.password:
            raise InvalidSpec(f"ACL user {self.username!r} needs a username and a password")
        if self.user_type.lower() not in _USER_TYPES or self.user_status not in _USER_STATUSES:
            raise InvalidSpec(f"ACL user {self.username!r}: type {self.user_type!r} / status {self.user_status!r} "
                              f"must be one of {sorted(_USER_TYPES.values())} / {sorted(_USER_STATUSES)}")


@dataclass(frozen=True)
class PolicyEntry:
    """One resource of a policy: what may (Allow) or may not (Deny) be done to it, and from where."""

    resource: str
    actions: tuple[str, ...]
    decision: str = "Allow"
    source_ips: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PolicyEntry:
        return cls(resource=str(data["resource"]), actions=tuple(sorted(str(a) for a in data.get("actions") or ())),
                   decision=_DECISIONS.get(str(data.get("decision") or "allow").lower(), str(data.get("decision"))),
                   source_ips=tuple(sorted(str(ip) for ip in data.get("sourceIps") or ())))

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"resource": self.resource, "actions": list(self.actions), "decision": self.decision}
        if self.source_ips:
            wire["sourceIps"] = list(self.source_ips)
        return wire

    def text(self) -> str:
        ips = f" from {','.join(self.source_ips)}" if self.source_ips else ""
        return f"{self.decision} {'|'.join(self.actions)} on {self.resource}{ips}"


@dataclass(frozen=True)
class AclPolicy:
    """Every policy of one subject (``User:name``); entries are kept sorted so equal means same."""

    subject: str
    policy_type: str = "Custom"
    entries: tuple[PolicyEntry, ...] = ()

    @property
    def name(self) -> str:
        return self.subject

    @property
    def principal(self) -> str:
        """The user name of a ``User:`` subject, which scope patterns match."""
        return self.subject.partition(":")[2] or self.subject

    @classmethod
    def from_acl_info(cls, data: Mapping[str, Any]) -> list[AclPolicy]:
        """One AclPolicy per policy type in an AclInfo (Custom and Default are kept apart)."""
        result = []
        for policy in data.get("policies") or ():
            entries = sorted((PolicyEntry.from_wire(e) for e in policy.get("entries") or ()),
                             key=lambda e: e.resource)
            policy_type = _POLICY_TYPES.get(str(policy.get("policyType") or "custom").lower(), "Custom")
            result.append(cls(str(data["subject"]), policy_type, tuple(entries)))
        return result

    def to_wire(self) -> dict[str, object]:
        return {"subject": self.subject,
                "policies": [{"policyType": self.policy_type, "entries": [e.to_wire() for e in self.entries]}]}

    def fields(self) -> dict[str, object]:
        return {"policyType": self.policy_type, "entries": [e.text() for e in self.entries]}

    def validate(self) -> None:
        kind, sep, user = self.subject.partition(":")
        if kind != "User" or not sep or not user:
            raise InvalidSpec(f"ACL subject {self.subject!r} must look like 'User:name'")
        if not self.entries:
            raise InvalidSpec(f"ACL of {self.subject!r} has no entries; RocketMQ rejects an empty policy")
        for entry in self.entries:
            rtype = entry.resource.partition(":")[0].lower()
            if entry.resource != "*" and rtype not in _RESOURCE_TYPES:
                raise InvalidSpec(f"ACL of {self.subject!r}: resource {entry.resource!r} must be '*' or "
                                  f"Cluster:/Namespace:/Topic:/Group: followed by a name, '*' or a prefix*")
            if not entry.actions or not set(entry.actions) <= _ACTIONS or entry.decision not in _DECISIONS.values():
                raise InvalidSpec(f"ACL of {self.subject!r}: {entry.text()!r} needs actions from {sorted(_ACTIONS)} "
                                  f"and the decision Allow or Deny")


AclEntry = PlainAccount | AclUser | AclPolicy


def entry_kind(entry: AclEntry) -> str:
    return {PlainAccount: KIND_ACCOUNT, AclUser: KIND_USER, AclPolicy: KIND_POLICY}[type(entry)]


def entry_key(entry: AclEntry) -> str:
    """The name an entry is known by in a snapshot: access key, username, or ``subject`` plus
    ``#Default`` for a Default-type policy (so both policy types of a subject can coexist)."""
    if isinstance(entry, AclPolicy) and entry.policy_type != "Custom":
        return f"{entry.subject}#{entry.policy_type}"
    return entry.name


def principal(entry: AclEntry) -> str:
    """Who the entry is about, for scope patterns: access key or username."""
    return entry.principal if isinstance(entry, AclPolicy) else entry.name


def describe(entry: AclEntry) -> dict[str, object]:
    """A JSON-ready form with secrets masked: safe for logs and XCom."""
    return {"name": entry.name, **{k: (MASK if k in SECRET_FIELDS else v) for k, v in entry.fields().items()}}


@dataclass(frozen=True)
class AclState:
    """What one broker (or cluster) holds, per kind; None means "could not be read", with the why in notes."""

    accounts: Mapping[str, PlainAccount] | None = None
    users: Mapping[str, AclUser] | None = None
    policies: Mapping[str, AclPolicy] | None = None
    notes: tuple[str, ...] = ()

    def of_kind(self, kind: str) -> Mapping[str, AclEntry] | None:
        return {KIND_ACCOUNT: self.accounts, KIND_USER: self.users, KIND_POLICY: self.policies}[kind]


ACL_KINDS = (KIND_ACCOUNT, KIND_USER, KIND_POLICY)


# --- reading --------------------------------------------------------------------------------

async def plain_accounts(admin: ClusterAdmin, addr: str) -> dict[str, PlainAccount]:
    """Every plain ACL account of one broker (code 54). Call only when aclEnable=true, see module doc."""
    resp = await admin.client.invoke(addr, RequestCode.GET_BROKER_CLUSTER_ACL_CONFIG)
    data = loads(resp.body) if resp.body else {}
    accounts = (PlainAccount.from_wire(a) for a in data.get("plainAccessConfigs") or ())
    return {a.access_key: a for a in accounts}


async def list_users(admin: ClusterAdmin, addr: str, name_filter: str | None = None) -> dict[str, AclUser]:
    resp = await admin.client.invoke(addr, RequestCode.AUTH_LIST_USER, {"filter": name_filter})
    users = (AclUser.from_wire(u) for u in (loads(resp.body) if resp.body else []))
    return {u.username: u for u in users}


async def get_user(admin: ClusterAdmin, addr: str, username: str) -> AclUser | None:
    resp = await admin.client.invoke(addr, RequestCode.AUTH_GET_USER, {"username": username})
    return AclUser.from_wire(loads(resp.body)) if resp.body else None


async def list_policies(admin: ClusterAdmin, addr: str, subject_filter: str | None = None,
                        resource_filter: str | None = None) -> dict[str, AclPolicy]:
    resp = await admin.client.invoke(addr, RequestCode.AUTH_LIST_ACL,
                                     {"subjectFilter": subject_filter, "resourceFilter": resource_filter})
    policies = [p for info in (loads(resp.body) if resp.body else []) for p in AclPolicy.from_acl_info(info)]
    return {entry_key(p): p for p in policies}


async def get_policies(admin: ClusterAdmin, addr: str, subject: str) -> list[AclPolicy]:
    """The policies of one subject; none (also when the subject has no ACL at all) is an empty list."""
    resp = await admin.client.invoke(addr, RequestCode.AUTH_GET_ACL, {"subject": subject},
                                     accept=(ResponseCode.SUCCESS, ResponseCode.NO_PERMISSION))
    if resp.code == ResponseCode.NO_PERMISSION:
        if "not exist" in (resp.remark or ""):
            return []
        raise response_error(addr, RequestCode.AUTH_GET_ACL, resp.code, resp.remark)
    return AclPolicy.from_acl_info(loads(resp.body)) if resp.body else []


def plain_acl_on(config: dict[str, str]) -> bool:
    """Whether a broker's configuration turns plain ACL (1.0) on; off unless set."""
    return config.get("aclEnable", "false").lower() == "true"


async def read_acl(admin: ClusterAdmin, addr: str, major_version: int) -> AclState:
    """Everything the broker's ACL holds that can be read; each kind that cannot is None with a note."""
    config = await admin.broker_config(addr)
    notes: list[str] = []
    accounts = users = policies = None
    if plain_acl_on(config):
        accounts = await _try(notes, f"{addr}: plain ACL", plain_accounts(admin, addr))
    else:
        why = "a 4.9 broker does not even answer code 54 then" if major_version < 5 else "ACL 1.0"
        notes.append(f"{addr}: plain ACL off (aclEnable=false; {why})")
    if major_version >= 5:
        if config.get("authenticationMetadataProvider"):
            users = await _try(notes, f"{addr}: ACL 2.0 users", list_users(admin, addr))
        else:
            notes.append(f"{addr}: ACL 2.0 users not kept (no authenticationMetadataProvider)")
        if config.get("authorizationMetadataProvider"):
            policies = await _try(notes, f"{addr}: ACL 2.0 policies", list_policies(admin, addr))
        else:
            notes.append(f"{addr}: ACL 2.0 policies not kept (no authorizationMetadataProvider)")
    else:
        notes.append(f"{addr}: RocketMQ {major_version}.x has no ACL 2.0 users or policies")
    return AclState(accounts, users, policies, tuple(notes))


async def _try(notes: list[str], what: str, job: Awaitable[T]) -> T | None:
    """Await a read; a refusal (not supported, not configured, no permission) becomes a note."""
    try:
        return await job
    except ResponseError as exc:
        notes.append(f"{what} not readable: {exc}")
        return None


# --- writing --------------------------------------------------------------------------------

async def put_plain_account(admin: ClusterAdmin, addr: str, account: PlainAccount) -> None:
    """Create or update one 4.9 plain ACL account on one broker.

    4.9 keeps stored values for fields left out, and an empty perm list cannot be sent; so an
    update can add or replace perms but not empty a list (delete and re-create for that).
    """
    account.validate()
    await _invoke_secret(admin, addr, RequestCode.UPDATE_AND_CREATE_ACL_CONFIG, account.header(), b"",
                         account.secret_key)


async def delete_plain_account(admin: ClusterAdmin, addr: str, access_key: str) -> bool:
    """Delete one account; False when the broker did not have it."""
    resp = await admin.client.invoke(addr, RequestCode.DELETE_ACL_CONFIG, {"accessKey": access_key},
                                     accept=(ResponseCode.SUCCESS, ResponseCode.DELETE_ACL_CONFIG_FAILED))
    if resp.code == ResponseCode.SUCCESS:
        return True
    if access_key in await plain_accounts(admin, addr):
        raise response_error(addr, RequestCode.DELETE_ACL_CONFIG, resp.code, resp.remark)
    return False


async def create_user(admin: ClusterAdmin, addr: str, user: AclUser) -> None:
    user.validate()
    await _invoke_secret(admin, addr, RequestCode.AUTH_CREATE_USER, {"username": user.username},
                         json.dumps(user.to_wire()).encode(), user.password)


async def update_user(admin: ClusterAdmin, addr: str, user: AclUser) -> None:
    user.validate()
    await _invoke_secret(admin, addr, RequestCode.AUTH_UPDATE_USER, {"username": user.username},
                         json.dumps(user.to_wire()).encode(), user.password)


async def delete_user(admin: ClusterAdmin, addr: str, username: str) -> None:
    """Delete a user; deleting one that does not exist succeeds (the broker treats it so)."""
    await admin.client.invoke(addr, RequestCode.AUTH_DELETE_USER, {"username": username})


async def put_policy(admin: ClusterAdmin, addr: str, policy: AclPolicy) -> None:
    """Make the subject's policy of this type exactly ``policy``.

    The broker merges (entries of other resources survive a create or update), so entries the
    broker holds for resources no longer wanted are deleted one by one first.
    """
    policy.validate()
    current = {p.policy_type: p for p in await get_policies(admin, addr, policy.subject)}.get(policy.policy_type)
    wanted = {e.resource for e in policy.entries}
    for entry in current.entries if current else ():
        if entry.resource not in wanted:
            await admin.client.invoke(addr, RequestCode.AUTH_DELETE_ACL,
                                      {"subject": policy.subject, "policyType": policy.policy_type,
                                       "resource": entry.resource})
    code = RequestCode.AUTH_UPDATE_ACL if current else RequestCode.AUTH_CREATE_ACL
    await admin.client.invoke(addr, code, {"subject": policy.subject}, json.dumps(policy.to_wire()).encode())


async def delete_policy(admin: ClusterAdmin, addr: str, subject: str, policy_type: str | None = None) -> bool:
    """Delete every entry of a subject (of one policy type when given); False when it had none."""
    policies = await get_policies(admin, addr, subject)
    targets = [p for p in policies if policy_type is None or p.policy_type == policy_type]
    if not targets:
        return False
    if len(targets) == len(policies):
        await admin.client.invoke(addr, RequestCode.AUTH_DELETE_ACL, {"subject": subject})
        return True
    for policy in targets:
        for entry in policy.entries:
            await admin.client.invoke(addr, RequestCode.AUTH_DELETE_ACL,
                                      {"subject": subject, "policyType": policy.policy_type,
                                       "resource": entry.resource})
    return True


async def put_entry(admin: ClusterAdmin, addr: str, entry: AclEntry, current: AclEntry | None) -> None:
    """Make one broker hold ``entry``; ``current`` is what it holds now under that name (or None).

    A 4.9 account whose optional fields must become empty is deleted and re-created, the only
    way 4.9 offers to empty them (see put_plain_account).
    """
    if isinstance(entry, PlainAccount):
        if isinstance(current, PlainAccount) and _needs_recreate(entry, current):
            await delete_plain_account(admin, addr, entry.access_key)
        await put_plain_account(admin, addr, entry)
    elif isinstance(entry, AclUser):
        await (update_user if current is not None else create_user)(admin, addr, entry)
    else:
        await put_policy(admin, addr, entry)


def _needs_recreate(wanted: PlainAccount, current: PlainAccount) -> bool:
    pairs = ((wanted.white_remote_address, current.white_remote_address),
             (wanted.default_topic_perm, current.default_topic_perm),
             (wanted.default_group_perm, current.default_group_perm),
             (wanted.topic_perms, current.topic_perms), (wanted.group_perms, current.group_perms))
    return any(not want and have for want, have in pairs)


async def delete_entry(admin: ClusterAdmin, addr: str, entry: AclEntry) -> None:
    if isinstance(entry, PlainAccount):
        await delete_plain_account(admin, addr, entry.access_key)
    elif isinstance(entry, AclUser):
        await delete_user(admin, addr, entry.username)
    else:
        await delete_policy(admin, addr, entry.subject, entry.policy_type)


async def _invoke_secret(admin: ClusterAdmin, addr: str, code: int, header: dict[str, object], body: bytes,
                         secret: str) -> RemotingCommand:
    """Invoke a request that carries a secret; a refusal is re-raised with the secret masked."""
    try:
        return await admin.client.invoke(addr, code, header, body)
    except ResponseError as exc:
        failure = type(exc)(exc.addr, exc.request_code, exc.response_code, _mask(exc.remark, secret))
    # Raised outside the except block so the unmasked original is not chained to it.
    raise failure


def _mask(text: str | None, secret: str) -> str | None:
    return text.replace(secret, MASK) if text and secret else text

