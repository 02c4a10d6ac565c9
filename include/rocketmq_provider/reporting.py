"""The progress report of a migration or replication run: one HTML page, readable in ten seconds.

It is built from what the run recorded: task states, the gates' answers, the switches, and the
figures every sensor saw at each check (plotted over time). Inline SVG, no script, no external
asset, so it renders inside Airflow's UI as it is.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from typing import Any

STATE_COLOURS = {"success": "#2e7d32", "running": "#1565c0", "deferred": "#6a1b9a", "awaiting_input": "#ef6c00",
                 "queued": "#546e7a", "scheduled": "#546e7a", "failed": "#c62828", "upstream_failed": "#e57373",
                 "skipped": "#9e9e9e", None: "#bdbdbd"}
WAITING = {"running", "deferred", "awaiting_input", "queued", "scheduled", "up_for_reschedule", "up_for_retry"}
#: DAGs that record one observation per run on a schedule: their report plots this run and the
#: runs before it (a day of five-minute monitor runs), or there would be one point to plot.
HISTORY_DAG_PREFIXES = ("rmq_replication_monitor__",)
HISTORY_RUNS = 288
PALETTE = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#ad1457"]


@dataclass
class RunRecord:
    """Everything the page shows, gathered from the metadata database by the caller."""

    dag_id: str
    run_id: str
    state: str
    tasks: list[tuple[str, str | None]]  # task id and state, in the DAG's order
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    switches: dict[str, dict[str, Any]] = field(default_factory=dict)
    observations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    preflight: dict[str, Any] | None = None
    triggered_by: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)  # what people did to the run, from Airflow's audit log
    control_actions: list[dict[str, Any]] = field(default_factory=list)  # a replication task's starts and controls
    overrides: list[dict[str, Any]] = field(default_factory=list)  # switches past a failed precondition, as pushed


def current_step(record: RunRecord) -> str:
    """What the run is doing now, in words an on-call engineer acts on."""
    for task_id, state in record.tasks:
        if state == "awaiting_input":
            return f"waiting for your approval: {task_id}"
        if state in WAITING:
            return f"{'waiting' if state == 'deferred' else state}: {task_id}"
        if state in ("failed", "upstream_failed"):
            return f"stopped: {task_id} {state}"
    return f"run {record.state}"


def render(record: RunRecord) -> str:
    esc = html.escape
    done = sum(1 for _, s in record.tasks if s in ("success", "skipped"))
    parts = [
        f"<h1>{esc(record.dag_id)}</h1>",
        f"<p class=now><b>Now:</b> {esc(current_step(record))} &middot; {done}/{len(record.tasks)} steps done"
        f" &middot; run <code>{esc(record.run_id)}</code> ({esc(record.state)})"
        f"{f' &middot; triggered by {esc(record.triggered_by)}' if record.triggered_by else ''}</p>",
        _steps(record),
        _gates(record),
        _actions(record),
        _control_actions(record),
        _switches(record),
        _writers_outside(record),
        *(_chart(task, obs) for task, obs in record.observations.items() if obs),
    ]
    for override in record.overrides:
        failed = "; ".join(f"{f.get('condition')}: {f.get('summary')}" for f in override.get("failed", []))
        parts.append(f"<p class=warn><b>Override</b> of {esc(override.get('task'))} by {esc(override.get('by', '?'))}"
                     f" at {esc(override.get('at', '?'))} ({esc(override.get('gate', 'no gate'))}):"
                     f" {esc(override.get('reason'))} &middot; failed: {esc(failed)}</p>")
    for refusal in (record.report or {}).get("refusals", []):
        failed = "; ".join(f"{f.get('condition')}: {f.get('summary')}" for f in refusal.get("failed", []))
        parts.append(f"<p class=warn><b>Refused</b>: {esc(refusal.get('task'))} did not switch: {esc(failed)}</p>")
    return _PAGE.format(title=esc(record.dag_id), body="\n".join(p for p in parts if p))


def _steps(record: RunRecord) -> str:
    cells = "".join(
        f'<span class=step style="background:{STATE_COLOURS.get(state, "#bdbdbd")}" '
        f'title="{html.escape(str(state))}">{html.escape(task)}</span>' for task, state in record.tasks)
    return f"<h2>Steps</h2><div class=steps>{cells}</div>"


def _gates(record: RunRecord) -> str:
    if not record.answers:
        return "<h2>Approvals</h2><p>No gate answered yet.</p>"
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{html.escape(', '.join(a.get('chosen_options', [])))}</td>"
                   f"<td>{html.escape(str(a.get('responded_by')))}</td><td>{html.escape(str(a.get('responded_at')))}</td></tr>"
                   for g, a in record.answers.items())
    return f"<h2>Approvals</h2><table><tr><th>gate</th><th>answer</th><th>by</th><th>at</th></tr>{rows}</table>"


def _control_actions(record: RunRecord) -> str:
    """Who started, paused, reset, resumed, stopped or deleted the replication task, and what came of it."""
    if not record.control_actions:
        return ""
    esc = html.escape
    rows = []
    for action in record.control_actions:
        what = action["action"] + (f" to {action['timestamp']}" if action.get("timestamp") else "")
        rows.append(f"<tr><td>{esc(action['at'])}</td><td>{esc(str(action['by']))}</td><td>{esc(what)}</td>"
                    f"<td>{esc(action['state'])}</td><td><code>{esc(_short(action.get('outcome')))}</code></td></tr>")
    return ("<h2>Replication control: who did what</h2><table><tr><th>at</th><th>by</th><th>action</th>"
            f"<th>run</th><th>outcome</th></tr>{''.join(rows)}</table>")


def _short(value: Any, limit: int = 200) -> str:
    text = "" if value is None else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + " ..."


def describe_action(action: dict[str, Any], answers: dict[str, dict[str, Any]]) -> str:
    """One audit-log entry in the on-call's words. An answer the gate did not record (refused: not
    an approver, or the gate was already answered) says so."""
    event, task, extra = action.get("event"), action.get("task_id"), action.get("extra") or {}
    if event == "patch_task_instance":
        return f"marked {task} {extra.get('new_state')} by hand"
    if event == "post_clear_task_instances":
        return f"cleared {', '.join(extra.get('task_ids') or ['the failed tasks'])}"
    if event == "patch_dag_run":
        return f"set the run {extra.get('state')}"
    if event == "update_hitl_detail":
        chosen = extra.get("chosen_options")
        recorded = answers.get(task) or {}
        taken = recorded.get("responded_by") == action.get("by") and recorded.get("chosen_options") == chosen
        return f"answered {task}: {', '.join(chosen or [])}" + ("" if taken else " (not recorded: refused)")
    return f"{event} {task or ''}".strip()


def _actions(record: RunRecord) -> str:
    if not record.actions:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(a.get('at')))}</td><td>{html.escape(str(a.get('by')))}</td>"
                   f"<td>{html.escape(describe_action(a, record.answers))}</td></tr>" for a in record.actions)
    return (f"<h2>What people did</h2><p>From Airflow's audit log. A step marked by hand proves nothing: the"
            f" switches after it re-check the clusters.</p><table><tr><th>at</th><th>who</th><th>what</th></tr>"
            f"{rows}</table>")


def _writers_outside(record: RunRecord) -> str:
    """Producer groups the preflight found on the source in no fleet: nothing moves them."""
    if not record.preflight:
        return ""
    census = record.preflight.get("census") or {}
    if census and census.get("writers") is None:
        return ("<p class=warn><b>Writers outside the fleets: unknown</b> (the source's brokers cannot list"
                " their producers); the fence is what stops them.</p>")
    outside = record.preflight.get("writers_outside") or {}
    if not outside:
        return ""
    groups = ", ".join(f"{html.escape(g)} ({len(c)} client{'s' if len(c) != 1 else ''})" for g, c in outside.items())
    return (f"<p class=warn><b>Writers outside the fleets</b> at the preflight: {groups}. Nothing moves them;"
            " the fence refuses their writes to the migrated topics.</p>")


def _switches(record: RunRecord) -> str:
    if not record.switches:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{html.escape(str(s.get('role')))}s of {html.escape(str(s.get('fleet')))}</td>"
        f"<td>{float(s.get('share', 0)):.0%}</td><td>{html.escape(str(s.get('cluster')))}</td>"
        f"<td>{html.escape(str(s.get('at', '')))}</td></tr>" for t, s in record.switches.items())
    return (f"<h2>Switches</h2><table><tr><th>task</th><th>fleet</th><th>share</th><th>to</th><th>at</th></tr>"
            f"{rows}</table>")


def series_of(observations: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Numeric figures over time: one series per key of each dict of numbers (per group, per topic)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for obs in observations:
        at = float(obs.get("at", 0))
        for name, value in (obs.get("figures") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(name, []).append((at, float(value)))
            elif isinstance(value, dict):
                for key, inner in value.items():
                    if isinstance(inner, (int, float)) and not isinstance(inner, bool):
                        series.setdefault(f"{name}: {key}", []).append((at, float(inner)))
    return series


def _chart(task: str, observations: list[dict[str, Any]], width: int = 640, height: int = 180) -> str:
    series = series_of(observations)
    errors = sum(1 for o in observations if o.get("error"))
    caption = f"{html.escape(task)} — {len(observations)} checks" + (f", {errors} could not measure" if errors else "")
    if not series:
        return f"<h3>{caption}</h3><p>{html.escape(observations[-1].get('summary', ''))}</p>"
    times = [t for points in series.values() for t, _ in points]
    values = [v for points in series.values() for _, v in points]
    t0, t1 = min(times), max(times) or 1
    top = max(values) or 1
    pad = 30

    def xy(t: float, v: float) -> str:
        x = pad + (t - t0) / ((t1 - t0) or 1) * (width - 2 * pad)
        y = height - pad - v / top * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(xy(t, v) for t, v in points)}"><title>{html.escape(name)}</title></polyline>')
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(name)} (last {points[-1][1]:g})</span>')
    axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="2" y="{pad + 4}" font-size="11">{top:g}</text><text x="2" y="{height - pad}" font-size="11">0</text>'
            f'<text x="{pad}" y="{height - 8}" font-size="11">{_clock(t0)}</text>'
            f'<text x="{width - pad - 50}" y="{height - 8}" font-size="11">{_clock(t1)}</text>')
    return (f'<h3>{caption}</h3><svg role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{axes}{"".join(lines)}</svg><div class=legend>{" ".join(legend)}</div>')


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch)) + "Z"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h1{{font-size:1.3em;margin:0}}
.now{{font-size:1.15em;background:#fff8e1;padding:.5em;border-left:4px solid #ef6c00}}
.steps{{display:flex;flex-wrap:wrap;gap:4px}} .step{{color:#fff;padding:2px 6px;border-radius:3px;font-size:.8em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:3px 8px;font-size:.9em;text-align:left}}
.legend span{{margin-right:1em;font-size:.85em}} .warn{{background:#ffebee;padding:.5em}}
</style></head><body>{body}</body></html>"""
