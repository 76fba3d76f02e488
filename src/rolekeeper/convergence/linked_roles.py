"""Bring a service-linked role to its spec (create or adopt; keep its description)."""

from __future__ import annotations

from typing import Any

from rolekeeper.aws import iam
from rolekeeper.convergence.outcomes import UNREAD, RoleOutcome
from rolekeeper.domain.errors import Conflict
from rolekeeper.domain.specs import LinkedRoleSpec


def converge_linked_role(spec: LinkedRoleSpec, *, current: dict[str, Any] | None = UNREAD) -> RoleOutcome:
    """current: the role as the caller just read it (None: absent), saving a GetRole."""
    name = spec.role_name
    role = iam.get_role(name) if current is UNREAD else current
    created = False
    changes: list[str] = []
    if role is None:
        new_name, on_retry = iam.create_service_linked_role(spec.service_name, spec.suffix, spec.description)
        role = iam.wait_for_role(new_name or name)
        # "Has been taken" only on the SDK's retry: the first attempt created it and its answer
        # was lost. On the first attempt: someone else made it since GetRole; adopted.
        created = new_name is not None or on_retry
        changes.append("created" if created else "adopted")
    elif not str(role.get("Path", "")).startswith("/aws-service-role/"):
        raise Conflict(f"role {name} exists but is not a service-linked role (path {role.get('Path')})")
    elif spec.description is not None and role.get("Description", "") != spec.description:
        iam.update_description(name, spec.description)
        changes.append("description")
    return RoleOutcome(
        name=role["RoleName"], arn=role["Arn"], role_id=role["RoleId"], created=created, changes=changes
    )
