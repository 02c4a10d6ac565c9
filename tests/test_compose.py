"""docker-compose.yaml is valid against the compose specification's JSON schema, and everything
it names exists in the project. No Docker engine runs here, so this is how the file is checked."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / ".run" / "schemas" / "compose_spec.json"  # written by `make schemas` (part of setup)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


def test_compose_schema_rejects_a_broken_file(compose):
    """The schema check can fail: a service with an unknown key is rejected."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["fleet"]["restartt"] = "always"
    assert list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))


def test_every_path_build_and_module_it_names_exists(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: volume source {source} is missing"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), f"{name}: no Dockerfile"
        command = service.get("command", "")
        words = shlex.split(command) if isinstance(command, str) else command
        if "-m" in words:
            module = words[words.index("-m") + 1]
            assert importlib.util.find_spec(module), f"{name}: python module {module} does not exist"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", dockerfile, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which is missing"


def test_services_ports_and_dependencies_are_consistent(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"host ports used twice: {host_ports}"
    hostnames = set(services)
    for conf in (ROOT / "deploy").glob("broker-*.conf"):
        settings = dict(line.split("=", 1) for line in conf.read_text().splitlines() if "=" in line and
                        not line.startswith("#"))
        assert settings["brokerIP1"] in hostnames and settings["namesrvAddr"].split(":")[0] in hostnames


def test_connections_cover_every_connection_the_specs_use(compose):
    env = compose["x-airflow"]["environment"]
    defined = {k.removeprefix("AIRFLOW_CONN_").lower() for k in env if k.startswith("AIRFLOW_CONN_")}
    used = set()
    for path in (ROOT / "specs").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        used |= {spec["source"]["conn_id"], spec["target"]["conn_id"]}
        used |= {fleet["switch"]["http_conn_id"] for fleet in spec.get("fleets", [])}
    assert used <= defined, f"specs use connections compose does not define: {used - defined}"
    hosts = {json.loads(v)["host"] for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
    assert hosts <= set(compose["services"]), f"connections point at unknown services: {hosts}"
    assert env["RMQ_TASK_SPECS_DIR"] in {v.split(":")[1] for v in compose["x-airflow"]["volumes"]}


def test_no_secret_defaults_to_a_known_value_and_fab_decides_who_may_answer(compose):
    text = (ROOT / "docker-compose.yaml").read_text()
    env = compose["x-airflow"]["environment"]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == "rocketmq_provider.auth.OnCallFabAuthManager"
    assert importlib.util.find_spec("rocketmq_provider.auth")
    for secret in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD",
                   "ADDRESS_SERVICE_TOKEN"):
        assert f"${{{secret}:?" in text and f"${{{secret}:-" not in text, secret
        assert f"{secret}=\n" in (ROOT / ".env.example").read_text(), secret
    assert "SIMPLE_AUTH_MANAGER_USERS" not in text and "airflow:airflow@" not in text
