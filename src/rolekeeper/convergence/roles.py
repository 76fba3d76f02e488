"""Apply a regular role's desired state (the union of its claims' wants) to IAM.

Three steps, each of one kind, recording what it did in a transition's `Made`:
- ensure_role (the provisioner): create the role, or adopt it as ownership allows, and add what
  the spec wants and the role lacks; never removes.
- repair_role (the healer): create a missing role, put back what the spec wants on a role
  rolekeeper keeps (including a lost trust statement); never removes, never adopts.
- prune_role: take away pieces rolekeeper added that the spec no longer wants; never adds.

A role is rolekeeper's only if it carries the marker tag or the RoleId recorded when rolekeeper
created it (ownership.owns): a role of that name made since by someone else is not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam
from rolekeeper.convergence.outcomes import NOT_NEEDED, UNREAD, Made, RoleOutcome
from rolekeeper.domain import ownership
from rolekeeper.domain.catalog import MARKER_TAG_KEY, MARKER_TAG_VALUE, fixed_blueprint
from rolekeeper.domain.drift import ASPECTS
from rolekeeper.domain.errors import Conflict
from rolekeeper.domain.specs import RoleSpec
from rolekeeper.domain.trust import as_list, canonical, merged_trust, trusts
from rolekeeper.retry import Clock

logger = Logger(child=True)


def ensure_role(
    spec: RoleSpec,
    made: Made,
    *,
    clock: Clock,
    created_role_id: str | None,
    adoption_refusal: Callable[[dict[str, Any]], str | None],
    added: Collection[str] = (),
    current: dict[str, Any] | None = UNREAD,
) -> RoleOutcome:
    """Create the role, or adopt the existing one (adoption_refusal explains why not), and add
    what spec wants. A role rolekeeper created is converged fully (its trust statement, tag
    values, and a boundary where none is or rolekeeper set the one there: added, the pieces it
    added); an adopted one only gains the blueprint's policy, its instance profile and, if it
    trusts no one the blueprint needs, the blueprint's trust statement. A role made for another
    blueprint is refused. current: the role as the caller just read it."""
    role = iam.get_role(spec.name) if current is UNREAD else current
    if role is None:
        role, fresh = _create(spec, made, clock)
        if fresh:
            return _complete(spec, role, made, fresh=True, ours=True)
    _same_path(spec, role)
    if ownership.owns(role, created_role_id):
        if problem := ownership.blueprint_change(spec.name, ownership.made_for(role), spec.blueprint):
            raise Conflict(problem)
        return _complete(spec, role, made, fresh=False, ours=True, added=added)
    if refusal := adoption_refusal(role):
        raise Conflict(refusal)
    if not trusts(role.get("AssumeRolePolicyDocument") or {}, spec.principals):
        raise Conflict(f"role {spec.name} exists but does not trust {spec.principals[0]}; left untouched")
    return _complete(spec, role, made, fresh=False, ours=False)


def repair_role(
    spec: RoleSpec,
    made: Made,
    *,
    clock: Clock,
    created_role_id: str | None,
    current: dict[str, Any] | None = UNREAD,
    attached: set[str] | None = None,
    aspects: frozenset[str] = ASPECTS,
) -> RoleOutcome:
    """Put back what spec wants (of aspects, on an existing role; a missing role is made whole).
    What the caller already read saves calls: current (the role as GetRole returned it, None for
    absent), attached (its managed policies)."""
    role = iam.get_role(spec.name) if current is UNREAD else current
    if role is None:
        role, fresh = _create(spec, made, clock)
        if fresh:
            return _complete(spec, role, made, fresh=True, ours=True)
        attached, aspects = None, ASPECTS  # made meanwhile by someone else: read it whole
    _same_path(spec, role)
    if ownership.owns(role, created_role_id):
        return _complete(
            spec, role, made, fresh=False, ours=True, attached=attached, aspects=aspects, restore_only=True
        )
    if fixed_blueprint(spec.name) is None:
        raise Conflict(f"role {spec.name} was replaced by a role rolekeeper did not create; left untouched")
    return _complete(
        spec, role, made, fresh=False, ours=False, attached=attached, aspects=aspects, restore_only=True
    )


def prune_role(
    spec: RoleSpec,
    made: Made,
    *,
    added: Iterable[str],
    created_role_id: str | None,
    role: dict[str, Any] | None = UNREAD,
    attached: set[str] | None = None,
) -> RoleOutcome | None:
    """Take away what rolekeeper added and spec no longer wants (on a role rolekeeper created,
    also the confused-deputy conditions of its own statement when spec no longer asks for them);
    never refuses (a released claim must not fail on what others did to the role). None: the role
    is gone. role: as read, UNREAD (read here) or NOT_NEEDED (only policies and the profile go)."""
    role = iam.get_role(spec.name) if role is UNREAD else role
    if role is None:
        return None
    if role is NOT_NEEDED:  # the caller knows only policies and the profile go (no trust change)
        role, ours = {}, False
    else:
        ours = ownership.owns(role, created_role_id)
    outcome = RoleOutcome(name=spec.name, arn=role.get("Arn", ""), role_id=role.get("RoleId", ""), ours=ours)
    if ours and (trust := _own_statement_replaced(spec, role)) is not None:
        iam.update_trust(spec.name, trust)
        outcome.changes.append("trust")
    pieces = ownership.removable(added, spec)
    if not ours:  # on an adopted role rolekeeper only ever added policies and the profile
        pieces = {p for p in pieces if p == ownership.PROFILE or p.startswith("policy:")}
    name = spec.name
    current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    tag_keys = {t["Key"].lower(): t["Key"] for t in role.get("Tags", [])}
    for piece in sorted(pieces):
        kind, _, value = piece.partition(":")
        if kind == "policy" and (attached is None or value in attached):
            # Not listed first: DetachRolePolicy answers NoSuchEntity for a policy not attached.
            if iam.detach(name, value):
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
        made.take_away({piece})
    return outcome


def _own_statement_replaced(spec: RoleSpec, role: dict[str, Any]) -> dict[str, Any] | None:
    """The role's trust policy with rolekeeper's own other variant of the blueprint's statement
    (with or without the confused-deputy conditions) replaced by spec's, or None: nothing to do."""
    own = ownership.own_statements(spec, role.get("Arn"))
    others = [canonical(s) for s in own if canonical(s) != canonical(spec.trust_statement)]
    current = role.get("AssumeRolePolicyDocument") or {}
    if not any(canonical(s) in others for s in as_list(current.get("Statement"))):
        return None
    wanted = merged_trust(current, spec.trust_statement, spec.principals, own)
    return wanted if canonical(wanted) != canonical(current) else None


