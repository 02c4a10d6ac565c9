"""A small client of Airflow's REST API (v2) for the demo and the end-to-end tests.

It does what an on-call engineer does in the UI: unpause and trigger a DAG, list the pending
approvals, answer one, and follow a run to its end.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from rocketmq_harness.airflow_standalone import RunningAirflow

TERMINAL = {"success", "failed"}


class AirflowApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, text: str):
        super().__init__(f"{method} {path} -> {status}: {text[:500]}")
        self.status = status
        self.text = text


class AirflowApi:
    def __init__(self, airflow: RunningAirflow):
        self.url = airflow.url
        self.password = airflow.password
        self._token = airflow.token()

    def text(self, method: str, path: str, body: Any = None) -> str:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        text = self.text(method, path, body)
        return json.loads(text) if text else None

    def report_page(self, dag_id: str, run_id: str) -> str:
        """The RocketMQ report of a run, as the UI's tab on the run page loads it."""
        return self.text("GET", f"/rocketmq/reports/{dag_id}/{_q(run_id)}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """New DAG files appear after the dag-processor parses them."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", f"/api/v2/dags/{dag_id}")
                return
            except AirflowApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        data = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances?limit=500")
        return {ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
                for ti in data["task_instances"]}

    def pending_gates(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/hitlDetails?response_received=false")
        return data.get("hitl_details", [])

    def wait_for_gate(self, dag_id: str, run_id: str, task_id: str, timeout: float = 300,
                      poll: float = 0.5) -> dict[str, Any]:
        """Return the gate's open question as soon as it is listed, as the Required Actions page
        shows it: the project's gates take an answer at once (see EvidenceGateMixin)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for gate in self.pending_gates(dag_id, run_id):
                if gate["task_instance"]["task_id"] == task_id:
                    return gate
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                raise RuntimeError(f"run {run_id} ended {state} before gate {task_id} opened: "
                                   f"{self.task_states(dag_id, run_id)}")
            time.sleep(poll)
        raise TimeoutError(f"gate {task_id} did not open within {timeout}s: {self.task_states(dag_id, run_id)}")

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str, map_index: int = -1,
               params_input: dict[str, Any] | None = None) -> Any:
        return self.call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/{map_index}/hitlDetails",
                         {"chosen_options": [option], "params_input": params_input or {}})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still running after {timeout}s: {self.task_states(dag_id, run_id)}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/logs/{try_number}"
                f"?full_content=true&map_index={map_index}")
        data = self.call("GET", path)
        content = data.get("content", "")
        return content if isinstance(content, str) else json.dumps(content)

    def set_connection(self, conn_id: str, **fields: Any) -> None:
        """Create or replace a connection, as an admin would in the UI."""
        try:
            self.call("DELETE", f"/api/v2/connections/{conn_id}")
        except AirflowApiError as exc:
            if exc.status != 404:
                raise
        self.call("POST", "/api/v2/connections", {"connection_id": conn_id, **fields})

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> Any:
        """Mark a task instance by hand (what "Mark success" in the UI does)."""
        return self.call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}",
                         {"new_state": state})

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> Any:
        """Clear task instances and what follows them, so they run again (the UI's "Clear")."""
        return self.call("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances",
                         {"dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False,
                          "include_downstream": True})

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> Any:
        """End a run by hand (what "Mark failed" on a run in the UI does)."""
        return self.call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}", {"state": state})

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
                f"?map_index={map_index}&deserialize=true")
        return self.call("GET", path).get("value")


def _q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")

