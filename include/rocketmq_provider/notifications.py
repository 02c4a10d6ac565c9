"""Notifications of a task spec, as Airflow's own notifiers: an HTTP webhook and/or email.

Messages carry names, states and a link to the run's report; never a credential.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.configuration import conf
from airflow.sdk.bases.notifier import BaseNotifier

from rocketmq_core.taskspec import NotificationSpec

log = logging.getLogger(__name__)

def report_link() -> str:
    """A template of the run's report URL; the base URL is configuration, read once at parse time."""
    base = conf.get("api", "base_url", fallback="").rstrip("/")
    return base + "/rocketmq/reports/{{ dag.dag_id }}/{{ run_id }}"


class BestEffort(BaseNotifier):
    """Runs a notifier and logs its failure instead of raising: a webhook that is down must not
    fail the gate or the step that announced itself."""

    template_fields = ()

    def __init__(self, notifier: BaseNotifier):
        super().__init__()
        self.notifier = notifier

    def notify(self, context: Any) -> None:
        try:
            self.notifier(context)
        except Exception:  # any notifier, any failure: logged with its traceback, never raised
            log.exception("notification by %s failed", type(self.notifier).__name__)


MESSAGES = {
    "gate_opened": "{{ dag.dag_id }}: gate {{ ti.task_id }} waits for approval: {{ task.subject }}",
    "run_failed": "{{ dag.dag_id }}: run {{ run_id }} failed",
    "replication_alert": "{{ dag.dag_id }}: replication needs attention: {{ exception }}",
    "source_touched": "{{ dag.dag_id }}: run {{ run_id }}: {{ exception }}",
}


def notifiers(spec: NotificationSpec, event: str) -> list[BaseNotifier]:
    """The notifiers that announce one event (a key of MESSAGES) for a spec; empty when none is set.

    The providers' notifiers are imported only for a spec that uses them: the HTTP one pulls in
    aiohttp, about 0.35 s of every DAG file parse otherwise."""
    if not (spec.webhook or spec.emails):
        return []
    text, link = MESSAGES[event], report_link()
    result: list[BaseNotifier] = []
    if spec.webhook:
        from airflow.providers.http.notifications.http import HttpNotifier

        result.append(HttpNotifier(
            http_conn_id=spec.webhook.http_conn_id, endpoint=spec.webhook.endpoint,
            json={"event": event, "text": f"{text} {link}", "dag_id": "{{ dag.dag_id }}",
                  "run_id": "{{ run_id }}", "report": link}))
    if spec.emails:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        result.append(SmtpNotifier(to=list(spec.emails), subject=text,
                                   html_content=f"<p>{text}</p><p><a href=\"{link}\">Report</a></p>"))
    return [BestEffort(n) for n in result]
