"""The demo fleet's accounting: a loss is reported with the evidence that explains it."""

from __future__ import annotations

import json

from rocketmq_demo.fleet import DemoFleet, FleetLayout


def _row(t: float, e: str, key: str, **fields) -> str:
    return json.dumps({"t": t, "e": e, "key": key, **fields})


def test_a_skipped_run_of_offsets_is_reported_with_what_was_received_around_it(tmp_path):
    layout = FleetLayout(topic="orders_t", producer_group="PID_t", consumer_groups=["GID_a", "GID_b"],
                         producers=1, consumers_per_group=1, java_members={"producer-0", "GID_a-0"})
    fleet = DemoFleet(layout, tmp_path, None)
    sent, got_a, got_b = [], [], []
    for seq in range(10):  # queue 1 of broker b0, offsets 100..109; GID_b never gets 104..106
        key = f"producer-0-{seq}"
        sent.append(_row(1000 + seq, "sent", key, cluster="src", broker="b0", queue=1, offset=100 + seq))
        got_a.append(_row(1000.5 + seq, "recv", key, group="GID_a", cluster="src", member="GID_a-0",
                          broker="b0", queue=1, offset=100 + seq))
        if not 4 <= seq <= 6:  # the C++ member reports no broker: the key locates it
            got_b.append(_row(1000.5 + seq, "recv", key, group="GID_b", cluster="src", member="GID_b-0",
                              queue=1, offset=100 + seq))
    for member, rows in (("producer-0", sent), ("GID_a-0", got_a), ("GID_b-0", got_b)):
        fleet.log_path(member).write_text("\n".join(rows) + "\n")

    result = fleet.account()

    assert result["lost"] == 3 and result["groups"]["GID_a"]["lost"] == 0
    shipping = result["groups"]["GID_b"]
    assert shipping["lost_keys"] == ["producer-0-4", "producer-0-5", "producer-0-6"]
    assert shipping["lost_where"] == [{
        "broker": "b0", "queue": 1, "lost_offsets": [104, 106], "located": 3,
        "before": {"offset": 103, "member": "GID_b-0", "cluster": "src", "at_s": 3.5},
        "after": {"offset": 107, "member": "GID_b-0", "cluster": "src", "at_s": 7.5}}]
    assert shipping["cpp_offset_reads_failed"] == []  # no member process of this fleet ran
    assert "lost_where" not in result["groups"]["GID_a"]
