"""FleetSwitchOperator: move a fleet of producers or consumers to another cluster, guarded.

Before acting it reads its gate's recorded answer and re-checks its preconditions against the
live clusters (so clearing tasks, marking a gate or a sensor successful by hand, or running tasks
out of order cannot skip them); it acts through a pluggable switcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from rocketmq_core.fleet_moves import Whereabouts, clients_by_group, judge_move, manual_instructions
from rocketmq_core.migration import Condition
from rocketmq_provider.hooks.rocketmq import RocketMQHook, verify_conditions
from rocketmq_provider.operators.approval import Approval, override_reason
from rocketmq_provider.templating import truthy


class PreconditionRefused(AirflowException):
    """A guarded switch did not act because its stage's invariant did not hold: not a crash.
    ``observations`` are what each failed condition saw (also in the task's XCom ``refused``)."""

    def __init__(self, message: str, observations: list[dict[str, Any]]):
        super().__init__(message)
        self.observations = observations


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
    fleet moved (``rocketmq_core.fleet_moves``), and fails naming the clients that did not."""

    def __init__(self, timeout_seconds: float = 600, poll_seconds: float = 5):
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds

    @staticmethod
    def whereabouts(request: dict[str, Any]) -> Whereabouts:
        role, groups = request["role"], list(request["groups"])
        return Whereabouts(*(RocketMQHook(c).run(lambda a: clients_by_group(a, role, groups))
                             for c in (request["from_cluster"], request["cluster"])))

    def await_move(self, request: dict[str, Any], before: Whereabouts, log: Any,
                   undo: Callable[[], str]) -> dict[str, Any]:
        """Poll until the move shows; a canary that strips a consumer group calls ``undo`` (which
        says what it did) and fails naming the group."""
        role, canary, leaving = request["role"], float(request["share"]) < 1, request["from_cluster"]
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            now = self.whereabouts(request)
            verdict = judge_move(before, now, role, canary)
            if verdict.stripped:
                raise AirflowException(
                    f"the canary left consumer group(s) {list(verdict.stripped)} with no consumer on {leaving}"
                    f" while producers may still write there; {undo()}")
            if verdict.done:
                log.info("the brokers show the move: %s", now.to_dict())
                return {"before": before.to_dict(), "after": now.to_dict()}
            if time.monotonic() > deadline:
                raise AirflowException(f"after {self.timeout_seconds:.0f}s the brokers show the {role}s of"
                                       f" {list(request['groups'])} not moved: " + "; ".join(verdict.waiting))
            log.info("waiting for the brokers: %s", "; ".join(verdict.waiting))
            time.sleep(self.poll_seconds)


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

    def switch(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        canary = float(request["share"]) < 1
        subgroups = [self.canary_subgroup] if canary else [self.canary_subgroup, self.subgroup]
        before = self.whereabouts(request)
        log.info("before the switch: %s", before.to_dict())
        answers = [self._set(subgroup, RocketMQHook(request["cluster"]).namesrv(), log) for subgroup in subgroups]

        def undo() -> str:
            for subgroup in subgroups:
                self._set(subgroup, RocketMQHook(request["from_cluster"]).namesrv(), log)
            return (f"subgroup(s) {subgroups} answer {request['from_cluster']} again."
                    " Put fewer members on the canary subgroup")
        return {"subgroups": answers, **self.await_move(request, before, log, undo)}

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

    def switch(self, request: dict[str, Any], log: Any) -> dict[str, Any]:
        before = self.whereabouts(request)
        text = manual_instructions(request["fleet"], request["role"], list(request["groups"]),
                                   float(request["share"]), RocketMQHook(request["cluster"]).namesrv(), self.how)
        log.warning("BY HAND: %s Waiting up to %.0fs for the brokers to show it.", text, self.timeout_seconds)

        def undo() -> str:
            return f"put at least one consumer of each back on {request['from_cluster']} now"
        return {"instructions": text, **self.await_move(request, before, log, undo)}


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

    def check_preconditions(self) -> list[dict[str, Any]]:
        """Evaluate every precondition now; return the observations of those that failed."""
        failed = []
        for observation in verify_conditions(self.preconditions, self.connections, self.broker_sets):
            observation["condition"] += f" ({observation.pop('conn_id')})"
            self.log.info("precondition %s: %s", observation["condition"], observation["summary"])
            if not observation["satisfied"]:
                failed.append(observation)
        return failed

    def kept_where_it_stands(self, share: float) -> dict[str, Any] | None:
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
        return {**self.switch_request, "kept": True, "moved": moved, "whereabouts": where.to_dict(),
                "at": datetime.now(timezone.utc).isoformat()}

    def execute(self, context: Any) -> Any:
        share = float(self.share)
        if not 0 < share <= 1:
            raise AirflowException(f"share must be in (0, 1], got {self.share!r}")
        answer = self.approval.answer(context["ti"]) if self.approval else None
        if share < 1 and self.from_cluster:
            kept = self.kept_where_it_stands(share)
            if kept:
                context["ti"].xcom_push(key="switch", value=kept)
                return kept
        reason = override_reason(answer) if answer else str(self.override_reason).strip()
        failed = self.check_preconditions()
        if failed:
            reasons = "; ".join(f"{f['condition']}: {f['summary']}" for f in failed)
            if not reason:
                context["ti"].xcom_push(key="refused", value=failed)
                raise PreconditionRefused(f"not switching {self.role}s of fleet {self.fleet!r}: {reasons}", failed)
            self.log.warning("OVERRIDE (%s) of failed preconditions: %s", reason, reasons)
            granted = ({"gate": answer["gate"], "by": answer["responded_by"], "at": answer["responded_at"]}
                       if answer else {})
            context["ti"].xcom_push(key="override", value={"reason": reason, "failed": failed, **granted})
        if truthy(self.dry_run):
            self.log.info("dry run: would switch %s", self.switch_request)
            return {"dry_run": True, **self.switch_request}
        result = self.switcher.switch(self.switch_request, self.log)
        at = datetime.now(timezone.utc).isoformat()
        context["ti"].xcom_push(key="switch", value={**self.switch_request, **result, "at": at})
        return result
