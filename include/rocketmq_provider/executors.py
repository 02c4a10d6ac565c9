"""Airflow's LocalExecutor with the guard that lets an approval gate take an answer at once.

Airflow 3.3.2 fails a gate answered within a scheduler loop of its opening ("Executor reported
that the task instance ... finished with state success, but the task instance's state attribute
is queued"). The answer resumes the gate while the workload that parked it has not yet been
reported finished; the executor starts the resumed workload at once, the parked one's exit is
read next, and the scheduler, no longer finding the task among the executor's queued ones, takes
it for one killed externally. ``BaseExecutor.trigger_tasks`` still describes the guard that used
to prevent this (hold a workload whose key is still running for a few attempts), but 3.3.2
neither has the guard nor fills ``running``. This executor restores both halves: it tracks the
workloads it started until their exit is read, and holds a task's next workload until then.

On SQLite (the demo, the tests) an answer given while the gate is still writing its question
can be lost too: the answer sees the task running and leaves the resume to the park, the park
does not yet see the answer, and the gate waits for ever on a question already answered
(``SELECT ... FOR UPDATE``, which serialises the two on Postgres, is a no-op on SQLite). The
scheduler runs this executor, so the executor also resumes such gates, as the answer would have.

Configure it with ``AIRFLOW__CORE__EXECUTOR=rocketmq_provider.executors.GateSafeLocalExecutor``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import select

from airflow.executors.local_executor import LocalExecutor
from airflow.executors.workloads import ExecuteTask
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

#: Heartbeats a resumed workload waits for its earlier workload's exit (Airflow 2 held it for
#: three); after that the earlier one is taken for lost and the new one starts anyway.
HOLD_HEARTBEATS = 30
#: How often the executor looks for a parked gate whose answer is already recorded.
ANSWERED_SWEEP_SECONDS = 2.0


class GateSafeLocalExecutor(LocalExecutor):
    """Starts a task's next workload only once its previous workload's exit has been read."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._in_flight: set[Any] = set()
        self._held: Counter = Counter()
        self._swept_at = 0.0

    def heartbeat(self) -> None:
        super().heartbeat()
        if time.monotonic() - self._swept_at >= ANSWERED_SWEEP_SECONDS:
            self._swept_at = time.monotonic()
            self._resume_answered_gates()

    def _resume_answered_gates(self) -> None:
        try:
            with create_session() as session:
                stranded = session.execute(
                    select(TaskInstance, HITLDetail).join(HITLDetail, HITLDetail.ti_id == TaskInstance.id).where(
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT, HITLDetail.responded_at.is_not(None)))
                for ti, detail in stranded.all():
                    self.log.warning("Resuming %s: its answer was recorded while it was parking", ti)
                    handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                        session=session)
        except Exception:  # the scheduler runs this: a failed sweep must not stop it
            self.log.exception("Could not look for answered gates; trying again at the next sweep")

    def _get_workloads_to_schedule(self, open_slots: int) -> list[tuple[Any, Any]]:
        ready = []
        for key, workload in super()._get_workloads_to_schedule(open_slots):
            if key in self._in_flight and self._held[key] < HOLD_HEARTBEATS:
                # Left in queued_tasks, so the scheduler still finds the task ours when the
                # earlier workload's exit arrives.
                if not self._held[key]:
                    self.log.info("Holding %s until the exit of its earlier workload is read", key)
                self._held[key] += 1
                continue
            self._held.pop(key, None)
            ready.append((key, workload))
        return ready

    def _process_workloads(self, workload_list: Any) -> None:
        super()._process_workloads(workload_list)
        self._in_flight.update(w.key for w in workload_list if isinstance(w, ExecuteTask))

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None:
        if remove_running:
            self._in_flight.discard(key)
        super().change_state(key, state, info, remove_running)
