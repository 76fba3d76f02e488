"""Desired state and the converge steps that bring AWS to it; shared by the provisioner and healer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from rolekeeper import iam, kms
from rolekeeper.catalog import LINKED_SERVICES
from rolekeeper.errors import Conflict

logger = Logger(child=True)


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


@dataclass
class GrantOutcome:
    grant_id: str
    grant_token: str
    grantee_arn: str
    grantee_role_id: str
    name: str


# --- trust policies -------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _services(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    return [str(s) for s in _as_list(principal.get("Service"))] if isinstance(principal, dict) else []


ASSUME_ACTIONS = ("sts:AssumeRole", "sts:*", "*")


def _assumes(statement: dict[str, Any]) -> bool:
    return any(a in ASSUME_ACTIONS for a in _as_list(statement.get("Action")))


def trusts(document: dict[str, Any], principals: tuple[str, ...]) -> bool:
    return any(
        s.get("Effect") == "Allow" and _assumes(s) and set(_services(s)) & set(principals)
        for s in _as_list(document.get("Statement"))
    )


def merged_trust(
    current: dict[str, Any] | None, statement: dict[str, Any], principals: tuple[str, ...]
) -> dict[str, Any]:
    """The blueprint's statement is the only one letting its principal assume the role (so its
    conditions hold); everything else others added is kept: Deny statements, other principals,
    and other actions granted to the principal (sts:TagSession, say)."""
    kept: list[dict[str, Any]] = []
    for existing in _as_list((current or {}).get("Statement")):
        services = _services(existing)
        if existing.get("Effect") != "Allow" or not _assumes(existing) or not set(services) & set(principals):
            kept.append(existing)
            continue
        rest = [s for s in services if s not in principals]
        principal = {k: v for k, v in existing["Principal"].items() if k != "Service"}
        if rest:
            principal["Service"] = rest if len(rest) > 1 else rest[0]
        if principal:
            kept.append({**existing, "Principal": principal})
        other_actions = [a for a in _as_list(existing.get("Action")) if a not in ASSUME_ACTIONS]
        if other_actions:
            ours = [s for s in services if s in principals]
            kept.append(
                {
                    **existing,
                    "Principal": {"Service": ours if len(ours) > 1 else ours[0]},
                    "Action": other_actions if len(other_actions) > 1 else other_actions[0],
                }
            )
    return {"Version": "2012-10-17", "Statement": [*kept, statement]}


def canonical(document: Any) -> Any:
    """Policy documents compared as IAM means them: one-item lists equal their item, order aside."""
    if isinstance(document, dict):
        return {k: canonical(v) for k, v in sorted(document.items()) if k != "Sid" or v}
    if isinstance(document, list):
        items = [canonical(v) for v in document]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return document


# --- converge -------------------------------------------------------------------------------


def converge_linked_role(spec: LinkedRoleSpec) -> RoleOutcome:
    name = spec.role_name
    role = iam.get_role(name)
    created = False
    changes: list[str] = []
    if role is None:
        new_name = iam.create_service_linked_role(spec.service_name, spec.suffix, spec.description)
        created = new_name is not None
        role = iam.wait_for_role(new_name or name)
        changes.append("created" if created else "adopted")
    elif not str(role.get("Path", "")).startswith("/aws-service-role/"):
        raise Conflict(f"role {name} exists but is not a service-linked role (path {role.get('Path')})")
    elif spec.description is not None and role.get("Description", "") != spec.description:
        iam.update_description(name, spec.description)
        changes.append("description")
    return RoleOutcome(
        name=role["RoleName"], arn=role["Arn"], role_id=role["RoleId"], created=created, changes=changes
    )


def converge_role(
    spec: RoleSpec, previous: RoleSpec | None = None, *, rollback: bool = True, restore_trust: bool = False
) -> RoleOutcome:
    """Create or adopt a regular role and add what the blueprint needs; on failure after creating
    it, remove what this call made so nothing half-made is left (the healer, which never deletes,
    passes rollback=False and completes the role on its retry instead). A role that does not trust
    the blueprint's principal is someone else's and is refused, unless the healer is restoring the
    trust policy of a role rolekeeper holds (restore_trust=True)."""
    role = iam.get_role(spec.name)
    ours = False
    if role is None:
        description = f"Managed by rolekeeper (blueprint {spec.blueprint})"
        trust = {"Version": "2012-10-17", "Statement": [spec.trust_statement]}
        try:
            iam.create_role(spec.name, spec.path, trust, description, spec.boundary, spec.tags)
            ours = True
        except ClientError as error:
            if not iam.already_exists(error):
                raise
            # Made concurrently, or this CreateRole succeeded but its answer was lost (a timeout
            # that botocore retried): a role carrying rolekeeper's description is rolekeeper's.
            role = iam.wait_for_role(spec.name)
            ours = role.get("Description") == description
    if ours:
        made: set[str] = set()
        try:
            role = role or iam.wait_for_role(spec.name)
            outcome = _complete(spec, previous, role, created=True, made=made)
        except Exception:
            if rollback:
                undo_created_role(spec.name, profile_created="profile" in made)
            raise
        return outcome
    assert role is not None  # read or created above
    if role.get("Path") != spec.path:
        raise Conflict(f"role {spec.name} exists with path {role.get('Path')}, not {spec.path}")
    if not restore_trust and not trusts(role.get("AssumeRolePolicyDocument") or {}, spec.principals):
        raise Conflict(f"role {spec.name} exists but does not trust {spec.principals[0]}; left untouched")
    return _complete(spec, previous, role, created=False)


def undo_created_role(name: str, *, profile_created: bool) -> None:
    """Best effort: remove a role this request created (and its profile, only if this request made
    it). A failure here is logged; the caller re-raises the error that made the undo necessary."""
    logger.warning("removing the role this request created", role_name=name, profile_created=profile_created)
    try:
        iam.delete_role(name, name if profile_created else None)
    except Exception:
        logger.exception("could not remove the role this request created", role_name=name)


def _complete(
    spec: RoleSpec,
    previous: RoleSpec | None,
    role: dict[str, Any],
    *,
    created: bool,
    made: set[str] | None = None,
) -> RoleOutcome:
    made = set() if made is None else made
    name = spec.name
    changes = ["created" if created else "adopted"]
    if not created:
        current = role.get("AssumeRolePolicyDocument") or {}
        wanted = merged_trust(current, spec.trust_statement, spec.principals)
        if canonical(wanted) != canonical(current):
            iam.update_trust(name, wanted)
            changes.append("trust")
    attached = set() if created else iam.attached_policies(name)
    for arn in spec.policy_arns:
        if arn not in attached:
            iam.attach(name, arn)
            changes.append(f"attach {arn}")
    if previous is not None:
        for arn in set(previous.owned_policy_arns) - set(spec.policy_arns):
            if arn in attached:
                iam.detach(name, arn)
                changes.append(f"detach {arn}")
    if not created:
        current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        if spec.boundary and current_boundary != spec.boundary:
            iam.set_boundary(name, spec.boundary)
            changes.append("boundary")
        elif (
            not spec.boundary
            and previous is not None
            and previous.boundary
            and current_boundary == previous.boundary
        ):
            iam.set_boundary(name, None)
            changes.append("boundary removed")
        current_tags = {t["Key"]: t["Value"] for t in role.get("Tags", [])}
        missing = {k: v for k, v in spec.tags.items() if current_tags.get(k) != v}
        if missing:
            iam.tag(name, missing)
            changes.append("tags")
        if previous is not None:
            stale = {k for k in previous.tags if k not in spec.tags and k in current_tags}
            if stale:
                iam.untag(name, stale)
                changes.append("untag")
    outcome = RoleOutcome(
        name=name, arn=role["Arn"], role_id=role["RoleId"], created=created, changes=changes, made=made
    )
    if spec.instance_profile:
        profile = _ensure_profile(spec, fresh=created, made=made)
        outcome.instance_profile_name = profile["InstanceProfileName"]
        outcome.instance_profile_arn = profile["Arn"]
        if profile.get("changed"):
            changes.append("instance profile")
    elif previous is not None and previous.instance_profile:
        existing = iam.get_instance_profile(name)
        if existing is not None and [r["RoleName"] for r in existing.get("Roles", [])] in ([], [name]):
            iam.remove_from_profile(name, name)
            iam.delete_instance_profile(name)
            changes.append("instance profile removed")
    return outcome


def _ensure_profile(spec: RoleSpec, *, fresh: bool, made: set[str]) -> dict[str, Any]:
    """An instance profile of the role's name holding the role (IAM makes these in separate steps)."""
    name = spec.name
    profile = None if fresh else iam.get_instance_profile(name)
    changed = False
    if profile is None:
        profile = iam.create_instance_profile(name, spec.path)
        if profile is not None:
            made.add("profile")
        else:  # made concurrently, or left over without its role
            profile = iam.get_instance_profile(name)
        if profile is None:
            raise Conflict(f"instance profile {name} could neither be created nor read")
        changed = True
    holders = [r["RoleName"] for r in profile.get("Roles", [])]
    if holders and name not in holders:
        raise Conflict(f"instance profile {name} holds role {holders[0]}, not {name}")
    if name not in holders:
        iam.add_to_profile(name, name)
        changed = True
    return {**profile, "changed": changed}


def converge_grant(spec: GrantSpec, grantee: dict[str, Any]) -> GrantOutcome:
    """grantee is the role as IAM returns it (its RoleId is part of the grant's Name)."""
    name = spec.name(grantee["RoleId"])
    constraints = spec.constraints or None
    grant_id, token = kms.create_grant(
        spec.key_arn, grantee["Arn"], list(spec.operations), name, constraints, spec.retiring_principal
    )
    return GrantOutcome(
        grant_id=grant_id,
        grant_token=token,
        grantee_arn=grantee["Arn"],
        grantee_role_id=grantee["RoleId"],
        name=name,
    )