def delete_created_role(name: str, *, profile: bool) -> None:
    """Remove a role a writer created (and its instance profile, only if the writer made it)."""
    logger.warning("removing the role this writer created", role_name=name, profile_created=profile)
    iam.delete_role(name, name if profile else None)


# --- the steps they share ---------------------------------------------------------------------


def _create(spec: RoleSpec, made: Made, clock: Clock) -> tuple[dict[str, Any], bool]:
    """CreateRole with the blueprint's trust statement, the boundary and tags (and the marker).
    Returns the role and whether this call created it."""
    trust = {"Version": "2012-10-17", "Statement": [spec.trust_statement]}
    created = iam.create_role(
        spec.name,
        spec.path,
        trust,
        ownership.BLUEPRINT_DESCRIPTION.format(spec.blueprint),
        spec.boundary,
        {**spec.tags, MARKER_TAG_KEY: MARKER_TAG_VALUE},
    )
    if not created:
        # Made concurrently, or this CreateRole succeeded but its answer was lost: the marker tag
        # says whether it is rolekeeper's.
        return iam.wait_for_role(spec.name, clock), False
    role = iam.wait_for_role(spec.name, clock)
    made.created = True
    made.add({ownership.tag_piece(k) for k in spec.tags})
    if spec.boundary:
        made.add({ownership.boundary_piece(spec.boundary)})
    return role, True


def _same_path(spec: RoleSpec, role: dict[str, Any]) -> None:
    if role.get("Path") != spec.path:
        raise Conflict(f"role {spec.name} exists with path {role.get('Path')}, not {spec.path}")


