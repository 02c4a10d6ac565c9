"""Parse time of the DAG factory with 200 task specs (target: under 2 s in total, no network).

Writes bench-results/dag_parse.json. Run by `make bench`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPECS = 200


def main() -> int:
    example = yaml.safe_load((ROOT / "specs" / "orders-migration.yaml").read_text())
    with tempfile.TemporaryDirectory() as folder:
        for i in range(SPECS):
            spec = copy.deepcopy(example)
            spec["name"] = f"migration-{i:03d}"
            spec["scope"] = {"topics": {"include": [f"t{i:03d}_*"]}, "groups": {"include": [f"GID_{i:03d}_*"]}}
            spec["fleets"][0]["groups"] = [f"GID_{i:03d}_a", f"GID_{i:03d}_b"]
            spec["fleets"][0]["topics"] = spec["fleets"][1]["topics"] = [f"t{i:03d}_orders"]
            spec["fleets"][1]["groups"] = [f"PID_{i:03d}"]
            (Path(folder) / f"m{i:03d}.yaml").write_text(yaml.safe_dump(spec))
        os.environ["RMQ_TASK_SPECS_DIR"] = folder
        from airflow.dag_processing.dagbag import DagBag

        DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_cluster_health.py"))  # import Airflow itself first
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(ROOT / "dags" / "rocketmq_tasks.py"))
        seconds = time.perf_counter() - started
    result = {"specs": SPECS, "dags": len(bag.dag_ids), "import_errors": len(bag.import_errors),
              "seconds": round(seconds, 3), "target_seconds": 2.0, "met": seconds < 2.0 and not bag.import_errors}
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "dag_parse.json").write_text(json.dumps(result, indent=2))
    print(f"dag parse: {SPECS} specs -> {result['dags']} DAGs in {seconds:.2f}s (target < 2 s): "
          f"{'met' if result['met'] else 'NOT met'}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
