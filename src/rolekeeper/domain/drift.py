"""Drift: what differs between a registered object's desired state and what IAM holds now.
Additive only: never what others added to a role."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rolekeeper.domain import ownership
from rolekeeper.domain.records import Record
from rolekeeper.domain.trust import canonical, merged_trust, trusts

# What a role's desired state is made of; the healer repairs only those an event names.
ASPECTS = frozenset({"trust", "policies", "profile", "boundary", "tags"})


@dataclass
class Actual:
    """What IAM holds for a role, as GetRole (or GetAccountAuthorizationDetails) reports it.
    attached and profiles are only meaningful for the aspects they were read for."""

    role: dict[str, Any] | None
    attached: set[str] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)

    @classmethod
    def from_details(cls, detail: dict[str, Any]) -> Actual:
        return cls(
            role=detail,
            attached={p["PolicyArn"] for p in detail.get("AttachedManagedPolicies", [])},
            profiles={
                p["InstanceProfileName"]
                for p in detail.get("InstanceProfileList", [])
                if any(r["RoleName"] == detail["RoleName"] for r in p.get("Roles", []))
            },
        )


def drift(
    record: Record, actual: Actual, aspects: frozenset[str] = ASPECTS, policy_arn: str | None = None
) -> list[str]:
    """What differs from the recorded desired state (additive only: never what others added),
    among aspects (an event's; all by default), of policies only policy_arn if given."""
    if actual.role is None:
        return ["role missing"]
    if record.kind == "slr":
        # Recreated outside rolekeeper (or a re-issue of its grants failed part-way): the grants
        # registered for the old unique id no longer apply to it.
        known = record.attrs.get("role_id")
        return ["role recreated with a new unique id"] if known and actual.role.get("RoleId") != known else []
    if record.kind != "role":
        return []
    spec = ownership.desired_of(record)
    problems = []
    if "policies" in aspects:
        wanted = [a for a in spec.policy_arns if policy_arn in (None, a)]
        problems += [f"policy {arn} detached" for arn in wanted if arn not in actual.attached]
    current = actual.role.get("AssumeRolePolicyDocument") or {}
    ours = ownership.is_ours(record, actual.role)
    if "trust" not in aspects:
        pass
    elif ours:
        own = ownership.own_statements(spec, actual.role.get("Arn"))
        if canonical(merged_trust(current, spec.trust_statement, spec.principals, own)) != canonical(current):
            problems.append("trust policy changed")
    elif not trusts(current, spec.principals):
        # An adopted role's trust statements and conditions are its owner's: only losing every
        # statement that trusts the blueprint's service is damage.
        problems.append("trust statement removed")
    if "profile" in aspects and spec.instance_profile and spec.name not in actual.profiles:
        problems.append("instance profile missing or role removed from it")
    if ours:  # an adopted role's boundary and tags are its owner's; a replaced boundary or a
        # changed tag value is an administrator's choice, only a removed one is damage
        boundary = (actual.role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        if "boundary" in aspects and spec.boundary and boundary is None:
            problems.append("permissions boundary removed")
        if "tags" in aspects:
            tags = {t["Key"].lower() for t in actual.role.get("Tags", [])}
            problems += [f"tag {key} removed" for key in sorted(spec.tags) if key.lower() not in tags]
    return problems
