"""What applying a spec to AWS did (the converge steps' answers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# "Not read yet" for a role the caller may already have read (None would mean "absent").
UNREAD: Any = object()


@dataclass
class RoleOutcome:
    name: str
    arn: str
    role_id: str
    created: bool
    changes: list[str] = field(default_factory=list)
    instance_profile_name: str | None = None
    instance_profile_arn: str | None = None
    made: set[str] = field(default_factory=set)
    # rolekeeper created the role (this call or before, its marker tag says so); `created` alone
    # means this call made it, and only that allows undoing it.
    ours: bool = False
    added: set[str] = field(default_factory=set)  # pieces rolekeeper added (see ownership.py)
    removed: set[str] = field(default_factory=set)  # added pieces it took away


def role_attrs(outcome: RoleOutcome) -> dict[str, str]:
    """What the registry keeps of a role: its name, ARN and current RoleId, and the RoleId of the
    role rolekeeper created (only when this one is it: a role of that name made since by someone
    else never passes for rolekeeper's)."""
    attrs = {"name": outcome.name, "arn": outcome.arn, "role_id": outcome.role_id}
    if outcome.created or outcome.ours:
        attrs["created_role_id"] = outcome.role_id
    return attrs


@dataclass
class GrantOutcome:
    grant_id: str
    grant_token: str
    grantee_arn: str
    grantee_role_id: str
    name: str
