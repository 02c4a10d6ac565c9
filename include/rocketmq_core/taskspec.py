"""Task specs: one YAML file per migration or replication task, the single source of truth.

Specs are validated before any DAG is built, with errors that name the file and the field.
Two specs whose scopes on the same source cluster can touch the same topic or group are both
rejected: a topic must never be in two migrations at once. At parse time that is decided on
names and patterns (conservatively: patterns whose fixed prefixes overlap clash); at run time
the preflight repeats it on the concrete topics and groups.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator, model_validator

from rocketmq_core.address_service import check_subgroup
from rocketmq_core.errors import InvalidSpec
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.model import validate_group_name, validate_topic_name

SPECS_DIR_ENV = "RMQ_TASK_SPECS_DIR"
#: libyaml's loader when PyYAML has it: parsing 200 specs is part of every DAG-folder parse.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-\u4e00-\u9fff]{1,200}$")
_WILDCARDS = re.compile(r"[*?\[]")
#: An approver is an Airflow user name as the auth manager reports it (no spaces or commas), or
#: ROLE_PREFIX and a role: everyone holding it (resolved by rocketmq_provider.auth under FAB).
ROLE_PREFIX = "role:"
_USER_NAME = re.compile(r"^[^\s,]{1,256}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Patterns(_Strict):
    include: list[str] = ["*"]
    exclude: list[str] = []


class ScopeSpec(_Strict):
    topics: Patterns = Patterns()
    groups: Patterns = Patterns()
    #: Source broker -> target broker, for topics that must land on a given broker (see README).
    brokers: dict[str, str] = {}

    def to_scope(self) -> Scope:
        """The metadata scope the diff, sync and preflight resolve names with."""
        return Scope(topics=tuple(self.topics.include), exclude_topics=tuple(self.topics.exclude),
                     groups=tuple(self.groups.include), exclude_groups=tuple(self.groups.exclude),
                     broker_map=self.brokers)


class ClusterRef(_Strict):
    conn_id: Annotated[str, Field(min_length=1)]
    cluster: str | None = None

    @property
    def origin_id(self) -> str:
        """The id replication stamps on the messages it copies from this cluster, which is what
        stops two-way loops: the cluster name, else the connection id."""
        return re.sub(r"[^A-Za-z0-9_.:-]", "_", self.cluster or self.conn_id)


class HttpSwitchSpec(_Strict):
    """How to tell a fleet to use another cluster: an HTTP call through an Airflow connection.

    ``endpoint`` and ``body`` are Jinja templates; ``{{ task.switch_request }}`` holds the fleet,
    role, groups, share and destination cluster, ``{{ task.target_namesrv }}`` its name servers.
    """

    type: Literal["http"] = "http"
    http_conn_id: Annotated[str, Field(min_length=1)]
    endpoint: Annotated[str, Field(min_length=1)]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body: dict[str, Any] | None = None
    #: ``form`` sends the body as form fields (a config center such as Nacos); each must be a string.
    content_type: Literal["json", "form"] = "json"

    @model_validator(mode="after")
    def _form_fields_are_text(self) -> HttpSwitchSpec:
        if self.content_type == "form":
            if self.body is None:
                raise ValueError("content_type form needs a body: the form fields to send")
            wrong = sorted(k for k, v in self.body.items() if not isinstance(v, str))
            if wrong:
                raise ValueError(f"form fields must be text (templates included); not text: {wrong}")
        return self


class AddressServiceSwitchSpec(_Strict):
    """How to move a fleet whose clients ask an address service (rocketmq.namesrv.domain) for
    their name servers: change what the fleet's subgroups answer, then wait for the brokers to
    show the move (see rocketmq_core.address_service and rocketmq_core.fleet_moves).

    The fleet's canary members use ``canary_subgroup`` and the rest ``subgroup``: a canary moves
    the first, a full move (or a rollback) both. ``http_conn_id`` is an HTTP connection to the
    service; its password, if any, is the bearer token.
    """

    type: Literal["address_service"]
    http_conn_id: Annotated[str, Field(min_length=1)]
    subgroup: str
    canary_subgroup: str
    timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 600
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = 5

    @field_validator("subgroup", "canary_subgroup")
    @classmethod
    def _subgroup_names(cls, name: str) -> str:
        return check_subgroup(name)  # InvalidAddresses is a ValueError: pydantic reports it

    @model_validator(mode="after")
    def _two_subgroups(self) -> "AddressServiceSwitchSpec":
        if self.subgroup == self.canary_subgroup:
            raise ValueError(f"canary_subgroup must differ from subgroup ({self.subgroup!r}):"
                             " a canary would move the whole fleet")
        return self


class ManualSwitchSpec(_Strict):
    """A person moves the fleet: the gate before each switch says what to change (``how`` adds
    the fleet's own words: which config, which deploy), then the switch waits for the brokers to
    show the move, up to ``timeout_seconds``."""

    type: Literal["manual"]
    how: Annotated[str, Field(max_length=2000)] = ""
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = 10


def _switch_type(value: Any) -> str:
    """Which switch spec a fleet's ``switch`` is: its ``type``, "http" when it names none."""
    return value.get("type", "http") if isinstance(value, dict) else getattr(value, "type", "http")


class FleetSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,100}$")]
    role: Literal["producer", "consumer"]
    groups: Annotated[list[str], Field(min_length=1)]
    topics: list[str] = []
    switch: Annotated[Annotated[HttpSwitchSpec, Tag("http")]
                      | Annotated[AddressServiceSwitchSpec, Tag("address_service")]
                      | Annotated[ManualSwitchSpec, Tag("manual")], Discriminator(_switch_type)]
    canary_share: Annotated[float, Field(gt=0, lt=1)] = 0.2

    @field_validator("groups")
    @classmethod
    def _group_names(cls, groups: list[str]) -> list[str]:
        return [_as_value_error(validate_group_name, g) for g in groups]

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, topics: list[str]) -> list[str]:
        return [_as_value_error(validate_topic_name, t) for t in topics]


