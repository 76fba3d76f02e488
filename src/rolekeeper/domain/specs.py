"""What a claim asks for: the desired state of a service-linked role, a regular role or a KMS grant."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from rolekeeper.domain.catalog import LINKED_SERVICES


@dataclass(frozen=True)
class LinkedRoleSpec:
    service_name: str
    suffix: str | None = None
    description: str | None = None

    @property
    def role_name(self) -> str:
        return LINKED_SERVICES[self.service_name].name_with(self.suffix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkedRoleSpec:
        return cls(**data)


@dataclass(frozen=True)
class RoleSpec:
    blueprint: str
    name: str
    path: str
    trust_statement: dict[str, Any]
    principals: tuple[str, ...]
    policy_arns: tuple[str, ...]
    owned_policy_arns: tuple[str, ...] = ()
    boundary: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    instance_profile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoleSpec:
        data = dict(data)
        for name in ("principals", "policy_arns", "owned_policy_arns"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)


@dataclass(frozen=True)
class GrantSpec:
    key_arn: str
    grantee_role_name: str
    operations: tuple[str, ...]
    constraints: dict[str, Any] | None
    retiring_principal: str | None
    stack_id: str
    logical_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrantSpec:
        data = dict(data)
        data["operations"] = tuple(data["operations"])
        return cls(**data)

    def name(self, grantee_role_id: str) -> str:
        """Deterministic, so a retried CreateGrant returns the same grant (KMS Name idempotency)."""
        stack_name = self.stack_id.split("/")[1] if self.stack_id.count("/") >= 2 else "stack"
        digest = hashlib.sha256(f"{self.stack_id}|{self.logical_id}".encode()).hexdigest()[:12]
        return f"rolekeeper-{stack_name[:80]}-{self.logical_id[:80]}-{digest}-{grantee_role_id}"
