"""What applying a spec to AWS did (the converge steps' answers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# "Not read yet" for a role the caller may already have read (None would mean "absent").
UNREAD: Any = object()
# A prune that removes only policies and the instance profile, which need no read of the role.
NOT_NEEDED: Any = object()


@dataclass
class RoleOutcome:
    """The role as it is after a converge step, and what the step changed (for the log)."""

    name: str
    arn: str
    role_id: str
    changes: list[str] = field(default_factory=list)
    instance_profile_name: str | None = None
    instance_profile_arn: str | None = None
    # rolekeeper created the role (this call or before: its marker tag or recorded RoleId says so).
    ours: bool = False
    # IAM as this step read it before changing anything (a prune after it needs no second read).
    role: dict[str, Any] | None = field(default=None, repr=False)
    attached: set[str] | None = field(default=None, repr=False)


def role_attrs(outcome: RoleOutcome) -> dict[str, str]:
    """What the registry keeps of a role: its name, ARN and current RoleId, and the RoleId of the
    role rolekeeper created (only when this one is it: a role of that name made since by someone
    else never passes for rolekeeper's)."""
    attrs = {"name": outcome.name, "arn": outcome.arn, "role_id": outcome.role_id}
    if outcome.ours:
        attrs["created_role_id"] = outcome.role_id
    return attrs


@dataclass
class GrantOutcome:
    grant_id: str
    grant_token: str
    grantee_arn: str
    grantee_role_id: str
    name: str


@dataclass
class Made:
    """What a writer's attempts did to AWS, across attempts."""

    created: bool = False  # the writer created the object itself (only that allows undoing it)
    profile: bool = False  # it created the role's instance profile
    added: set[str] = field(default_factory=set)  # pieces it added (ownership.py)
    removed: set[str] = field(default_factory=set)  # added pieces it took away
    grants: list[str] = field(default_factory=list)  # grant ids it created

    def add(self, pieces: set[str] | frozenset[str]) -> None:
        self.added |= pieces
        self.removed -= pieces

    def take_away(self, pieces: set[str] | frozenset[str]) -> None:
        self.removed |= pieces
        self.added -= pieces