def _as_value_error(validate: Any, name: str) -> str:
    """Pydantic reports ValueErrors with the field's location; InvalidSpec would escape it."""
    try:
        return validate(name)
    except InvalidSpec as exc:
        raise ValueError(str(exc)) from None


class StabilitySpec(_Strict):
    """How long "drained" and "quiet" must hold before the last consumers move, and how long the
    source stays watched after they did."""

    backlog_checks: Annotated[int, Field(ge=1, le=100)] = 3
    poll_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 15
    writes_quiet_seconds: Annotated[float, Field(ge=0, le=86400)] = 60
    clients_timeout_seconds: Annotated[float, Field(gt=0)] = 900
    drain_timeout_seconds: Annotated[float, Field(gt=0)] = 7200
    watch_seconds: Annotated[float, Field(ge=0, le=30 * 86400)] = 3600


class WebhookSpec(_Strict):
    """An HTTP endpoint (Slack-compatible JSON with a "text" field) reached through an Airflow connection."""

    http_conn_id: Annotated[str, Field(min_length=1)]
    endpoint: str = ""


class NotificationSpec(_Strict):
    """Who hears when a gate opens, a run fails, or replication delay passes its threshold."""

    webhook: WebhookSpec | None = None
    emails: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = []


class _TaskSpec(_Strict):
    name: str
    description: str = ""
    source: ClusterRef
    target: ClusterRef
    scope: ScopeSpec = ScopeSpec()
    approvers: Annotated[list[str], Field(min_length=1)]
    notifications: NotificationSpec = NotificationSpec()

    @field_validator("approvers")
    @classmethod
    def _user_names(cls, approvers: list[str]) -> list[str]:
        bad = [name for name in approvers if not _USER_NAME.match(name)]
        if bad:
            raise ValueError(f"{bad} are not user names: name Airflow users, without spaces or commas")
        return list(dict.fromkeys(approvers))

    @field_validator("name")
    @classmethod
    def _task_name(cls, name: str) -> str:
        if not _TASK_NAME.match(name):
            raise ValueError("use 1 to 200 letters, digits, Chinese characters, - or _")
        return name

    @model_validator(mode="after")
    def _distinct_clusters(self) -> "_TaskSpec":
        if (self.source.conn_id, self.source.cluster) == (self.target.conn_id, self.target.cluster):
            raise ValueError("source and target name the same cluster")
        return self

    @property
    def slug(self) -> str:
        """An ASCII id for DAG ids: the name itself when it is ASCII, else its ASCII part and a hash."""
        ascii_part = re.sub(r"[^A-Za-z0-9_\-]", "", self.name)
        if ascii_part == self.name:
            return self.name
        digest = hashlib.sha1(self.name.encode()).hexdigest()[:8]
        return f"{ascii_part}_{digest}" if ascii_part else digest


