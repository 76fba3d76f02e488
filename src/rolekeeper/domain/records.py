"""The registry's view of an object (a role, a service-linked role or a grant) and its claims.

An object's lifecycle: absent (no record), present, or deleting: a last Delete (or a rollback) took
it, and only that writer removes the AWS object and then the record. A service-linked role's record
stays deleting, with IAM's deletion task id, until the asynchronous deletion is known to have
finished. Every change to what the object is or who claims it moves its version; a heal holds the
object's lease (a token and an expiry) while it repairs it.

What a record wants is stored once: each claim holds its own wants (a spec's to_dict()), and the
object's desired state is derived from them (ownership.desired_of). Records written by 0.1.0 also
carry the object's `desired` (kept here as legacy_desired until their next write) and claims
without wants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

CLAIM = "CLAIM#"
ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role(/(?:[\x21-\x7E]*/)?)([A-Za-z0-9_+=,.@-]{1,64})$")
GRANT_PHYSICAL_ID = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+#[A-Za-z0-9]{1,128}$")


class Kind(StrEnum):
    ROLE = "role"
    SLR = "slr"
    GRANT = "grant"


class State(StrEnum):
    PRESENT = ""
    DELETING = "deleting"


DELETING = State.DELETING


def role_key(role_name: str) -> str:
    # IAM role names are unique case-insensitively within an account.
    return f"ROLE#{role_name.lower()}"


def grant_key(physical_id: str) -> str:
    return f"GRANT#{physical_id}"


@dataclass(frozen=True)
class Pending:
    """What a request asked of a claim, not yet in force: CloudFormation's answer went out but the
    request is proven genuine only once CloudFormation's bucket accepted it (issue 16's two phases).
    A release, or the claim's next heal/on_delete/wants; new: the claim itself came with the
    request (refused, it goes)."""

    request_id: str
    release: bool = False
    heal: bool = True
    on_delete: str = "Retain"
    wants: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    new: bool = False
    created: bool = False  # the request created the object (refused, it goes too, if unclaimed)


@dataclass(frozen=True)
class Claim:
    stack_id: str
    logical_id: str
    heal: bool = True
    on_delete: str = "Retain"
    # What this claim asked for (a spec's to_dict()); None for claims written before claims
    # stored their wants. Compared by key only.
    wants: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    pending: Pending | None = field(default=None, compare=False, hash=False)

    def in_force(self) -> Claim:
        """The claim as its pending request would leave it (the request proven genuine)."""
        if self.pending is None or self.pending.release:
            return replace(self, pending=None)
        wants = self.pending.wants if self.pending.wants is not None else self.wants
        return Claim(self.stack_id, self.logical_id, self.pending.heal, self.pending.on_delete, wants)

    @property
    def sk(self) -> str:
        return claim_sk(self.stack_id, self.logical_id)


@dataclass(frozen=True)
class Intent:
    """Where a request left its pending change: the object, the claim, the request."""

    key: str
    sk: str
    request_id: str


def claim_sk(stack_id: str, logical_id: str) -> str:
    return f"{CLAIM}{stack_id}#{logical_id}"


def claim_owner(sk: str) -> tuple[str, str]:
    """(stack id, logical id) from a claim's sort key: a stack ARN holds no "#"."""
    stack_id, _, logical_id = sk.removeprefix(CLAIM).rpartition("#")
    return stack_id, logical_id


@dataclass(frozen=True)
class Lease:
    """A heal's hold on an object: its token and until when (0: none)."""

    by: str = ""
    until: float = 0.0

    def held(self, now: float, *, by_other_than: str = "") -> bool:
        return bool(self.by) and self.until >= int(now) and self.by != by_other_than


@dataclass
class Record:
    key: str
    kind: Kind
    created: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    # Pieces rolekeeper added to the object (ownership.py); None when never recorded.
    added: set[str] | None = None
    version: int = 0
    state: State = State.PRESENT
    deleting_by: str = ""
    deletion_task_id: str = ""
    deleting_since: int = 0
    claim_count: int = 0
    # When its last heal ended (0: never), as read: a heal that ends later changes it.
    healed_at: float = 0.0
    heal_count: int = 0
    heal_window: int = 0
    lease: Lease = field(default_factory=Lease)
    # The object's desired state as 0.1.0 stored it (None for records written since).
    legacy_desired: dict[str, Any] | None = None
    format: int = 2

    @property
    def healable(self) -> bool:
        return any(c.heal for c in self.claims)

    @property
    def deleting(self) -> bool:
        return self.state == State.DELETING

    def claim_of(self, sk: str) -> Claim | None:
        return next((c for c in self.claims if c.sk == sk), None)

    def wants(self, claims: list[Claim] | None = None) -> list[dict[str, Any]]:
        """What each claim asks for, in force or pending (what a pending request added stays
        until its request is settled); a claim written before claims stored their wants asks
        for the object's recorded desired state."""
        chosen = self.claims if claims is None else claims
        found = [c.wants if c.wants is not None else dict(self.legacy_desired or {}) for c in chosen]
        return found + [c.pending.wants for c in chosen if c.pending is not None and c.pending.wants]

    def spec(self) -> dict[str, Any]:
        """A service-linked role's or a grant's spec: what its claims ask for (they agree on
        everything that names the object)."""
        found = [w for w in self.wants() if w]
        return found[0] if found else dict(self.legacy_desired or {})


def object_key(physical_id: str | None) -> str | None:
    """The registry key of the object a physical id names; an id rolekeeper never produces
    stands for itself."""
    if physical_id and (match := ROLE_ARN.fullmatch(physical_id)):
        return role_key(match.group(4))
    if physical_id and GRANT_PHYSICAL_ID.fullmatch(physical_id):
        return grant_key(physical_id)
    return physical_id
