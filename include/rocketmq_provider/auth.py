"""FAB's auth manager, taking a gate's assigned approvers by user name or by role.

A spec names its approvers as people know them: user names, or ``role:NAME`` for everyone who
holds a FAB role (an on-call rotation, kept in Security → List Roles). Gates hand them to Airflow
as assigned users, and Airflow's own check compares them with the user's id, which under FAB is
the numeric row id: the named approver would be refused. This manager also matches the user name
and the user's roles. It resolves them when a gate is answered, so parsing a DAG needs neither
the database nor the network. Configure it with
``AIRFLOW__CORE__AUTH_MANAGER=rocketmq_provider.auth.OnCallFabAuthManager``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

from rocketmq_core.taskspec import ROLE_PREFIX


def may_answer(assigned: set[str], user_id: str, user_name: str, roles: Iterable[str]) -> bool:
    """Whether a user is among a gate's assigned approvers: by id, by name, or by a role."""
    return (user_id in assigned or user_name in assigned
            or any(f"{ROLE_PREFIX}{role}" in assigned for role in roles))


class OnCallFabAuthManager(FabAuthManager):
    def is_authorized_hitl_task(self, *, assigned_users: set[str], user: Any) -> bool:
        return may_answer(assigned_users, str(user.get_id()), user.get_name(), (r.name for r in user.roles))