def _complete(
    spec: RoleSpec,
    role: dict[str, Any],
    made: Made,
    *,
    fresh: bool,
    ours: bool,
    attached: set[str] | None = None,
    aspects: frozenset[str] = ASPECTS,
    added: Collection[str] = (),
    restore_only: bool = False,
) -> RoleOutcome:
    """Add what spec wants and the role lacks (of aspects; attached: its policies, if known).
    Trust, boundary and tags change only on a role rolekeeper created (ours), and never lose what
    an administrator added: conditions on the blueprint's statement, a boundary rolekeeper did not
    set (added: the pieces it did), and (restore_only, the healer) tag values changed since. An
    adopted role's trust policy only ever gains the blueprint's statement, when it has lost every
    statement trusting the blueprint's principal."""
    name = spec.name
    outcome = RoleOutcome(
        name=name,
        arn=role["Arn"],
        role_id=role["RoleId"],
        changes=["created" if fresh else ("converged" if ours else "adopted")],
        ours=ours,
        role=role,
    )
    changes = outcome.changes
    current = role.get("AssumeRolePolicyDocument") or {}
    if "trust" in aspects and not fresh:
        if ours:
            own = ownership.own_statements(spec, role["Arn"])
            wanted = merged_trust(current, spec.trust_statement, spec.principals, own)
            if canonical(wanted) != canonical(current):
                iam.update_trust(name, wanted)
                changes.append("trust")
        elif not trusts(current, spec.principals):
            statements = as_list(current.get("Statement"))
            iam.update_trust(
                name, {"Version": "2012-10-17", "Statement": [*statements, spec.trust_statement]}
            )
            changes.append("trust statement added")
    if "policies" in aspects:
        if attached is None:
            attached = set() if fresh else iam.attached_policies(name)
        for arn in spec.policy_arns:
            if arn not in attached:
                iam.attach(name, arn)
                made.add({ownership.policy_piece(arn)})
                changes.append(f"attach {arn}")
        outcome.attached = attached
    if ours and not fresh:
        # Only on a role rolekeeper created: an adopted role's boundary and tags are its owner's.
        current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        replaceable = (
            current_boundary is None
            if restore_only
            else ownership.boundary_replaceable(current_boundary, added)
        )
        if "boundary" in aspects and spec.boundary and current_boundary != spec.boundary and replaceable:
            iam.set_boundary(name, spec.boundary)
            made.add({ownership.boundary_piece(spec.boundary)})
            changes.append("boundary")
        current_tags = {t["Key"].lower(): t["Value"] for t in role.get("Tags", [])}
        missing = {
            k: v
            for k, v in spec.tags.items()
            if k.lower() not in current_tags or (not restore_only and current_tags[k.lower()] != v)
        }
        if missing and "tags" in aspects:
            # The marker rides along: IAM lets rolekeeper tag a prefixed role only with it (template.yaml).
            iam.tag(name, {**missing, MARKER_TAG_KEY: MARKER_TAG_VALUE})
            made.add({ownership.tag_piece(k) for k in missing})
            changes.append("tags")
    if spec.instance_profile and "profile" in aspects:
        try:
            profile = _ensure_profile(spec, made, fresh=fresh)
        except Exception:
            # The role went away (or refused) after this step made its profile: take the profile
            # back, or nothing ever will.
            if made.profile and not fresh:
                iam.delete_empty_profile(name)
            raise
        outcome.instance_profile_name = profile["InstanceProfileName"]
        outcome.instance_profile_arn = profile["Arn"]
        # A profile this writer made, or the profile of a role rolekeeper created (made by an
        # earlier attempt whose answer was lost, or by a concurrent request of rolekeeper's):
        # either way it goes with the role.
        if made.profile or ours:
            made.add({ownership.PROFILE})
        if profile.get("changed"):
            changes.append("instance profile")
    return outcome


def _ensure_profile(spec: RoleSpec, made: Made, *, fresh: bool) -> dict[str, Any]:
    """An instance profile of the role's name holding the role (IAM makes these in separate steps)."""
    name = spec.name
    profile = None if fresh else iam.get_instance_profile(name)
    changed = False
    if profile is None:
        profile = iam.create_instance_profile(name, spec.path)
        if profile is not None:
            made.profile = True
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