class MigrationSpec(_TaskSpec):
    kind: Literal["migration"]
    fleets: Annotated[list[FleetSpec], Field(min_length=1)]
    diff_schedule: str | None = "@hourly"
    stability: StabilitySpec = StabilitySpec()
    allow_delete: bool = False
    #: Consumer groups that read in-scope topics and stay on the source on purpose (the report lists them).
    leave_behind: list[str] = []
    #: Broadcasting groups the on-call decided to move anyway: no backlog figure covers them.
    broadcast_groups: list[str] = []
    #: End the run with a gated step that deletes the migrated topics (and their messages) on the source.
    retire_source: bool = False

    @field_validator("leave_behind", "broadcast_groups")
    @classmethod
    def _decided_group_names(cls, groups: list[str]) -> list[str]:
        return [_as_value_error(validate_group_name, g) for g in groups]

    @model_validator(mode="after")
    def _a_connection_per_side(self) -> "MigrationSpec":
        """A run keeps its broker sets, evidence and fleet moves per connection: two clusters
        behind one connection would be counted as one."""
        if self.source.conn_id == self.target.conn_id:
            raise ValueError(f"source and target both use connection {self.source.conn_id!r}: give each cluster"
                             " a connection of its own (the same name servers, with its cluster_name in the extra)")
        return self

    @model_validator(mode="after")
    def _fleets_consistent(self) -> "MigrationSpec":
        names = [f.name for f in self.fleets]
        if len(set(names)) != len(names):
            raise ValueError(f"fleet names must be unique: {names}")
        for role in ("producer", "consumer"):
            seen: dict[str, str] = {}
            for fleet in (f for f in self.fleets if f.role == role):
                for group in fleet.groups:
                    if group in seen:
                        raise ValueError(f"{role} group {group!r} is in fleets {seen[group]!r} and {fleet.name!r}")
                    seen[group] = fleet.name
        scope = self.scope.to_scope()
        for fleet in self.fleets:
            if fleet.role == "consumer":
                outside = [g for g in fleet.groups if not scope.group(g)]
                if outside:
                    raise ValueError(f"fleet {fleet.name!r} has groups outside the scope: {outside}")
            outside = [t for t in fleet.topics if not scope.topic(t)]
            if outside:
                raise ValueError(f"fleet {fleet.name!r} has topics outside the scope: {outside}")
        return self

    def fleets_of(self, role: str) -> list[FleetSpec]:
        return [f for f in self.fleets if f.role == role]

    def groups_of(self, role: str) -> list[str]:
        return sorted(g for f in self.fleets_of(role) for g in f.groups)

    def topics_of(self, role: str) -> list[str]:
        return sorted({t for f in self.fleets_of(role) for t in f.topics})


class ReplicationSpec(_TaskSpec):
    """A cross-cluster replication task: one-way, or two-way without loops."""

    kind: Literal["replication"]
    direction: Literal["one-way", "two-way"] = "one-way"
    start: Literal["latest", "earliest"] | datetime = "latest"
    rate_limit: Annotated[int, Field(gt=0)] | None = None
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    delay_alert_seconds: Annotated[float, Field(gt=0)] = 60
    monitor_schedule: str | None = "*/5 * * * *"
    metadata_sync_schedule: str | None = "*/10 * * * *"

    @field_validator("start")
    @classmethod
    def _utc_unless_told(cls, start: Any) -> Any:
        return start.replace(tzinfo=timezone.utc) if isinstance(start, datetime) and start.tzinfo is None else start

    @model_validator(mode="after")
    def _distinct_origins(self) -> "ReplicationSpec":
        if self.source.origin_id == self.target.origin_id:
            raise ValueError(f"source and target would both stamp origin {self.source.origin_id!r} on replicated "
                             "messages, so loops could not be told apart: give them different cluster names")
        if self.direction == "two-way" and self.scope.brokers:
            raise ValueError("scope.brokers maps source brokers to target brokers: two-way sync also goes the "
                             "other way, where that map does not apply")
        return self

    @property
    def group(self) -> str:
        """The replicator's consumer group on each source side."""
        return f"rmq_replicator_{self.slug}"


TaskSpec = Annotated[MigrationSpec | ReplicationSpec, Field(discriminator="kind")]
_TASK_SPEC = TypeAdapter(TaskSpec)


def parse_spec(data: Any, source: str = "<spec>") -> MigrationSpec | ReplicationSpec:
    """Validate one spec; the error names the source and every failing field."""
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: a task spec is a mapping, got {type(data).__name__}")
    try:
        return _TASK_SPEC.validate_python(data)
    except ValidationError as exc:
        kind = data.get("kind")
        problems = "; ".join(f"{_field_path(err['loc'], kind) or '(top level)'}: {err['msg']}" for err in exc.errors())
        raise InvalidSpec(f"{source}: {problems}") from None


