"""Approval gates: Airflow's own HITL operators, with a body that shows live evidence.

The evidence (backlog, clients per cluster, a metadata plan, what a sensor saw) is measured
when the gate opens, not when the DAG was parsed, so the on-call engineer decides on the state
of the clusters at that moment. Evidence holds names and numbers only, never credentials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from rocketmq_core.census import take_census
from rocketmq_core.checks import ClientsOnline
from rocketmq_core.errors import RocketMQError
from rocketmq_core.fleet_moves import manual_instructions
from rocketmq_core.migration import Condition
from rocketmq_core.taskspec import ROLE_PREFIX
from rocketmq_provider.hooks.rocketmq import RocketMQHook, verify_conditions

APPROVE = "Approve"
ROLL_BACK = "Roll back"
#: The gate form's field that lets the one switch after the gate past a failed live precondition.
OVERRIDE_FIELD = "override_reason"
#: Shorter than this is no reason ("no", "false", "ok" are not taken as one).
MIN_OVERRIDE_REASON = 12


@dataclass(frozen=True)
class Approval:
    """What a guarded step needs before it acts: ``option`` answered at one of ``gates`` in this
    run, by one of ``approvers`` (user ids; anyone the gate admitted when empty).

    It is read from the answer the gate recorded, never from task states: a gate marked
    successful by hand records no answer, so it unlocks nothing.
    """

    gates: tuple[str, ...]
    option: str = APPROVE
    approvers: tuple[str, ...] = ()

    def answer(self, ti: Any) -> dict[str, Any]:
        """The recorded answer that grants the step; raises naming what each gate recorded."""
        seen = {}
        for gate in self.gates:
            answer = ti.xcom_pull(task_ids=gate, key="answer")
            seen[gate] = answer
            if answer and answer.get("chosen_options") == [self.option] and _by_approver(self.approvers, answer):
                return {**answer, "gate": gate}
        found = "; ".join(f"{gate}: " + (f"{a.get('chosen_options')} by {a.get('responded_by_id')!r}" if a
                                         else "no recorded answer (marked successful by hand, or never answered)")
                          for gate, a in seen.items())
        who = f" by one of {list(self.approvers)}" if self.approvers else ""
        raise AirflowException(f"not approved: this step needs {self.option!r}{who} at {' or '.join(self.gates)}"
                               f" in this run; recorded: {found}")


def assignees(approvers: list[str]) -> list[dict[str, str]]:
    """A spec's approvers as a gate's ``assigned_users``: Airflow refuses anyone else's answer.

    The id is the user name, which is the user id under SimpleAuthManager (the demo's)."""
    return [{"id": name, "name": name} for name in approvers]


def _by_approver(approvers: tuple[str, ...], answer: dict[str, Any]) -> bool:
    """The answering user is named (by id, or by name: FAB's ids are numbers), or a role is named
    (the auth manager checked the role when it took the answer)."""
    return (not approvers or answer.get("responded_by_id") in approvers or answer.get("responded_by") in approvers
            or any(a.startswith(ROLE_PREFIX) for a in approvers))


def override_reason(answer: dict[str, Any]) -> str:
    """The override typed into the gate's form, or "" (too short to be a reason is refused)."""
    reason = str((answer.get("params_input") or {}).get(OVERRIDE_FIELD) or "").strip()
    if reason and len(reason) < MIN_OVERRIDE_REASON:
        raise AirflowException(f"override reason {reason!r} at {answer['gate']} is not a reason: write at least"
                               f" {MIN_OVERRIDE_REASON} characters (what you checked, a ticket)")
    return reason


def override_param() -> dict[str, Param]:
    """The gate form's override field: empty unless the approver means to pass a failed check."""
    return {OVERRIDE_FIELD: Param(
        "", type="string", title="Override reason (leave empty)",
        description=f"Only if the live precondition of the switch after this gate fails: the reason to switch"
                    f" anyway (at least {MIN_OVERRIDE_REASON} characters). It unlocks that one switch; the"
                    " report records who, when, the failed condition and its figures.")}


class Evidence:
    """One section of a gate's body, measured when the gate opens; may declare template_fields."""

    title: str
    template_fields: tuple[str, ...] = ()

    def render(self, context: Any) -> str:
        raise NotImplementedError


class BacklogEvidence(Evidence):
    """The groups' undelivered messages on one cluster, by group."""

    template_fields = ("groups",)

    def __init__(self, rocketmq_conn_id: str, groups: list[str], cluster: str | None = None):
        self.rocketmq_conn_id = rocketmq_conn_id
        self.groups = groups
        self.cluster = cluster
        self.title = f"Backlog on `{rocketmq_conn_id}`"

    def render(self, context: Any) -> str:
        from rocketmq_core.backlog import attribute_system_rows, measure_backlog

        async def measure(admin):
            return await attribute_system_rows(admin, await measure_backlog(admin, list(self.groups), self.cluster))

        report = RocketMQHook(self.rocketmq_conn_id).run(measure)
        rows = [f"| {group} | {count} |" for group, count in sorted(report.by_group.items())]
        return "\n".join([f"**Total undelivered: {report.total}**", "", "| group | undelivered |", "|---|---:|", *rows])


class ClientsEvidence(Evidence):
    """Online clients per group on each cluster, side by side; ``clusters`` are (connection id,
    the spec's cluster name or None) pairs, so a count covers that cluster's brokers only."""

    template_fields = ("groups",)

    def __init__(self, clusters: list[tuple[str, str | None]], groups: list[str], role: str = "consumer"):
        self.clusters = clusters
        self.groups = groups
        self.role = role
        self.title = f"Online {role}s per cluster"

    def render(self, context: Any) -> str:
        columns = [conn_id for conn_id, _ in self.clusters]
        counts: dict[str, dict[str, int]] = {}
        for conn_id, cluster in self.clusters:
            # one check per cluster: a check tracks the brokers it has seen
            check = ClientsOnline(list(self.groups), self.role, min_clients=0, cluster=cluster)
            counts[conn_id] = RocketMQHook(conn_id).run(check.evaluate).figures["clients"]
        header = "| group | " + " | ".join(f"`{c}`" for c in columns) + " |"
        rule = "|---|" + "---:|" * len(columns)
        rows = [f"| {g} | " + " | ".join(str(counts[c][g]) for c in columns) + " |"
                for g in sorted(self.groups)]
        return "\n".join([header, rule, *rows])


class InvariantEvidence(Evidence):
    """The conditions the switch after the gate will check, evaluated now: the approver sees
    which hold and which would refuse (a group too small for a canary, a pending half)."""

    template_fields = ("conditions", "broker_sets")

    def __init__(self, conditions: list[Condition], connections: dict[str, str],
                 broker_sets: dict[str, list[str]] | str | None = None):
        unique = []
        for condition in (c.to_dict() for c in conditions):
            if condition not in unique:
                unique.append(condition)
        self.conditions = unique
        self.connections = connections
        self.broker_sets = broker_sets
        self.title = "What the next switch checks, as it stands now"

    def render(self, context: Any) -> str:
        rows = [f"| {'holds' if seen['satisfied'] else '**refuses**'} | {seen['condition']} (`{seen['conn_id']}`)"
                f" | {seen['summary']} |"
                for seen in verify_conditions(self.conditions, self.connections, self.broker_sets)]
        return "\n".join(["| now | condition | seen |", "|---|---|---|", *rows])


class WritersEvidence(Evidence):
    """Producer groups online on a cluster now that are in no fleet and not left behind on purpose:
    nothing moves them, so after the cutover nobody would read what they write; the fence is what
    refuses them. A broker cannot say which topics a producer writes, so every group is listed."""

    template_fields = ("brokers",)

    def __init__(self, rocketmq_conn_id: str, fleet_groups: list[str], left_behind: list[str] | None = None,
                 cluster: str | None = None, brokers: list[str] | str | None = None):
        self.rocketmq_conn_id = rocketmq_conn_id
        self.fleet_groups = fleet_groups
        self.left_behind = left_behind or []
        self.cluster = cluster
        self.brokers = brokers
        self.title = f"Producers on `{rocketmq_conn_id}` in no fleet"

    def render(self, context: Any) -> str:
        census = RocketMQHook(self.rocketmq_conn_id).run(
            lambda admin: take_census(admin, [], self.cluster, list(self.brokers or [])))
        if census.writers is None:
            return ("**Unknown**: these brokers cannot list their producers (GET_ALL_PRODUCER_INFO is newer);"
                    " the fence is what stops a producer outside the fleets.")
        outside = census.writers_outside(self.fleet_groups, self.left_behind)
        if not outside:
            return "None: every producer group online here is in a fleet or left behind on purpose."
        rows = [f"| {group} | {len(clients)} | {', '.join(clients[:3])}{' ...' if len(clients) > 3 else ''} |"
                for group, clients in outside.items()]
        return "\n".join([f"**{len(outside)} producer group(s) in no fleet are online.** Move or stop them, or"
                          " name them in `leave_behind`; the fence refuses their writes to the migrated topics.",
                          "", "| group | clients | client ids |", "|---|---:|---|", *rows])


class ManualStepEvidence(Evidence):
    """What the on-call must change by hand once they approve, with the name servers of the
    cluster the fleet goes to, read from its connection as the gate opens (never a credential)."""

    template_fields = ("share",)

    def __init__(self, fleet: str, role: str, groups: list[str], share: float | str, to_conn_id: str,
                 how: str = ""):
        self.fleet, self.role, self.groups, self.share = fleet, role, groups, share
        self.to_conn_id, self.how = to_conn_id, how
        self.title = f"By hand after you approve: fleet {fleet}"

    def render(self, context: Any) -> str:
        namesrv = RocketMQHook(self.to_conn_id).namesrv()
        return (manual_instructions(self.fleet, self.role, self.groups, float(self.share), namesrv, self.how)
                + " The switch then waits until the brokers show every client where it should be.")


class XComEvidence(Evidence):
    """A report an earlier task pushed (a metadata plan, a sensor's last observation)."""

    def __init__(self, task_id: str, title: str, key: str = "return_value", field: str | None = None):
        self.task_id = task_id
        self.key = key
        self.field = field
        self.title = title

    def render(self, context: Any) -> str:
        value = context["ti"].xcom_pull(task_ids=self.task_id, key=self.key)
        if isinstance(value, dict) and self.field:
            value = value.get(self.field)
        if value is None:
            return f"_{self.task_id} left no `{self.key}`._"
        text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
        return f"```\n{text}\n```"


class EvidenceGateMixin:
    """Renders the evidence into ``body`` just before the HITL request is written, and records
    the answer under the XCom key ``answer`` before acting on it: a gate that skips tasks ends
    by exception in Airflow 3, so its return value never reaches XCom."""

    evidence: list[Evidence]
    body: str | None
    assigned_users: list[dict[str, str]]

    def execute(self, context: Any) -> Any:
        self._render_evidence(context)
        return super().execute(context)  # type: ignore[misc]

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self._record_answer(context, event)
        return super().execute_complete(context, event)  # type: ignore[misc]

    def _record_answer(self, context: Any, event: dict[str, Any]) -> None:
        if "error" in event:
            return
        self.validate_chosen_options(event["chosen_options"])
        user = event["responded_by_user"]
        user_id = str(user.get("id")) if isinstance(user, dict) else str(user)
        context["ti"].xcom_push(key="answer", value={
            "chosen_options": event["chosen_options"],
            "responded_by": user.get("name") or user_id if isinstance(user, dict) else user_id,
            "responded_by_id": user_id, "responded_at": str(event["responded_at"]),
            "params_input": dict(event.get("params_input") or {})})

    def _render_evidence(self, context: Any) -> None:
        sections = [self.body or ""]
        if self.assigned_users:
            names = ", ".join(f"everyone with role `{user['name'][len(ROLE_PREFIX):]}`"
                              if user["name"].startswith(ROLE_PREFIX) else f"`{user['name']}`"
                              for user in self.assigned_users)
            sections.append(f"**Who may answer:** {names}. Airflow refuses anyone else's answer.")
        for item in self.evidence:
            try:
                text = item.render(context)
            except RocketMQError as exc:
                text = f"**Could not measure: {exc}** — treat this as a reason not to approve."
            sections.append(f"### {item.title}\n\n{text}")
        self.body = "\n\n".join(s for s in sections if s)


class EvidenceApprovalOperator(EvidenceGateMixin, ApprovalOperator):
    """Approve / Reject with live evidence; Reject skips what the gate guards."""

    template_fields = (*ApprovalOperator.template_fields, "evidence")

    def __init__(self, *, evidence: list[Evidence] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.evidence = evidence or []


class MigrationGate(EvidenceGateMixin, HITLBranchOperator):
    """Approve continues to ``approve_task_id``; Roll back skips everything after the gate.

    What a roll back does is decided after the forward path has stopped, by a
    ``rollback_requested`` check that reads the gates' answers (see ``rollback_requested``).
    """

    template_fields = (*HITLBranchOperator.template_fields, "evidence")

    def __init__(self, *, approve_task_id: str, evidence: list[Evidence] | None = None, **kwargs: Any):
        kwargs.pop("params", None)  # the DAG's trigger params arrive here too: the form has only its own
        super().__init__(options=[APPROVE, ROLL_BACK], options_mapping={APPROVE: approve_task_id},
                         params=override_param(), **kwargs)
        self.evidence = evidence or []

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("chosen_options") != [ROLL_BACK]:
            return super().execute_complete(context, event)
        self._record_answer(context, event)
        answer = HITLOperator.execute_complete(self, context, event)
        self.log.warning("roll back requested by %s", answer["responded_by_user"])
        self.do_branch(context, None)
        return answer


def rollback_requested(gates: list[str], ti: Any) -> bool:
    """True when one of the gates was answered Roll back (a ShortCircuitOperator callable)."""
    chosen = {gate: (ti.xcom_pull(task_ids=gate, key="answer") or {}).get("chosen_options") for gate in gates}
    return any(options == [ROLL_BACK] for options in chosen.values())


class ConflictGate(EvidenceGateMixin, HITLOperator):
    """Opens only when a two-way sync left conflicts: which side's version wins?"""

    template_fields = (*HITLOperator.template_fields, "evidence")

    def __init__(self, *, sync_task_id: str, **kwargs: Any):
        super().__init__(options=["Source wins", "Target wins"], **kwargs)
        self.sync_task_id = sync_task_id
        self.evidence = [XComEvidence(sync_task_id, "Changed on both sides since the last sync", key="conflicts")]

    def execute(self, context: Any) -> Any:
        if not context["ti"].xcom_pull(task_ids=self.sync_task_id, key="conflicts"):
            raise AirflowSkipException("no conflict to decide")
        return super().execute(context)
