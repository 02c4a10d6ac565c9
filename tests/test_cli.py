"""rmqctl against the real clusters: its numbers checked against the core and against mqadmin.

Most runs call ``main()`` in-process (stdout and stderr captured); the ACL test runs the
installed ``rmqctl`` script as a subprocess with the secret in the environment, as on-call would.
Every object has a unique name and is deleted afterwards: the clusters are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rocketmq_core.admin import ClusterAdmin
from rocketmq_core.backlog import measure_backlog
from rocketmq_core.cli import main
from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.diff import diff
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import take_snapshot
from rocketmq_core.model import GroupConfig, TopicConfig
from rocketmq_core.remoting.protocol import RequestCode
from rocketmq_harness.clusters import mqadmin, parse_consumer_progress
from cluster_side import send_routed, shutdown_within

RMQCTL = Path(sys.executable).with_name("rmqctl")


def run(coro):
    return asyncio.run(coro)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """main() in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mq(cluster, *args: str) -> str:
    result = mqadmin(cluster.spec, list(args))
    assert result.returncode == 0 and "Exception" not in result.stdout, \
        f"mqadmin {args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


async def _with_admin(cluster, job):
    async with ClusterAdmin(cluster.namesrv, cluster.credentials) as admin:
        return await job(admin)


def on(cluster, job):
    return run(_with_admin(cluster, job))


@pytest.fixture
def cleanup() -> Iterator:
    """Register (cluster, topics, groups) to delete after the test, whatever happened."""
    items: list[tuple[object, list[str], list[str]]] = []
    yield lambda cluster, topics=(), groups=(): items.append((cluster, list(topics), list(groups)))

    async def _clean(admin: ClusterAdmin, cluster, topics, groups) -> None:
        for topic in topics:
            with contextlib.suppress(RocketMQError):
                await admin.delete_topic(topic, cluster.name)
        for group in groups:
            with contextlib.suppress(RocketMQError):
                await admin.client.invoke(cluster.broker, RequestCode.DELETE_SUBSCRIPTIONGROUP,
                                          {"groupName": group, "removeOffset": "true", "cleanOffset": "true"})
    for cluster, topics, groups in items:
        on(cluster, lambda admin, c=cluster, t=topics, g=groups: _clean(admin, c, t, g))


async def send(admin: ClusterAdmin, broker: str, topic: str, queue_id: int, count: int) -> None:
    """Store ``count`` messages in one queue (SEND_MESSAGE_V2 with a fixed queue id)."""
    for i in range(count):
        await admin.client.invoke(broker, RequestCode.SEND_MESSAGE_V2, {
            "a": "PG_cli_test", "b": topic, "c": "TBW102", "d": 4, "e": queue_id, "f": 0,
            "g": int(time.time() * 1000), "h": 0, "i": "WAIT\x01true\x02", "j": 0, "k": "false", "m": "false"},
            body=f"cli test {i}".encode())


