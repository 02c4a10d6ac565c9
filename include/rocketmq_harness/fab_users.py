"""Create a FAB Airflow's roles and users in one process: ``python -m rocketmq_harness.fab_users``
with ``{"roles": [...], "users": {name: {"password": ..., "roles": [...]}}}`` on stdin (so no
password is ever on a command line).

``airflow roles create`` and ``airflow users create`` load Airflow anew for every call; the
harness's eight such calls took over a minute. A user who exists already is left as it is.
"""

from __future__ import annotations

import json
import sys

from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from airflow.utils.providers_configuration_loader import providers_configuration_loaded


@providers_configuration_loaded
def create(wanted: dict) -> None:
    """The roles, then every user not there yet."""
    with get_application_builder() as appbuilder:
        manager = appbuilder.sm
        for role in wanted["roles"]:
            if manager.find_role(role) is None:
                manager.add_role(role)
        for name, user in wanted["users"].items():
            if manager.find_user(username=name) is not None:
                continue
            roles = [manager.find_role(role) for role in user["roles"]]
            if not manager.add_user(name, name, "harness", f"{name}@example.invalid", roles, user["password"]):
                raise SystemExit(f"FAB did not create the user {name}")


if __name__ == "__main__":
    create(json.load(sys.stdin))
