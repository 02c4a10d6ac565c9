# Two commands matter: `make demo` and `make test`. Everything else is a step of those.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HARNESS := $(PY) -m rocketmq_harness
# make demo TOPOLOGY=ha: the demo on clusters of two masters (4.9 with a slave, 5.x behind a proxy).
TOPOLOGY ?= small
export RMQ_TOPOLOGY := $(TOPOLOGY)
DEMO_CLUSTERS := $(if $(filter ha,$(TOPOLOGY)),source-ha target-ha,source target)

.PHONY: setup prereqs jars schemas clusters demo demo-status test test-slow bench stop status memory mqadmin

# Java 17 and Maven run the brokers, Chromium and its driver run the browser test; on a
# machine without them, install them from Debian.
prereqs:
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     openjdk-17-jdk-headless maven chromium chromium-driver)

# Re-running is fast: pip only runs when requirements.txt or pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: prereqs $(STAMP) jars schemas

# The compose specification's JSON schema, as the pinned docker-compose wheel ships it; the
# suite validates docker-compose.yaml against it (no Docker engine needed).
COMPOSE_SCHEMA := .run/schemas/compose_spec.json
schemas: $(COMPOSE_SCHEMA)
$(COMPOSE_SCHEMA): $(STAMP)
	mkdir -p .run/schemas
	$(PY) -m pip download -q --disable-pip-version-check --no-deps docker-compose==1.29.2 -d .run/schemas
	$(PY) -c "import glob, zipfile; wheel = zipfile.ZipFile(glob.glob('.run/schemas/docker_compose-1.29.2-*.whl')[0]); open('$@', 'wb').write(wheel.read('compose/config/compose_spec.json'))"

# Resolves both RocketMQ versions into the Maven cache (~/.m2), once, and builds the Java fleet member.
jars: $(STAMP)
	$(PY) -c "from rocketmq_harness.clusters import classpath, SOURCE_VERSION, TARGET_VERSION; classpath(SOURCE_VERSION); classpath(TARGET_VERSION)"
	$(PY) -c "from rocketmq_demo.java_member import classpath; classpath()"

clusters: setup
	$(HARNESS) start $(DEMO_CLUSTERS)

demo: clusters
	$(PY) -m rocketmq_demo up
	$(HARNESS) airflow start
	@$(HARNESS) memory
	@echo "Open the UI, unpause and trigger 'Migration: orders-migration'; README.md walks through each gate."

test: setup
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

# The tests marked slow (tests/test_migration_e2e.py's address-service world, over ten minutes).
test-slow: setup
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

# Benchmarks (tests/benchmarks/bench_*.py) on private clusters, not part of `make test`: each prints
# its figures and writes bench-results/<name>.json; exit 1 when one misses its target. One: make bench BENCH=apply
BENCH ?= $(patsubst tests/benchmarks/bench_%.py,%,$(sort $(wildcard tests/benchmarks/bench_*.py)))
bench: setup
	@rc=0; for b in $(BENCH); do $(PY) tests/benchmarks/bench_$$b.py || rc=1; done; exit $$rc

stop:
	-$(HARNESS) airflow stop
	-$(PY) -m rocketmq_demo down
	$(HARNESS) stop

status:
	$(HARNESS) status

demo-status:
	$(PY) -m rocketmq_demo status

memory:
	$(HARNESS) memory

# make mqadmin CLUSTER=source ARGS="topicList"   (-n defaults to the cluster's name server)
CLUSTER ?= source
mqadmin:
	@$(HARNESS) mqadmin $(CLUSTER) $(ARGS)