def wait_for(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def mqadmin_progress(cluster, group: str) -> tuple[dict[tuple[str, int], tuple[int, int, int]], int]:
    """(topic, queue id) -> (broker offset, consumer offset, diff), and Diff Total, from consumerProgress."""
    rows, total = parse_consumer_progress(mq(cluster, "consumerProgress", "-g", group))
    return {(topic, queue): v for (topic, _, queue), v in rows.items()}, total


# --- diff, export, import ---------------------------------------------------------------------

def test_diff_export_import_against_core_and_mqadmin(rmq_clusters, names, cleanup, capsys, tmp_path):
    source, target = rmq_clusters["source"], rmq_clusters["target"]
    prefix = names.topic("x")  # unique stem of this test's topics
    new_topic, changed_topic = TopicConfig(f"{prefix}_new", 3, 5, perm=6), TopicConfig(f"{prefix}_chg", 2, 2, perm=6)
    group = GroupConfig(names.group(), retry_max_times=4, consume_from_min=False)
    extra_topic = f"{prefix}_extra"  # only on the target: a delete, done only with --allow-delete
    cleanup(source, [new_topic.name, changed_topic.name], [group.name])
    cleanup(target, [new_topic.name, changed_topic.name, extra_topic], [group.name])

    async def seed_source(admin):
        await admin.create_topic(source.broker, new_topic)
        await admin.create_topic(source.broker, changed_topic)
        await admin.create_group(source.broker, group)

    async def seed_target(admin):
        await admin.create_topic(target.broker, TopicConfig(changed_topic.name, 2, 2, perm=4))
        await admin.create_topic(target.broker, TopicConfig(extra_topic, 1, 1))
    on(source, seed_source)
    on(target, seed_target)
    scope_args = ["--topics", f"{prefix}_*", "--groups", group.name]
    diff_args = ["diff", "--source", source.namesrv, "--target", target.namesrv, "--no-acl", *scope_args]

    # diff: exit 1, the same changes as the core's diff
    code, out, err = cli(capsys, *diff_args, "--json")
    assert (code, err) == (1, "")
    data = json.loads(out)

    async def core_diff():
        async with ClusterAdmin(source.namesrv) as s, ClusterAdmin(target.namesrv) as t:
            return diff(await take_snapshot(s, include_acl=False), await take_snapshot(t, include_acl=False),
                        Scope(topics=f"{prefix}_*", groups=group.name))
    expected = run(core_diff())
    assert data["counts"] == expected.counts() == {"create": 2, "update": 1, "delete": 1}
    assert [(c["action"], c["kind"], c["name"]) for c in data["changes"]] == \
        [(c.action, c.kind, c.name) for c in expected.changes]
    [update] = [c for c in data["changes"] if c["action"] == "update"]
    assert update["name"] == changed_topic.name and update["fields"] == [{"field": "perm", "source": 6, "target": 4}]
    assert data["source"]["versions"] == {source.spec.broker_name: source.version}
    assert data["target"]["topics_in_scope"] == 2 and data["source"]["topics_in_scope"] == 2

    code, out, _ = cli(capsys, *diff_args)
    assert code == 1
    assert re.search(rf"^update\s+topic\s+{changed_topic.name}\s+perm\s+6\s+4$", out, re.M)
    assert re.search(rf"^create\s+group\s+{group.name}\s", out, re.M)
    assert "4 changes: 2 create, 1 update, 1 delete" in out

    # export: the exportMetadata document, the same objects mqadmin's own export holds
    export = tmp_path / "export.json"
    code, out, _ = cli(capsys, "export", "-n", source.namesrv, "-o", str(export), *scope_args)
    assert code == 0 and f"exported 2 topic(s) and 1 group(s) from {source.namesrv}" in out
    doc = json.loads(export.read_text())
    assert set(doc["topicConfigTable"]) == {new_topic.name, changed_topic.name}
    assert set(doc["subscriptionGroupTable"]) == {group.name}
    mq(source, "exportMetadata", "-c", source.name, "-f", str(tmp_path / "mq"))
    theirs = json.loads((tmp_path / "mq" / "metadata.json").read_text())
    for name, ours in doc["topicConfigTable"].items():
        assert ours == {k: theirs["topicConfigTable"][name][k] for k in ours}
    for name, ours in doc["subscriptionGroupTable"].items():
        assert ours == {k: theirs["subscriptionGroupTable"][name][k] for k in ours}

    # import --dry-run: the plan, nothing changed
    before = on(target, lambda admin: take_snapshot(admin, include_acl=False))
    code, out, _ = cli(capsys, "import", str(export), "-n", target.namesrv, "--dry-run", "--json", *scope_args)
    assert code == 0
    plan = json.loads(out)["plan"]
    assert [(a["op"], a["kind"], a["name"]) for a in plan["actions"]] == [
        ("create", "topic", new_topic.name), ("update", "topic", changed_topic.name), ("create", "group", group.name)]
    assert [s["name"] for s in plan["skipped"]] == [extra_topic]
    after = on(target, lambda admin: take_snapshot(admin, include_acl=False))
    assert new_topic.name not in after.topics and after.topics[changed_topic.name] == before.topics[changed_topic.name]
    code, out, _ = cli(capsys, "import", str(export), "-n", target.namesrv, "--dry-run", *scope_args)
    assert code == 0 and "3 action(s): 2 create, 1 update, 0 delete" in out and extra_topic in out

    # import: applied, verified; the delete only with --allow-delete
    code, out, _ = cli(capsys, "import", str(export), "-n", target.namesrv, *scope_args)
    assert code == 0 and "applied 3, already in place 0, deletes skipped 1" in out
    now = on(target, lambda admin: take_snapshot(admin, include_acl=False))
    assert (now.topics[new_topic.name].read_queues, now.topics[new_topic.name].write_queues) == (3, 5)
    assert now.topics[changed_topic.name].perm == 6 and extra_topic in now.topics
    assert (now.groups[group.name].retry_max_times, now.groups[group.name].consume_from_min) == (4, False)
    code, out, _ = cli(capsys, *diff_args, "--json")
    assert code == 1 and json.loads(out)["counts"] == {"create": 0, "update": 0, "delete": 1}

    code, out, _ = cli(capsys, "import", str(export), "-n", target.namesrv, "--allow-delete", "--json", *scope_args)
    result = json.loads(out)["result"]
    assert code == 0 and [(a["op"], a["name"]) for a in result["applied"]] == [("delete", extra_topic)]
    code, out, _ = cli(capsys, *diff_args)
    assert code == 0 and "no differences in scope" in out
    assert extra_topic not in on(target, lambda admin: take_snapshot(admin, include_acl=False)).topics
    # the installed script, as a process: same answer, same exit code
    done = subprocess.run([str(RMQCTL), *diff_args, "--json"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["counts"] == {"create": 0, "update": 0, "delete": 0}


# --- backlog ------------------------------------------------------------------------------------

def test_backlog_matches_core_and_mqadmin(cluster, names, cleanup, capsys):
    topic, group = names.topic(), names.group()
    retry = f"%RETRY%{group}"
    cleanup(cluster, [topic, retry], [group])
    sent, committed = {0: 3, 1: 2, 2: 4, 3: 1}, {0: 3, 1: 0, 2: 1, 3: 0}  # lag 0 + 2 + 3 + 1 = 6

    async def seed(admin):
        await admin.create_topic(cluster.broker, TopicConfig(topic, 4, 4))
        # as a consumer's heartbeat would: 4.9's mqadmin consumerProgress fails without the retry topic
        await admin.create_topic(cluster.broker, TopicConfig(retry, 1, 1))
        await admin.create_group(cluster.broker, GroupConfig(group))
        for queue_id, count in sent.items():
            await send(admin, cluster.broker, topic, queue_id, count)
        for queue_id, offset in committed.items():
            await admin.update_consumer_offset(cluster.broker, group, topic, queue_id, offset)
    on(cluster, seed)

    code, out, err = cli(capsys, "backlog", "-n", cluster.namesrv, group, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    core = on(cluster, lambda admin: measure_backlog(admin, [group]))
    ours = {(r["topic"], r["queue_id"]): (r["broker_offset"], r["consumer_offset"], r["lag"])
            for r in data["rows"] if r["group"] == group}
    assert ours == {(r.topic, r.queue_id): (r.broker_offset, r.consumer_offset, r.lag)
                    for r in core.rows if r.group == group}
    assert {k: v for k, v in ours.items() if k[0] == topic} == {
        (topic, q): (sent[q], committed[q], sent[q] - committed[q]) for q in sent}
    assert data["by_group"] == {group: 6} and data["consumer_lag"] == 6
    assert data["total"] == 6 + data["pending_system"]
    assert {r["kind"] for r in data["rows"] if r["group"] is None} >= {"delayed", "half"}

    tool_rows, tool_total = mqadmin_progress(cluster, group)
    assert {k: v for k, v in tool_rows.items() if k[0] == topic} == {k: v for k, v in ours.items() if k[0] == topic}
    assert tool_total == 6

    code, out, _ = cli(capsys, "backlog", "-n", cluster.namesrv, group, "--check")
    assert code == 1  # 6 messages left
    header = out.splitlines()[0]
    assert re.search(r"total (\d+) = consumer lag 6 \+ pending system (\d+)", header)
    assert re.search(rf"^{group}\s+{topic}\s+{cluster.spec.broker_name}\s+2\s+4\s+1\s+3\s+normal$", out, re.M)
    assert f"Per group: {group} 6" in out
    assert "Per kind: normal 6, retry 0, delayed " in out


# --- clients ------------------------------------------------------------------------------------

def test_clients_match_core_and_mqadmin(cluster, names, cleanup, capsys):
    from rocketmq.client import Message, Producer, PushConsumer

    topic, group, producer_group = names.topic(), names.group(), f"P_{uuid.uuid4().hex[:12]}"
    cleanup(cluster, [topic, f"%RETRY%{group}"], [group])
    on(cluster, lambda admin: admin.create_topic(cluster.broker, TopicConfig(topic, 2, 2)))
    received = threading.Event()
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(cluster.namesrv)
    consumer.subscribe(topic, lambda msg: received.set())
    producer = Producer(producer_group)
    producer.set_namesrv_addr(cluster.namesrv)
    consumer.start()
    producer.start()
    try:
        message = Message(topic)
        message.set_body(b"hello")
        send_routed(producer, message)
        assert received.wait(60), "the consumer never received the message"

        def online():
            async def _look(admin):
                return (await admin.consumer_connection(cluster.broker, group),
                        await admin.producer_connections(cluster.broker, producer_group))
            conn, producers = on(cluster, _look)
            return (conn, producers) if conn.clients and producers else None
        conn, producers = wait_for(online, "consumer and producer registered")

        code, out, err = cli(capsys, "clients", "-n", cluster.namesrv, group, producer_group, "--json")
        assert (code, err) == (0, "")
        data = json.loads(out)["groups"]
        assert [c["client_id"] for c in data[group]["consumers"]] == sorted(c.client_id for c in conn.clients)
        assert data[group]["consumers"][0]["brokers"] == [cluster.spec.broker_name]
        assert data[group]["subscriptions"] == list(conn.subscriptions) and topic in conn.subscriptions
        assert data[group]["message_model"] == conn.message_model == "CLUSTERING"
        assert data[group]["producers"] == []
        assert [c["client_id"] for c in data[producer_group]["producers"]] == sorted(c.client_id for c in producers)
        assert data[producer_group]["consumers"] == []

        tool = mq(cluster, "consumerConnection", "-g", group)
        assert conn.clients[0].client_id in tool
        assert re.search(rf"{re.escape(topic)}\s", tool)
        tool = mq(cluster, "producerConnection", "-g", producer_group, "-t", topic)
        assert all(p.client_id in tool for p in producers)

        code, out, _ = cli(capsys, "clients", "-n", cluster.namesrv, group, "--role", "consumer")
        assert code == 0
        assert re.search(rf"^consumer\s+{group}\s+{re.escape(conn.clients[0].client_id)}\s", out, re.M)
        # the client subscribes its group's retry topic by itself
        assert (f"{group}: 1 consumer(s) online (CLUSTERING/CONSUME_PASSIVELY), subscribed to %RETRY%{group},"
                f" {topic}") in out
        assert "producer(s)" not in out
    finally:
        producer.shutdown()
        shutdown_within(consumer)


# --- errors and credentials -------------------------------------------------------------------

def test_errors_are_one_line_on_stderr_with_exit_2(rmq_clusters, names, capsys, tmp_path):
    source = rmq_clusters["source"]
    code, out, err = cli(capsys, "export", "-n", "127.0.0.1:1", "-o", str(tmp_path / "x.json"))
    assert code == 2 and out == "" and not (tmp_path / "x.json").exists()
    assert err.count("\n") == 1 and err.startswith("rmqctl export: ConnectionFailed:") and "127.0.0.1:1" in err

    missing = names.group("missing")
    code, out, err = cli(capsys, "backlog", "-n", source.namesrv, missing)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("rmqctl backlog: NotFound:") and missing in err

    bad = tmp_path / "bad.json"
    bad.write_text('{"topics": []}')
    code, _, err = cli(capsys, "import", str(bad), "-n", source.namesrv, "--dry-run")
    assert code == 2 and err.startswith("rmqctl import: InvalidSpec:") and err.count("\n") == 1
    code, _, err = cli(capsys, "import", str(tmp_path / "absent.json"), "-n", source.namesrv)
    assert code == 2 and "cannot read" in err and err.count("\n") == 1

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"topicConfigTable": {"bad name!": {"readQueueNums": 1, "writeQueueNums": 1}},
                                   "subscriptionGroupTable": {}}))
    code, _, err = cli(capsys, "import", str(invalid), "-n", source.namesrv, "--dry-run")
    assert code == 2 and "InvalidSpec" in err and "bad name!" in err

    code, _, err = cli(capsys, "backlog", "-n", source.namesrv, "--access-key", "someone", "G")
    assert code == 2 and "needs a secret" in err and "RMQ_SECRET_KEY" in err
    with pytest.raises(SystemExit) as exited:
        main(["backlog", "-n", source.namesrv, "--secret-key", "hunter2-secret", "G"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "not accepted" in err and "hunter2-secret" not in err


def test_acl_secret_from_environment_and_file_via_installed_script(acl_clusters, names, cleanup, capsys,
                                                                    tmp_path, monkeypatch):
    source, target = acl_clusters["source-acl"], acl_clusters["target-acl"]
    topic = names.topic()
    cleanup(source, [topic])
    on(source, lambda admin: admin.create_topic(source.broker, TopicConfig(topic, 2, 2)))
    assert shutil.which(str(RMQCTL)), f"{RMQCTL} is not installed (pip install -e .)"
    env = {**os.environ, "RMQ_SECRET_KEY": source.credentials.secret_key,
           "RMQ_TARGET_SECRET_KEY": target.credentials.secret_key}
    argv = [str(RMQCTL), "diff", "--source", source.namesrv, "--target", target.namesrv,
            "--access-key", source.credentials.access_key, "--target-access-key", target.credentials.access_key,
            "--topics", topic, "--groups", "", "--acl", "", "--json"]
    assert source.credentials.secret_key not in " ".join(argv)

    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("create", topic)]
    assert data["source"]["versions"] == {source.spec.broker_name: source.version}
    assert data["target"]["versions"] == {target.spec.broker_name: target.version}

    wrong = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                           env={**env, "RMQ_TARGET_SECRET_KEY": "not-the-secret"})
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.startswith("rmqctl diff: AccessDenied:") and wrong.stderr.count("\n") == 1
    assert target.broker in wrong.stderr and "not-the-secret" not in wrong.stderr

    secret_file = tmp_path / "secret"
    secret_file.write_text(source.credentials.secret_key + "\n")
    secret_file.chmod(0o600)
    monkeypatch.delenv("RMQ_SECRET_KEY", raising=False)
    code, out, err = cli(capsys, "export", "-n", source.namesrv, "-o", "-", "--topics", topic, "--groups", "",
                         "--access-key", source.credentials.access_key, "--secret-key-file", str(secret_file))
    assert (code, err) == (0, "")
    assert set(json.loads(out)["topicConfigTable"]) == {topic}
    code, out, err = cli(capsys, "export", "-n", source.namesrv, "-o", "-", "--topics", topic)
    assert code == 2 and out == "" and "AccessDenied" in err  # no credentials on an ACL cluster
