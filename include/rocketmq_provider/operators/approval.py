"""Approval gates: Airflow's own HITL operators, with a body that shows live evidence.

The evidence (backlog, clients per cluster, a metadata plan, what a sensor saw) is measured
when the gate opens, not when the DAG was parsed, so the on-call engineer decides on the state
of the clusters at that moment. Evidence holds names and numbers only, never credentials.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator, HITLOperator
from airflow.sdk.exceptions import AirflowSkipException

from rocketmq_core.checks import ClientsOnline
from rocketmq_core.errors import RocketMQError
from rocketmq_provider.hooks.rocketmq import RocketMQHook

APPROVE = "Approve"
ROLL_BACK = "Roll back"


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
    """Online clients per group on each cluster, side by side."""

    template_fields = ("groups",)

    def __init__(self, rocketmq_conn_ids: list[str], groups: list[str], role: str = "consumer"):
        self.rocketmq_conn_ids = rocketmq_conn_ids
        self.groups = groups
        self.role = role
        self.title = f"Online {role}s per cluster"

    def render(self, context: Any) -> str:
        counts: dict[str, dict[str, int]] = {}
        for conn_id in self.rocketmq_conn_ids:
            check = ClientsOnline(list(self.groups), self.role, min_clients=0)  # one per cluster: it tracks brokers
            result = RocketMQHook(conn_id).run(check.evaluate)
            counts[conn_id] = result.figures["clients"]
        header = "| group | " + " | ".join(f"`{c}`" for c in self.rocketmq_conn_ids) + " |"
        rule = "|---|" + "---:|" * len(self.rocketmq_conn_ids)
        rows = [f"| {g} | " + " | ".join(str(counts[c][g]) for c in self.rocketmq_conn_ids) + " |"
                for g in sorted(self.groups)]
        return "\n".join([header, rule, *rows])


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
        context["ti"].xcom_push(key="answer", value={
            "chosen_options": event["chosen_options"],
            "responded_by": user.get("name") or user.get("id") if isinstance(user, dict) else str(user),
            "responded_at": str(event["responded_at"])})

    def _render_evidence(self, context: Any) -> None:
        sections = [self.body or ""]
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
        super().__init__(options=[APPROVE, ROLL_BACK], options_mapping={APPROVE: approve_task_id}, **kwargs)
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
