"""Desired state and the converge steps that bring AWS to it; shared by the provisioner and healer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from rolekeeper import iam, kms
from rolekeeper.catalog import LINKED_SERVICES, MARKER_TAG_KEY, MARKER_TAG_VALUE, fixed_blueprint
from rolekeeper.errors import Conflict

logger = Logger(child=True)

# What a role's desired state is made of; the healer repairs only those an event names.
ASPECTS = frozenset({"trust", "policies", "profile", "boundary", "tags"})
# "Not read yet" for a role the caller may already have read (None would mean "absent").
UNREAD: Any = object()


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


def converge_role(
    spec: RoleSpec,
    *,
    added: Iterable[str] = (),
    created_role_id: str | None = None,
    adoption_refusal: Callable[[dict[str, Any]], str | None] | None = None,
    prune: bool = False,
    rollback: bool = True,
    healing: bool = False,
    current: dict[str, Any] | None = UNREAD,
    attached: set[str] | None = None,
    aspects: frozenset[str] = ASPECTS,
) -> RoleOutcome:
    """Bring a regular role to spec (the union of its claims' wants).

    A role rolekeeper created (carrying its marker tag, or the RoleId it recorded when it created
    it: a role of that name made since by someone else is not rolekeeper's) is converged fully; with
    prune, pieces rolekeeper added that spec no longer wants are taken away. A role it did not
    create is adopted only as ownership allows (adoption_refusal explains why not): it gains the
    blueprint's policy and instance profile and nothing else changes. On failure after creating
    the role, what this call made is removed (the healer, which never deletes, passes
    rollback=False and completes the role on its retry instead). healing=True restores the
    blueprint's trust statement on a role that lost it, and never removes anything.

    What the caller already read saves calls: current (the role as GetRole returned it, None for
    absent), attached (its managed policies). aspects limits the work on an existing role to
    those parts of the spec (the healer repairs what one event names); a missing role is always
    made whole."""
    from rolekeeper import ownership

    description = f"Managed by rolekeeper (blueprint {spec.blueprint})"
    role = iam.get_role(spec.name) if current is UNREAD else current
    if role is None:
        trust = {"Version": "2012-10-17", "Statement": [spec.trust_statement]}
        try:
            iam.create_role(
                spec.name,
                spec.path,
                trust,
                description,
                spec.boundary,
                {**spec.tags, MARKER_TAG_KEY: MARKER_TAG_VALUE},
            )
        except ClientError as error:
            if not iam.already_exists(error):
                raise
            # Made concurrently, or this CreateRole succeeded but its answer was lost (a timeout
            # that botocore retried): the marker tag says whether it is rolekeeper's.
            role = iam.wait_for_role(spec.name)
        else:
            made: set[str] = set()
            try:
                role = iam.wait_for_role(spec.name)
                outcome = _complete(spec, role, fresh=True, made=made, added=set(), prune=False)
            except Exception:
                if rollback:
                    undo_created_role(spec.name, profile_created="profile" in made)
                raise
            outcome.added |= {ownership.tag_piece(k) for k in spec.tags}
            if spec.boundary:
                outcome.added.add(ownership.boundary_piece(spec.boundary))
            return outcome
    if role.get("Path") != spec.path:
        raise Conflict(f"role {spec.name} exists with path {role.get('Path')}, not {spec.path}")
    made_here: set[str] = set()

    def complete(ours: bool) -> RoleOutcome:
        try:
            return _complete(
                spec,
                role,
                fresh=False,
                made=made_here,
                added=set(added),
                prune=prune,
                ours=ours,
                attached=attached,
                aspects=aspects,
            )
        except Exception:
            # The role went away (or refused) after this call made its profile: take the profile
            # back, or nothing ever will.
            if "profile" in made_here:
                iam.delete_empty_profile(spec.name)
            raise

    if ownership.owns(role, created_role_id):
        return complete(True)
    if healing and fixed_blueprint(spec.name) is None:
        raise Conflict(f"role {spec.name} was replaced by a role rolekeeper did not create; left untouched")
    if not healing:
        refusal = (adoption_refusal or (lambda r: ownership.adoption_refusal(spec, r, None)))(role)
        if refusal:
            raise Conflict(refusal)
    if not trusts(role.get("AssumeRolePolicyDocument") or {}, spec.principals) and not healing:
        raise Conflict(f"role {spec.name} exists but does not trust {spec.principals[0]}; left untouched")
    return complete(False)


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
    role: dict[str, Any],
    *,
    fresh: bool,
    made: set[str],
    added: set[str],
    prune: bool,
    ours: bool = True,
    attached: set[str] | None = None,
    aspects: frozenset[str] = ASPECTS,
) -> RoleOutcome:
    """Add what spec wants and the role lacks (of aspects; attached: its policies, if known). Trust, boundary and tags change only on a role
    rolekeeper created (ours); on an adopted role the trust policy only ever gains the blueprint's
    statement when it has lost every statement trusting the blueprint's principal."""
    from rolekeeper import ownership

    name = spec.name
    outcome = RoleOutcome(
        name=name,
        arn=role["Arn"],
        role_id=role["RoleId"],
        created=fresh,
        changes=["created" if fresh else ("converged" if ours else "adopted")],
        made=made,
        ours=ours,
    )
    changes = outcome.changes
    current = role.get("AssumeRolePolicyDocument") or {}
    if "trust" not in aspects:
        pass
    elif ours and not fresh:
        wanted = merged_trust(current, spec.trust_statement, spec.principals)
        if canonical(wanted) != canonical(current):
            iam.update_trust(name, wanted)
            changes.append("trust")
    elif not ours and not trusts(current, spec.principals):
        statements = _as_list(current.get("Statement"))
        iam.update_trust(name, {"Version": "2012-10-17", "Statement": [*statements, spec.trust_statement]})
        changes.append("trust statement added")
    if "policies" in aspects:
        if attached is None:
            attached = set() if fresh else iam.attached_policies(name)
        for arn in spec.policy_arns:
            if arn not in attached:
                iam.attach(name, arn)
                outcome.added.add(ownership.policy_piece(arn))
                changes.append(f"attach {arn}")
    attached = attached or set()
    current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    current_tags = {t["Key"].lower(): t["Value"] for t in role.get("Tags", [])}
    if ours and not fresh:
        # Only on a role rolekeeper created: an adopted role's boundary and tags are its owner's.
        if "boundary" in aspects and spec.boundary and current_boundary != spec.boundary:
            iam.set_boundary(name, spec.boundary)
            outcome.added.add(ownership.boundary_piece(spec.boundary))
            changes.append("boundary")
        missing = {k: v for k, v in spec.tags.items() if current_tags.get(k.lower()) != v}
        if missing and "tags" in aspects:
            # The marker rides along: IAM lets rolekeeper tag a prefixed role only with it (template.yaml).
            iam.tag(name, {**missing, MARKER_TAG_KEY: MARKER_TAG_VALUE})
            outcome.added |= {ownership.tag_piece(k) for k in missing}
            changes.append("tags")
    if spec.instance_profile and "profile" in aspects:
        profile = _ensure_profile(spec, fresh=fresh, made=made)
        outcome.instance_profile_name = profile["InstanceProfileName"]
        outcome.instance_profile_arn = profile["Arn"]
        # A profile this call made, or the profile of a role rolekeeper created: made by an earlier
        # attempt whose answer was lost (EntityAlreadyExists on the retry), or by a concurrent
        # request of rolekeeper's; either way it goes with the role.
        if "profile" in made or ours:
            outcome.added.add(ownership.PROFILE)
        if profile.get("changed"):
            changes.append("instance profile")
    if prune:
        _take_away(spec, role, ownership.removable(added, spec), outcome, attached)
    return outcome


def prune_role(spec: RoleSpec, *, added: Iterable[str], created_role_id: str | None) -> RoleOutcome | None:
    """Take away what rolekeeper added and spec no longer wants; never adds, never refuses (a
    released claim must not fail on what others did to the role). None: the role is gone."""
    from rolekeeper import ownership

    role = iam.get_role(spec.name)
    if role is None:
        return None
    ours = ownership.owns(role, created_role_id)
    outcome = RoleOutcome(
        name=spec.name, arn=role["Arn"], role_id=role["RoleId"], created=False, changes=[], ours=ours
    )
    pieces = ownership.removable(added, spec)
    if not ours:  # on an adopted role rolekeeper only ever added policies and the profile
        pieces = {p for p in pieces if p == ownership.PROFILE or p.startswith("policy:")}
    attached = iam.attached_policies(spec.name) if any(p.startswith("policy:") for p in pieces) else set()
    _take_away(spec, role, pieces, outcome, attached)
    return outcome


def _take_away(
    spec: RoleSpec, role: dict[str, Any], pieces: set[str], outcome: RoleOutcome, attached: set[str]
) -> None:
    """Remove pieces rolekeeper added that no claim wants any more (and only those). role is as
    IAM returned it before this call changed anything; attached, its policies."""
    from rolekeeper import ownership

    name = spec.name
    current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    tag_keys = {t["Key"].lower(): t["Key"] for t in role.get("Tags", [])}
    for piece in sorted(pieces):
        kind, _, value = piece.partition(":")
        if kind == "policy" and value in attached:
            iam.detach(name, value)
            outcome.changes.append(f"detach {value}")
        elif kind == "tag" and value in tag_keys:
            iam.untag(name, {tag_keys[value]})
            outcome.changes.append(f"untag {value}")
        elif kind == "boundary" and current_boundary == value and spec.boundary is None:
            iam.set_boundary(name, None)
            outcome.changes.append("boundary removed")
        elif piece == ownership.PROFILE:
            existing = iam.get_instance_profile(name)
            if existing is not None and [r["RoleName"] for r in existing.get("Roles", [])] in ([], [name]):
                iam.remove_from_profile(name, name)
                iam.delete_instance_profile(name)
                outcome.changes.append("instance profile removed")
        outcome.removed.add(piece)


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
