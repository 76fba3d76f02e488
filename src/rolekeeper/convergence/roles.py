"""Bring a regular role to its desired state (the union of its claims' wants), prune what no
claim wants any more, and undo a role a request created."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from rolekeeper.aws import iam
from rolekeeper.convergence.outcomes import UNREAD, RoleOutcome
from rolekeeper.domain import ownership
from rolekeeper.domain.catalog import MARKER_TAG_KEY, MARKER_TAG_VALUE, fixed_blueprint
from rolekeeper.domain.drift import ASPECTS
from rolekeeper.domain.errors import Conflict
from rolekeeper.domain.specs import RoleSpec
from rolekeeper.domain.trust import as_list, canonical, merged_trust, trusts

logger = Logger(child=True)


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
        statements = as_list(current.get("Statement"))
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