def _field_path(loc: tuple[Any, ...], kind: Any) -> str:
    """The field as the user wrote it: without the kind tag pydantic puts first for a tagged union."""
    return ".".join(str(p) for p in (loc[1:] if loc and loc[0] == kind else loc))


def specs_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "specs"
    return Path(os.environ.get(SPECS_DIR_ENV, str(default)))


def load_specs(folder: Path | None = None) -> tuple[dict[Path, Any], dict[Path, str]]:
    """Every spec in a folder: the valid ones, and an error text per invalid file.

    A spec held by an active run (``hold_spec``) is read from its held copy while its file is
    gone, broken or edited, so the run finishes on the spec it started with (``held_because``
    says which). Reads files only (no network), so it is safe at DAG parse time.
    """
    folder = folder or specs_dir()
    specs, errors = _load_files(folder)
    held = sorted(held_dir(folder).glob("*.yaml"))
    copied = {path: folder / line[1] for path in held if (line := _held_line(path))}
    for path in held:
        copy: dict[Path, Any] = {}
        _load_one(path, copy, errors)
        file = copied.get(path)
        if path not in copy or (file in specs and specs[file] == copy[path]):
            continue
        if file not in specs and path.stem in {spec.slug for spec in specs.values()}:
            continue  # another file took the name meanwhile: the overlap check below decides
        specs.pop(file, None)  # edited (or broken: its error stays listed) during the run
        specs[path] = copy[path]
    _reject_duplicates_and_overlaps(specs, errors, {*held, *copied.values()})
    return specs, errors


def _load_files(folder: Path) -> tuple[dict[Path, Any], dict[Path, str]]:
    specs: dict[Path, Any] = {}
    errors: dict[Path, str] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        _load_one(path, specs, errors)
    return specs, errors


def _load_one(path: Path, specs: dict[Path, Any], errors: dict[Path, str]) -> None:
    try:
        specs[path] = parse_spec(yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER), path.name)
    except FileNotFoundError:  # removed (or released) while the folder was read
        pass
    except yaml.YAMLError as exc:
        errors[path] = f"{path.name}: not valid YAML: {exc}"
    except InvalidSpec as exc:
        errors[path] = str(exc)


#: Where the specs of active runs are held by default, inside the specs folder.
HELD_DIR = ".held"
#: A writable folder for the held copies, for a specs folder mounted read-only (synced from git).
HELD_DIR_ENV = "RMQ_HELD_SPECS_DIR"
_HELD_BY = "# held by run: "


def held_dir(folder: Path | None = None) -> Path:
    """Where active runs hold copies of their specs: ``$RMQ_HELD_SPECS_DIR``, else ``.held`` in the
    specs folder. The DAG processor reads it and the workers write it, so all of them must see it."""
    configured = os.environ.get(HELD_DIR_ENV)
    return Path(configured) if configured else (folder or specs_dir()) / HELD_DIR


def is_held(path: Path) -> bool:
    """Whether a path ``load_specs`` returned is a held copy (see ``held_because``)."""
    return path.parent.name == HELD_DIR or path.parent == held_dir()


def held_because(path: Path, folder: Path | None = None) -> str | None:
    """Why ``load_specs`` returned a held copy: "removed" (its spec file is gone) or "edited"
    (the file changed, or broke, during the run); None for a spec file."""
    if not is_held(path):
        return None
    line = _held_line(path)
    return "edited" if line and ((folder or specs_dir()) / line[1]).exists() else "removed"


def hold_spec(spec: Any, run_id: str, folder: Path | None = None) -> Path:
    """Keep a copy of the spec's file while a run of it is active.

    Removing a spec file takes its DAG away at the next parse, under the running run, whose tasks
    then fail on "Dag not found". The copy keeps the DAG until ``release_spec`` at the run's end.
    The spec's own file must exist: a run may start only from a spec that is there."""
    folder = folder or specs_dir()
    held = held_dir(folder) / f"{spec.slug}.yaml"
    source = spec_file(spec, folder)
    if source is None and _holder(held) == run_id:  # this run's step again, after the file went
        return held
    if source is None:
        raise InvalidSpec(f"{spec.name}: its spec file was removed from {folder}; a held copy only"
                          " finishes the run that was active, it starts none")
    partial = held.with_suffix(".partial")
    try:
        held.parent.mkdir(exist_ok=True)
        partial.write_text(f"{_HELD_BY}{run_id} (a copy of {source.name})\n" + source.read_text(encoding="utf-8"),
                           encoding="utf-8")
        partial.replace(held)  # never half a spec: a parse in between would reject it
    except OSError as exc:
        raise InvalidSpec(f"{spec.name}: cannot hold a copy of the spec for this run in {held.parent} ({exc});"
                          f" set {HELD_DIR_ENV} to a folder that every Airflow component can write and read")
    return held


