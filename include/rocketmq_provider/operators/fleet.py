"""FleetSwitchOperator: move a fleet of producers or consumers to another cluster, guarded.

Before acting it reads its gate's recorded answer and re-checks its preconditions against the
live clusters (so clearing tasks, marking a gate or a sensor successful by hand, or running tasks
out of order cannot skip them); it acts through a pluggable switcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.fleet_moves import Whereabouts, manual_instructions, move_event, wait_for_move, whereabouts
from rocketmq_core.migration import Condition
from rocketmq_provider.hooks.rocketmq import RocketMQHook, verify_conditions
from rocketmq_provider.operators.approval import Approval, override_reason
from rocketmq_provider.templating import record_brokers_seen, truthy
from rocketmq_provider.triggers.rocketmq import FleetMoveTrigger

T = TypeVar("T")


class PreconditionRefused(AirflowException):
    """A guarded switch did not act because its stage's invariant did not hold: not a crash.
    ``observations`` are what each failed condition saw (also in the task's XCom ``refused``)."""

    def __init__(self, message: str, observations: list[dict[str, Any]]):
        super().__init__(message)
        self.observations = observations


def failed_conditions(conditions: list[dict[str, Any]], connections: dict[str, str],
                      broker_sets: dict[str, list[str]] | None, log: Any, ti: Any) -> list[dict[str, Any]]:
    """Evaluate serialised conditions now, logging each (named with its connection) and recording
    the brokers they saw for the run's later steps; the observations of those that failed."""
    failed = []
    seen = verify_conditions(conditions, connections, broker_sets)
    record_brokers_seen(ti, seen)
    for observation in seen:
        observation["condition"] += f" ({observation.pop('conn_id')})"
        log.info("condition %s: %s", observation["condition"], observation["summary"])
        if not observation["satisfied"]:
            failed.append(observation)
    return failed


def refuse(ti: Any, what: str, failed: list[dict[str, Any]]) -> None:
    """Fail a guarded step that did not act, its failed figures in XCom ``refused`` (the report's)."""
    ti.xcom_push(key="refused", value=failed)
    raise PreconditionRefused(f"{what}: " + "; ".join(f"{f['condition']}: {f['summary']}" for f in failed), failed)


class Switcher:
    """How a fleet is told to use another cluster (a config center, a deploy API, ...)."""

    template_fields: tuple[str, ...] = ()

    def switch(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        raise NotImplementedError


class HttpSwitcher(Switcher):
    """Calls an HTTP API through an Airflow HTTP connection; method, endpoint and body are templated.

    The request dict (fleet, role, groups, share, cluster, connection id) is available in templates
    as ``{{ task.switch_request }}``, and the destination's name servers as ``{{ task.target_namesrv }}``.
    The body goes as JSON, or as form fields (``content_type="form"``, as Nacos's config API takes
    them). A non-2xx answer fails the task and shows the answer.
    """

    template_fields = ("method", "endpoint", "body")

    def __init__(self, http_conn_id: str, endpoint: str, method: str = "POST", body: Any = None,
                 content_type: str = "json"):
        if content_type not in ("json", "form"):
            raise ValueError(f"content_type must be json or form, not {content_type!r}")
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint
        self.method = method
        self.body = body
        self.content_type = content_type

    def switch(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method=self.method.upper(), http_conn_id=self.http_conn_id)
        body = self.body if self.body is not None else request
        payload = {"data": body} if self.content_type == "form" else {"json": body}
        response = hook.run(self.endpoint, **payload, extra_options={"check_response": False})
        text = response.text[:2000]
        if not response.ok:
            raise AirflowException(
                f"switch request {self.method.upper()} {self.endpoint} answered {response.status_code}: {text}")
        log.info("switch request %s %s answered %s", self.method.upper(), self.endpoint, response.status_code)
        return {"status_code": response.status_code, "response": text}


class EvidenceSwitcher(Switcher):
    """A switcher whose change the clients act on later: it is done when the brokers show the
    fleet moved (``rocketmq_core.fleet_moves``), and fails naming the clients that did not.

    In a FleetSwitchOperator the change is made in the task and the wait deferred to the
    triggerer (``FleetMoveTrigger``): a move by hand can take an hour, and holds no worker slot.
    ``switch`` does both in one process, for use outside a deferring task.
    """

    def __init__(self, timeout_seconds: float = 600, poll_seconds: float = 5):
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds

    def begin(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        """Make the change (or ask for it); what was done, for the switch's record."""
        raise NotImplementedError

    def undo(self, request: dict[str, Any], log: Any) -> str:
        """Put a canary that stripped a consumer group back, as far as this switcher can; says what it did."""
        raise NotImplementedError

    @staticmethod
    def whereabouts(request: dict[str, Any]) -> Whereabouts:
        return _on_both(request, lambda old, new: whereabouts(old, new, request["role"], list(request["groups"])))

    def trigger(self, request: dict[str, Any], before: Whereabouts, started: dict[str, Any]) -> FleetMoveTrigger:
        return FleetMoveTrigger(request["from_cluster"], request["cluster"], request["role"], before.to_dict(),
                                float(request["share"]) < 1, time.time() + self.timeout_seconds, self.poll_seconds,
                                started)

    def conclude(self, request: dict[str, Any], event: dict[str, Any], log: Any) -> dict[str, Any]:
        """The switch's result once the wait ended; a canary that stripped a consumer group is
        undone and fails naming it, a move not seen by the timeout fails naming who did not move."""
        if event["status"] == "stripped":
            raise AirflowException(
                f"the canary left consumer group(s) {event['stripped']} with no consumer on {request['from_cluster']}"
                f" while producers may still write there; {self.undo(request, log)}")
        if event["status"] != "done":
            raise AirflowException(f"after {self.timeout_seconds:.0f}s the brokers show the {request['role']}s of"
                                   f" {list(request['groups'])} not moved: " + "; ".join(event["waiting"]))
        log.info("the brokers show the move: %s", event["now"])
        return {**event["started"], "before": event["before"], "after": event["now"]}

    def switch(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        before = self.whereabouts(request)
        started = self.begin(request, log)
        canary, deadline = float(request["share"]) < 1, time.time() + self.timeout_seconds
        event = _on_both(request, lambda old, new: _waited(old, new, request["role"], before, canary, deadline,
                                                            self.poll_seconds))
        return self.conclude(request, {**event, "before": before.to_dict(), "started": started}, log)


async def _waited(old: ClusterAdmin, new: ClusterAdmin, role: str, before: Whereabouts, canary: bool,
                  deadline: float, poll_seconds: float) -> dict[str, Any]:
    return move_event(*await wait_for_move(old, new, role, before, canary, deadline, poll_seconds))


def _on_both(request: dict[str, Any], job: Callable[[ClusterAdmin, ClusterAdmin], Awaitable[T]]) -> T:
    """Run ``job`` with an admin client of the cluster the fleet leaves and of the one it joins."""
    leaving = RocketMQHook(request["from_cluster"]).get_endpoint()
    joining = RocketMQHook(request["cluster"]).get_endpoint()

    async def run() -> T:
        async with leaving.admin() as old, joining.admin() as new:
            return await job(old, new)
    return asyncio.run(run())


class AddressServiceSwitcher(EvidenceSwitcher):
    """Moves a fleet by changing what its address-service subgroups answer, then waits until the
    brokers show the move: the switch is done when its clients are where it sent them, not when
    the service said yes.

    A canary (share below 1) moves ``canary_subgroup``; a full move or a rollback moves both
    subgroups. A canary that leaves a consumer group with no consumer on the old cluster is
    undone at once (its subgroup answers the old cluster again) and the task fails naming it.
    ``http_conn_id`` is an HTTP connection to the service; its password, if set, is sent as the
    bearer token.
    """

    def __init__(self, http_conn_id: str, subgroup: str, canary_subgroup: str,
                 timeout_seconds: float = 600, poll_seconds: float = 5):
        super().__init__(timeout_seconds, poll_seconds)
        self.http_conn_id = http_conn_id
        self.subgroup = subgroup
        self.canary_subgroup = canary_subgroup

    def _subgroups(self, request: dict[str, Any]) -> list[str]:
        return [self.canary_subgroup] if float(request["share"]) < 1 else [self.canary_subgroup, self.subgroup]

    def begin(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        namesrv = RocketMQHook(request["cluster"]).namesrv()
        return {"subgroups": [self._set(subgroup, namesrv, log) for subgroup in self._subgroups(request)]}

    def undo(self, request: dict[str, Any], log: Any) -> str:
        subgroups = self._subgroups(request)
        for subgroup in subgroups:
            self._set(subgroup, RocketMQHook(request["from_cluster"]).namesrv(), log)
        return f"subgroup(s) {subgroups} answer {request['from_cluster']} again. Put fewer members on the canary subgroup"

    def _set(self, subgroup: str, namesrv: str, log: Any) -> dict[str, Any]:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="PUT", http_conn_id=self.http_conn_id)
        token = hook.get_connection(self.http_conn_id).password
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = hook.run(f"/subgroups/{subgroup}", json={"namesrv": namesrv}, headers=headers,
                            extra_options={"check_response": False})
        if not response.ok:
            raise AirflowException(f"the address service refused subgroup {subgroup} -> {namesrv}:"
                                   f" {response.status_code} {response.text[:500]}")
        log.info("subgroup %s now answers %s", subgroup, namesrv)
        return response.json()


class ManualSwitcher(EvidenceSwitcher):
    """A person moves the fleet (edits a config, redeploys); the gate before this switch and its
    log say exactly what to change, and the switch waits for the brokers to show it done.
    Nothing is called, so nothing can be undone for them: a canary that strips a consumer group
    fails, asking for a consumer back on the old cluster."""

    def __init__(self, how: str = "", timeout_seconds: float = 3600, poll_seconds: float = 10):
        super().__init__(timeout_seconds, poll_seconds)
        self.how = how

    def begin(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        text = manual_instructions(request["fleet"], request["role"], list(request["groups"]),
                                   float(request["share"]), RocketMQHook(request["cluster"]).namesrv(), self.how)
        log.warning("BY HAND: %s Waiting up to %.0fs for the brokers to show it.", text, self.timeout_seconds)
        return {"instructions": text}

    def undo(self, request: dict[str, Any], log: Any) -> str:
        return f"put at least one consumer of each back on {request['from_cluster']} now"


class FleetSwitchOperator(BaseOperator):
    """Switch the ``role`` clients of ``groups`` (all, or a canary ``share``) to ``to_cluster``
    (from ``from_cluster``: the connection ids of the two clusters).

    With ``approval``, nothing happens unless the gate before it recorded that answer in this
    run, by an assigned approver. ``preconditions`` are then evaluated against the live clusters;
    if any does not hold, nothing is switched and the task fails naming what it saw. The only
    way past a failing precondition is an override reason the approver typed into that gate's
    form (or, for a switch without a gate, ``override_reason``); it unlocks this switch only and
    is pushed to XCom with who, when and the failed figures. Preconditions come from the core
    (``MigrationRun.conditions``); ``connections`` maps each of their sides to a connection id,
    and their kwargs may be templates (rendered natively). ``broker_sets`` (templated) maps a
    connection id to the run's broker set on that cluster: a precondition that does not see all
    of them fails as unknown.
    """

    template_fields = ("switcher", "override_reason", "share", "dry_run", "broker_sets", "preconditions")

    def __init__(self, *, fleet: str, role: str, groups: list[str], to_cluster: str, switcher: Switcher,
                 from_cluster: str | None = None, share: float | str = 1.0, preconditions: list[Condition] | None = None,
                 connections: dict[str, str] | None = None, approval: Approval | None = None,
                 override_reason: str = "", dry_run: bool | str = False,
                 broker_sets: dict[str, list[str]] | str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if role not in ("consumer", "producer"):
            raise ValueError(f"role must be consumer or producer, not {role!r}")
        if approval is not None and override_reason:
            raise ValueError("a switch behind a gate takes its override from the gate's answer only")
        self.fleet = fleet
        self.role = role
        self.groups = groups
        self.to_cluster = to_cluster
        self.from_cluster = from_cluster
        if isinstance(switcher, EvidenceSwitcher) and not from_cluster:
            raise ValueError(f"a {type(switcher).__name__} needs from_cluster: it waits for the clients to leave it")
        self.switcher = switcher
        self.share = share
        self.connections = dict(connections or {})
        unmapped = sorted({c.side for c in preconditions or []} - set(self.connections))
        if unmapped:
            raise ValueError(f"preconditions on {unmapped} need a connection id in connections")
        self.preconditions = [c.to_dict() for c in preconditions or []]
        self.approval = approval
        self.override_reason = override_reason
        self.dry_run = dry_run
        self.broker_sets = broker_sets

    @property
    def switch_request(self) -> dict[str, Any]:
        request = {"fleet": self.fleet, "role": self.role, "groups": list(self.groups),
                   "share": float(self.share), "cluster": self.to_cluster}
        return {**request, "from_cluster": self.from_cluster} if self.from_cluster else request

    @property
    def target_namesrv(self) -> str:
        """The destination's name servers, ``host:port;host:port``, for a switch body to hand to clients."""
        return RocketMQHook(self.to_cluster).namesrv()

    def check_preconditions(self, ti: Any) -> list[dict[str, Any]]:
        """Evaluate every precondition now; return the observations of those that failed."""
        return failed_conditions(self.preconditions, self.connections, self.broker_sets, self.log, ti)

    def kept_where_it_stands(self, share: float, ti: Any) -> dict[str, Any] | None:
        """A canary never moves a fleet back: when the brokers show every group already at least
        ``share`` on the destination (an earlier run moved it further and failed), nothing is
        switched and the record says so; None when the canary should move."""
        where = EvidenceSwitcher.whereabouts(self.switch_request)
        if not where.beyond(share):
            return None
        moved = where.moved_share()
        self.log.warning("not switching: the brokers show %s of fleet %r already on %s (%s); a %.0f%% canary"
                         " would move some back", self.role + "s", self.fleet, self.to_cluster,
                         ", ".join(f"{g} {m:.0%}" for g, m in moved.items() if m is not None), share * 100)
        # Nothing moves, so nothing is refused; what the stage's invariant says now is on record.
        unmet = self.check_preconditions(ti)
        return {**self.switch_request, "kept": True, "moved": moved, "whereabouts": where.to_dict(),
                "unmet_now": unmet, "at": datetime.now(timezone.utc).isoformat()}

    def execute(self, context: Any) -> Any:
        share = float(self.share)
        if not 0 < share <= 1:
            raise AirflowException(f"share must be in (0, 1], got {self.share!r}")
        answer = self.approval.answer(context["ti"]) if self.approval else None
        if share < 1 and self.from_cluster:
            kept = self.kept_where_it_stands(share, context.get("ti"))
            if kept:
                context["ti"].xcom_push(key="switch", value=kept)
                return kept
        reason = override_reason(answer) if answer else str(self.override_reason).strip()
        failed = self.check_preconditions(context.get("ti"))
        if failed:
            reasons = "; ".join(f"{f['condition']}: {f['summary']}" for f in failed)
            if not reason:
                refuse(context["ti"], f"not switching {self.role}s of fleet {self.fleet!r}", failed)
            self.log.warning("OVERRIDE (%s) of failed preconditions: %s", reason, reasons)
            granted = ({"gate": answer["gate"], "by": answer["responded_by"], "at": answer["responded_at"]}
                       if answer else {})
            context["ti"].xcom_push(key="override", value={"reason": reason, "failed": failed, **granted})
        if truthy(self.dry_run):
            self.log.info("dry run: would switch %s", self.switch_request)
            return {"dry_run": True, **self.switch_request}
        request = self.switch_request
        if isinstance(self.switcher, EvidenceSwitcher):
            before = self.switcher.whereabouts(request)
            self.log.info("before the switch: %s", before.to_dict())
            started = self.switcher.begin(request, self.log)
            self.defer(trigger=self.switcher.trigger(request, before, started), method_name="move_complete",
                       timeout=timedelta(seconds=self.switcher.timeout_seconds + 300))
        return self._recorded(context, self.switcher.switch(request, self.log))

    def move_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Back from the triggerer: the brokers' verdict on the move."""
        return self._recorded(context, self.switcher.conclude(  # type: ignore[attr-defined]
            self.switch_request, event, self.log))

    def _recorded(self, context: Any, result: dict[str, Any]) -> dict[str, Any]:
        at = datetime.now(timezone.utc).isoformat()
        context["ti"].xcom_push(key="switch", value={**self.switch_request, **result, "at": at})
        return result
