"""Session fixtures: real RocketMQ clusters on loopback and a private Airflow home.

Clusters come from rocketmq_harness: started once per session (or reused when the harness
already runs them) and stopped at the end only if this session started them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rocketmq.client import PushConsumer

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = ROOT / ".run" / "airflow-test"
#: The project's DAG files and the tests' probe DAGs, side by side, as links: dag.test() runs
#: only DAGs parsed from the DAG folder.
TEST_DAGS = AIRFLOW_HOME / "dags"
#: The end-to-end tests' Airflow standalone, and the task specs folder it reads.
E2E_HOME = ROOT / ".run" / "airflow-e2e"
E2E_SPECS = E2E_HOME / "specs"


def _link_dag_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.py"):
        old.unlink()
    for source in [*sorted((ROOT / "dags").glob("*.py")), *sorted((ROOT / "tests" / "dags").glob("*.py"))]:
        (folder / source.name).symlink_to(source)


_link_dag_files(TEST_DAGS)

# Airflow reads its configuration at import: point it at a private home before anything imports it.
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(TEST_DAGS)
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from rocketmq_core.admin import ClusterAdmin  # noqa: E402
from rocketmq_core.model import TopicConfig  # noqa: E402
from rocketmq_harness import clusters as harness  # noqa: E402
from cluster_side import shutdown_within  # noqa: E402


#: The clusters this session started, stopped together when it finishes.
_STARTED_HERE: list[harness.ClusterSpec] = []


def _started(names: tuple[str, ...]) -> dict:
    """Start (or reuse) the named clusters; those this session started are stopped at its end."""
    started = {}
    for name in names:
        spec = harness.CLUSTERS[name]
        reused = harness.is_up(spec)
        started[name] = harness.start(spec)
        if not reused and not os.environ.get("RMQ_HARNESS_KEEP"):
            _STARTED_HERE.append(spec)
    return started


def pytest_sessionfinish(session) -> None:
    """Stop the session's clusters at once: one after another, their brokers' shutdowns added up
    to almost two minutes."""
    with ThreadPoolExecutor(max(1, len(_STARTED_HERE))) as pool:
        list(pool.map(harness.stop, _STARTED_HERE))
    _STARTED_HERE.clear()


@pytest.fixture(scope="session")
def rmq_clusters():
    """The plain source (4.9.x) and target (5.x) clusters, by name."""
    return _started(("source", "target"))


@pytest.fixture(scope="session")
def acl_clusters():
    """Clusters with authentication on: 4.9.x plain ACL and 5.x ACL 2.0, by name."""
    return _started(("source-acl", "target-acl"))


@pytest.fixture(scope="session")
def ha_clusters():
    """Production shapes: 4.9.x with two masters (the first with a slave), 5.x with two masters
    behind a proxy, by name."""
    return _started(("source-ha", "target-ha"))


@pytest.fixture(params=["source-ha", "target-ha"])
def ha_cluster(request, ha_clusters):
    """Each test using this runs once against each multi-broker cluster."""
    return ha_clusters[request.param]


@pytest.fixture(params=["source", "target"])
def cluster(request, rmq_clusters):
    """Each test using this runs once against each version line."""
    return rmq_clusters[request.param]


class UniqueNames:
    """Topic and group names no other test (or earlier run) uses."""

    def __init__(self, test_name: str):
        self.stem = re.sub(r"[^A-Za-z0-9]", "_", test_name)[-40:]

    def topic(self, label: str = "t") -> str:
        return f"T_{self.stem}_{label}_{uuid.uuid4().hex[:8]}"

    def group(self, label: str = "g") -> str:
        return f"G_{self.stem}_{label}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def names(request) -> UniqueNames:
    return UniqueNames(request.node.name)


@pytest.fixture(scope="session")
def airflow_env(rmq_clusters):
    """A migrated SQLite metadata DB and rocketmq connections for the two clusters."""
    import subprocess
    import sys

    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    for name, cluster in rmq_clusters.items():
        os.environ[f"AIRFLOW_CONN_ROCKETMQ_{name.upper()}"] = json.dumps(
            {"conn_type": "rocketmq", "host": "127.0.0.1", "port": cluster.spec.namesrv_port})
    return AIRFLOW_HOME


def _e2e_standalone():
    from rocketmq_harness import airflow_standalone

    return airflow_standalone.StandaloneSpec(E2E_HOME, 28080, E2E_HOME / "dags", E2E_SPECS)


@pytest.fixture(scope="session")
def airflow_api(request, rmq_clusters):
    """A running Airflow standalone (its own home and port) with the project's and the probe DAGs."""
    from rocketmq_harness import airflow_standalone
    from rocketmq_harness.airflow_api import AirflowApi

    spec = _e2e_standalone()
    spec.specs_dir.mkdir(parents=True, exist_ok=True)
    _link_dag_files(spec.dags_folder)
    pid = airflow_standalone.recorded_pid(spec)
    running = airflow_standalone.start(spec)
    if pid is None and not os.environ.get("RMQ_HARNESS_KEEP"):
        request.addfinalizer(lambda: airflow_standalone.stop(spec))
    return AirflowApi(running)


@pytest.fixture(scope="session")
def airflow_as(airflow_api):
    """The same running Airflow as each of the harness's users (airflow_standalone.USERS) sees it."""
    from rocketmq_harness import airflow_standalone
    from rocketmq_harness.airflow_api import AirflowApi

    return {user: AirflowApi(airflow_standalone.login(_e2e_standalone(), user)) for user in airflow_standalone.USERS}


@pytest.fixture(scope="module")
def fab_airflow_as(request, rmq_clusters):
    """Airflow with FAB's auth manager (rocketmq_provider.auth), as production runs it, as each of
    the harness's users sees it; it reads the end-to-end DAG folder and is stopped after the module."""
    from rocketmq_harness import airflow_standalone
    from rocketmq_harness.airflow_api import AirflowApi

    spec = airflow_standalone.StandaloneSpec(ROOT / ".run" / "airflow-fab", 28090, E2E_HOME / "dags", E2E_SPECS,
                                             auth="fab")
    _link_dag_files(spec.dags_folder)
    airflow_standalone.start(spec)
    if not os.environ.get("RMQ_HARNESS_KEEP"):
        request.addfinalizer(lambda: airflow_standalone.stop(spec))
    return {user: AirflowApi(airflow_standalone.login(spec, user)) for user in airflow_standalone.USERS}


@pytest.fixture
def online_group(rmq_clusters, names):
    """A group with one real consumer online on the target and none on the source."""
    target = rmq_clusters["target"]
    group, topic = names.group(), names.topic()

    async def create() -> None:
        async with ClusterAdmin(target.namesrv) as admin:
            await admin.create_topic(target.broker, TopicConfig(topic, 2, 2))

    async def online() -> int:
        async with ClusterAdmin(target.namesrv) as admin:
            return (await admin.consumer_connection(target.broker, group)).online

    asyncio.run(create())
    consumer = PushConsumer(group)
    consumer.set_namesrv_addr(target.namesrv)
    consumer.subscribe(topic, lambda msg: None)
    consumer.start()
    deadline = time.monotonic() + 30
    while asyncio.run(online()) != 1:
        assert time.monotonic() < deadline, "consumer never came online"
        time.sleep(0.5)
    yield group
    shutdown_within(consumer)