def release_spec(spec: Any, run_id: str, folder: Path | None = None) -> bool:
    """Drop the held copy when this run holds it; whether it did."""
    held = held_dir(folder) / f"{spec.slug}.yaml"
    if _holder(held) != run_id:
        return False
    held.unlink(missing_ok=True)
    return True


def _held_line(held: Path) -> tuple[str, str] | None:
    """The run a held copy names and the file it copied, None when there is no copy."""
    try:
        first = held.read_text(encoding="utf-8").split("\n", 1)[0]
    except FileNotFoundError:
        return None
    if not first.startswith(_HELD_BY):
        return None
    run_id, _, rest = first[len(_HELD_BY):].partition(" (a copy of ")
    return run_id, rest.removesuffix(")")


def _holder(held: Path) -> str | None:
    """The run a held copy names, None when there is none."""
    line = _held_line(held)
    return line[0] if line else None


def spec_file(spec: Any, folder: Path | None = None) -> Path | None:
    """The file in the specs folder that holds the spec now (by name), if any."""
    specs, _ = _load_files(folder or specs_dir())
    return next((path for path, other in specs.items() if other.name == spec.name), None)


def _reject_duplicates_and_overlaps(specs: dict[Path, Any], errors: dict[Path, str], running: set[Path]) -> None:
    """Refuse specs that clash, except one whose run is under way (its file or held copy in
    ``running``): the spec that came since is the one refused, and the run keeps its DAG."""
    # Every pair is compared (200 specs are 19,900 pairs at each DAG parse): what a spec covers is
    # read off it once, into plain values, rather than through its models at every pair.
    items = [(path, spec, spec.slug, _sources(spec)) for path, spec in specs.items()]
    clashes: dict[Path, list[str]] = {}
    for i, (path_a, a, slug_a, sources_a) in enumerate(items):
        for path_b, b, slug_b, sources_b in items[i + 1:]:
            reason = None
            if slug_a == slug_b:
                reason = f"same task name as {path_b.name}" if a.name == b.name else f"same DAG id as {path_b.name}"
            elif a.kind == b.kind and not sources_a.isdisjoint(sources_b):
                reason = _scope_overlap(a, b)
            if reason:
                clashes.setdefault(path_a, []).append(f"{reason} (with {_label(path_b, running)})")
                clashes.setdefault(path_b, []).append(f"{reason} (with {_label(path_a, running)})")
    for path, reasons in clashes.items():
        if path in running:
            continue
        errors[path] = f"{path.name}: scope: " + "; ".join(reasons)
        del specs[path]


def _label(path: Path, running: set[Path]) -> str:
    if is_held(path):
        return f"{path.name}, removed but held by its active run"
    return f"{path.name}, held by its active run" if path in running else path.name


def _sources(spec: Any) -> frozenset[tuple[str, str | None]]:
    """Clusters a task reads from: the source, and for two-way replication the target too."""
    sides = (spec.source, spec.target) if getattr(spec, "direction", "") == "two-way" else (spec.source,)
    return frozenset((side.conn_id, side.cluster) for side in sides)


def _scope_overlap(a: Any, b: Any) -> str | None:
    for kind in ("topics", "groups"):
        pa, pb = getattr(a.scope, kind), getattr(b.scope, kind)
        for x in pa.include:
            for y in pb.include:
                if _patterns_may_overlap(x, y) and not (_excluded(x, pb) or _excluded(y, pa)):
                    return f"{kind} pattern {x!r} overlaps {y!r} on the same source cluster"
    return None


def _excluded(pattern: str, other: Patterns) -> bool:
    """A literal name the other spec explicitly excludes cannot clash."""
    return _literal_prefix(pattern) is None and any(fnmatch.fnmatchcase(pattern, e) for e in other.exclude)


def _patterns_may_overlap(x: str, y: str) -> bool:
    px, py = _literal_prefix(x), _literal_prefix(y)
    if px is None:
        return fnmatch.fnmatchcase(x, y)
    if py is None:
        return fnmatch.fnmatchcase(y, x)
    return px.startswith(py) or py.startswith(px)


@functools.lru_cache(maxsize=None)
def _literal_prefix(pattern: str) -> str | None:
    """What a pattern's names all start with; None for a literal name (no wildcard). Cached per
    pattern, not per pair: a pattern meets every other spec's patterns."""
    parts = _WILDCARDS.split(pattern, 1)
    return parts[0] if len(parts) > 1 else None
