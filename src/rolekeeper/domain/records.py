"""The registry's view of an object (a role, a service-linked role or a grant) and its claims.

An object's lifecycle: absent (no record), present, or deleting: a last Delete (or a rollback) took
it, and only that writer removes the AWS object and then the record. A service-linked role's record
stays deleting, with IAM's deletion task id, until the asynchronous deletion is known to have
finished. Every change to what the object is or who claims it moves its version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CLAIM = "CLAIM#"
ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role(/(?:[\x21-\x7E]*/)?)([A-Za-z0-9_+=,.@-]{1,64})$")
GRANT_PHYSICAL_ID = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+#[A-Za-z0-9]{1,128}$")
DELETING = "deleting"


def role_key(role_name: str) -> str:
    # IAM role names are unique case-insensitively within an account.
    return f"ROLE#{role_name.lower()}"


def grant_key(physical_id: str) -> str:
    return f"GRANT#{physical_id}"


@dataclass(frozen=True)
class Claim:
    stack_id: str
    logical_id: str
    heal: bool = True
    on_delete: str = "Retain"
    # What this claim asked for (a spec's to_dict()); None for claims written before claims
    # stored their wants. Compared by key only.
    wants: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def sk(self) -> str:
        return f"{CLAIM}{self.stack_id}#{self.logical_id}"


@dataclass
class Record:
    key: str
    kind: str
    desired: dict[str, Any]
    created: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    # Pieces rolekeeper added to the object (ownership.py); None when never recorded.
    added: set[str] | None = None
    version: int = 0
    state: str = ""  # "" (present) or DELETING
    deleting_by: str = ""
    deletion_task_id: str = ""
    deleting_since: int = 0
    claim_count: int = 0
    # When its last heal ended (0: never), as read: a heal that ends later changes it.
    healed_at: float = 0.0

    @property
    def healable(self) -> bool:
        return any(c.heal for c in self.claims)

    @property
    def deleting(self) -> bool:
        return self.state == DELETING

    def claim_of(self, sk: str) -> Claim | None:
        return next((c for c in self.claims if c.sk == sk), None)


def object_key(physical_id: str | None) -> str | None:
    """The registry key of the object a physical id names; an id rolekeeper never produces
    stands for itself."""
    if physical_id and (match := ROLE_ARN.fullmatch(physical_id)):
        return role_key(match.group(4))
    if physical_id and GRANT_PHYSICAL_ID.fullmatch(physical_id):
        return grant_key(physical_id)
    return physical_id
