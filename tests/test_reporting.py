"""The report page's rendering, from a recorded run (no Airflow needed to render)."""

from rocketmq_provider.reporting import RunRecord, current_step, render, series_of

OBS = [{"at": 1000.0 + i, "satisfied": i == 2, "summary": "s", "figures": {"total": 5 - 2 * i, "by_group": {"g": 5 - 2 * i}}}
       for i in range(3)]


def test_current_step_names_what_the_run_waits_for():
    tasks = [("preflight", "success"), ("approve_cutover", "awaiting_input"), ("cutover", None)]
    assert current_step(RunRecord("d", "r", "running", tasks)) == "waiting for your approval: approve_cutover"
    tasks[1] = ("source_drained", "deferred")
    assert current_step(RunRecord("d", "r", "running", tasks)) == "waiting: source_drained"
    tasks[1] = ("switch", "failed")
    assert current_step(RunRecord("d", "r", "failed", tasks)) == "stopped: switch failed"


def test_series_follow_each_figure_over_time():
    assert series_of(OBS) == {"total": [(1000.0, 5.0), (1001.0, 3.0), (1002.0, 1.0)],
                              "by_group: g": [(1000.0, 5.0), (1001.0, 3.0), (1002.0, 1.0)]}


def test_page_shows_gates_switches_and_plots_and_escapes_names():
    record = RunRecord("d<x>", "r1", "running", [("source_drained", "deferred")],
                       answers={"approve_cutover": {"chosen_options": ["Approve"], "responded_by": "alice",
                                                    "responded_at": "2026-11-21 05:00:00+00:00"}},
                       switches={"canary": {"role": "producer", "fleet": "f", "share": 0.5, "cluster": "t", "at": "x"}},
                       observations={"source_drained": OBS})
    page = render(record)
    assert "d&lt;x&gt;" in page and "d<x>" not in page
    assert "<td>approve_cutover</td><td>Approve</td><td>alice</td>" in page
    assert "<td>50%</td>" in page and page.count("<polyline") == 2 and "total (last 1)" in page


def test_page_names_the_writers_outside_the_fleets_the_preflight_found():
    tasks = [("preflight", "success")]
    found = RunRecord("d", "r", "running", tasks, preflight={
        "census": {"writers": {"PG_fleet": ["c1"], "PG_<stray>": ["c2", "c3"]}},
        "writers_outside": {"PG_<stray>": ["c2", "c3"]}})
    page = render(found)
    assert "Writers outside the fleets</b> at the preflight: PG_&lt;stray&gt; (2 clients)" in page
    assert "PG_fleet" not in page
    unknown = render(RunRecord("d", "r", "running", tasks, preflight={"census": {"writers": None},
                                                                      "writers_outside": {}}))
    assert "Writers outside the fleets: unknown" in unknown
    none = render(RunRecord("d", "r", "running", tasks, preflight={"census": {"writers": {"PG_fleet": ["c1"]}},
                                                                   "writers_outside": {}}))
    assert "Writers outside" not in none


def test_page_lists_what_people_did_and_flags_answers_the_gate_refused():
    answers = {"approve_cutover": {"chosen_options": ["Approve"], "responded_by": "oncall", "responded_at": "t2"}}
    actions = [
        {"at": "t1", "by": "developer", "event": "update_hitl_detail", "task_id": "approve_cutover",
         "extra": {"chosen_options": ["Approve"]}},
        {"at": "t2", "by": "oncall", "event": "update_hitl_detail", "task_id": "approve_cutover",
         "extra": {"chosen_options": ["Approve"]}},
        {"at": "t3", "by": "admin", "event": "patch_task_instance", "task_id": "source_drained",
         "extra": {"new_state": "success"}},
    ]
    page = render(RunRecord("d", "r", "running", [], answers=answers, actions=actions, triggered_by="oncall"))
    assert "triggered by oncall" in page
    assert "<td>developer</td><td>answered approve_cutover: Approve (not recorded: refused)</td>" in page
    assert "<td>oncall</td><td>answered approve_cutover: Approve</td>" in page
    assert "<td>admin</td><td>marked source_drained success by hand</td>" in page
