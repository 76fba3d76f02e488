"""Who may change what on a role. The provisioner and the healer both consult these rules:

- each claim stores what it asked for (its wants: a RoleSpec);
- an object's desired state is the union of its claims' wants, never the last writer's;
- rolekeeper records each piece it added (a policy it attached, the instance profile it made, a
  tag or boundary it set), and only those pieces may ever be taken away, and only when no
  remaining claim wants them;
- a role rolekeeper did not create is adopted only under a documented fixed name, bound to its
  blueprint, and only gains what the blueprint needs: its boundary, tags, trust statements and
  conditions, policies and instance profiles are never replaced or removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from rolekeeper.domain.catalog import BLUEPRINTS, MARKER_TAG_KEY, MARKER_TAG_VALUE, Scope, fixed_blueprint
from rolekeeper.domain.records import Claim, Record
from rolekeeper.domain.specs import RoleSpec
from rolekeeper.domain.trust import trusts

PROFILE = "profile"


def policy_piece(arn: str) -> str:
    return f"policy:{arn}"


def tag_piece(key: str) -> str:
    return f"tag:{key.lower()}"  # IAM tag keys are unique case-insensitively


def boundary_piece(arn: str) -> str:
    return f"boundary:{arn}"


def pieces_of(spec: RoleSpec) -> set[str]:
    """Every piece a spec asks for (what a role made from it carries because of rolekeeper)."""
    pieces = {policy_piece(arn) for arn in spec.policy_arns} | {tag_piece(k) for k in spec.tags}
    if spec.boundary:
        pieces.add(boundary_piece(spec.boundary))
    if spec.instance_profile:
        pieces.add(PROFILE)
    return pieces


def wants_of(record: Record, claims: list[Claim] | None = None) -> list[RoleSpec]:
    """What the record's claims (or the given ones) ask for, as specs (a claim written before
    claims stored their wants asks for the object's recorded desired state)."""
    return [RoleSpec.from_dict(w) for w in record.wants(claims) if w]


def other_wants(record: Record | None, claim_sk: str) -> list[RoleSpec]:
    """What every claim on the role other than this one asked for."""
    if record is None:
        return []
    return wants_of(record, [c for c in record.claims if c.sk != claim_sk])


def desired_of(record: Record) -> RoleSpec:
    """The role's desired state: the union of what its claims asked for (a record with no claim
    left wants nothing: callers ask only of claimed records)."""
    wants = wants_of(record)
    if not wants:
        raise ValueError(f"{record.key} has no claim: nothing is desired of it")
    return union(wants)


def created_role_id(record: Record | None) -> str | None:
    """The RoleId of the role rolekeeper created under this record's name, if it did (records
    written before created_role_id was kept: their role_id)."""
    if record is None or not record.created:
        return None
    return record.attrs.get("created_role_id") or record.attrs.get("role_id")


def owns(role: dict[str, Any], known_role_id: str | None) -> bool:
    """Whether this role (as IAM returns it) is the one rolekeeper created: it carries the marker
    tag, or it is the RoleId rolekeeper recorded when it created it."""
    return is_marked(role) or (known_role_id is not None and role.get("RoleId") == known_role_id)


def is_ours(record: Record | None, role: dict[str, Any]) -> bool:
    return owns(role, created_role_id(record))


def added_of(record: Record | None) -> set[str]:
    """The pieces rolekeeper added to the role. A record written before rolekeeper kept them:
    everything on a role it created counts as its own, nothing on a role it adopted."""
    if record is None:
        return set()
    if record.added is not None:
        return set(record.added)
    if not record.created or not record.legacy_desired:
        return set()
    return pieces_of(RoleSpec.from_dict(record.legacy_desired))


def own_statements(spec: RoleSpec, role_arn: str | None) -> tuple[dict[str, Any], ...]:
    """Every trust statement rolekeeper writes for the spec's blueprint in the role's account
    (with and without confused-deputy conditions): the ones it may replace on a role it created."""
    blueprint = BLUEPRINTS.get(spec.blueprint)
    if blueprint is None or role_arn is None:
        return ()
    scope = Scope.from_arn(role_arn)
    return tuple(blueprint.trust_statement(scope, protection) for protection in (True, False))


def boundary_replaceable(current: str | None, added: Iterable[str]) -> bool:
    """Whether rolekeeper may set a role's boundary: none is set, or the one set is one rolekeeper
    added (a boundary an administrator set is theirs)."""
    return current is None or boundary_piece(current) in set(added)


BLUEPRINT_DESCRIPTION = "Managed by rolekeeper (blueprint {})"


def blueprint_change(name: str, made_for: str | None, wanted: str) -> str | None:
    """The Reason a role made for one blueprint cannot be claimed for another (a different trust
    and policies: a replacement, never a union of both), or None."""
    if made_for is None or made_for == wanted:
        return None
    return (
        f"Blueprint: role {name} was made for Blueprint {made_for} and a role keeps its blueprint: "
        f"give the resource a new RoleName for Blueprint {wanted} (CloudFormation then replaces it)"
    )


def made_for(role: dict[str, Any]) -> str | None:
    """The blueprint a role rolekeeper created was made for, as its Description says."""
    description = str(role.get("Description") or "")
    prefix, _, suffix = BLUEPRINT_DESCRIPTION.partition("{}")
    if description.startswith(prefix) and description.endswith(suffix):
        return description[len(prefix) : len(description) - len(suffix)] or None
    return None


def union(wants: Sequence[RoleSpec]) -> RoleSpec:
    """The desired state: every claim's policies, tags and instance profile; the trust statement
    with confused-deputy conditions if any claim asks for them (the stricter one wins)."""
    first = wants[0]
    statement = next((w.trust_statement for w in wants if "Condition" in w.trust_statement), None)
    tags: dict[str, str] = {}
    for want in wants:
        tags.update(want.tags)
    return replace(
        first,
        trust_statement=statement or first.trust_statement,
        policy_arns=tuple(dict.fromkeys(arn for w in wants for arn in w.policy_arns)),
        owned_policy_arns=tuple(dict.fromkeys(arn for w in wants for arn in w.owned_policy_arns)),
        boundary=next((w.boundary for w in wants if w.boundary), None),
        tags=tags,
        instance_profile=any(w.instance_profile for w in wants),
    )


def wanting_nothing(spec: RoleSpec) -> RoleSpec:
    """The role with nothing wanted of it (every piece rolekeeper added is removable)."""
    return replace(spec, policy_arns=(), owned_policy_arns=(), boundary=None, tags={}, instance_profile=False)


def conflict(spec: RoleSpec, others: Sequence[RoleSpec]) -> str | None:
    """Why this claim's wants cannot join the other claims on the same role (a Reason), or None."""
    name = spec.name
    for other in others:
        if other.blueprint != spec.blueprint:
            return f"Blueprint: role {name} is held by another stack as {other.blueprint}; use that blueprint"
        if other.path != spec.path:
            return f"Path: role {name} is held by another stack at path {other.path}; use that path"
        if other.boundary != spec.boundary:
            return (
                f"PermissionsBoundary: another stack holds role {name} with "
                f"{other.boundary or 'no boundary'}; a role has one boundary, so use the same"
            )
        theirs = {k.lower(): (k, v) for k, v in other.tags.items()}
        for key, value in spec.tags.items():
            if key.lower() in theirs and theirs[key.lower()][1] != value:
                return f"Tags: another stack holds role {name} with {key}={theirs[key.lower()][1]}; use the same value"
    return None


def is_marked(role: dict[str, Any]) -> bool:
    """Carries rolekeeper's marker tag (set in the CreateRole call that made it)."""
    return any(
        t.get("Key") == MARKER_TAG_KEY and t.get("Value") == MARKER_TAG_VALUE for t in role.get("Tags", [])
    )


def adoption_refusal(spec: RoleSpec, role: dict[str, Any], explicit_protection: bool | None) -> str | None:
    """Why a role rolekeeper did not create cannot be adopted for this request, or None.
    Adoption only adds what the blueprint needs; anything that would replace or remove what the
    role's owner set is refused, naming the property."""
    name = spec.name
    bound = fixed_blueprint(name)
    if bound is None:
        return (
            f"RoleName: role {name} exists and was not created by rolekeeper; only the documented "
            "names (ecsInstanceRole, AWSBatchServiceRole, the Spot Fleet role names) are adopted. "
            "Choose another RoleName"
        )
    if bound != spec.blueprint:
        return f"Blueprint: {name} is the documented name for Blueprint {bound}, not {spec.blueprint}"
    current = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    if spec.boundary and spec.boundary != current:
        return (
            f"PermissionsBoundary: role {name} was not created by rolekeeper; its boundary is left as it "
            "is. Remove PermissionsBoundary"
        )
    tags = {t["Key"].lower(): t["Value"] for t in role.get("Tags", [])}
    changed = [k for k, v in spec.tags.items() if tags.get(k.lower()) != v]
    if changed:
        return (
            f"Tags: role {name} was not created by rolekeeper; its tags are left as they are "
            f"(would change {changed[0]}). Remove Tags"
        )
    if explicit_protection and "Condition" in spec.trust_statement:
        principal = spec.principals
        document = role.get("AssumeRolePolicyDocument") or {}
        statements = document.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        conditioned = [
            s
            for s in statements
            if trusts({"Statement": [s]}, principal)
            and {"aws:SourceAccount", "aws:SourceArn"}
            <= {k for c in (s.get("Condition") or {}).values() if isinstance(c, dict) for k in c}
        ]
        if not conditioned:
            return (
                f"ConfusedDeputyProtection: role {name} was not created by rolekeeper; its trust policy is "
                "left as it is. Add the aws:SourceAccount and aws:SourceArn conditions yourself, or remove "
                "the property"
            )
    return None


def removable(added: Iterable[str], desired: RoleSpec | None) -> set[str]:
    """Pieces rolekeeper added that no remaining claim wants: the only ones it may take away."""
    wanted = pieces_of(desired) if desired is not None else set()
    return {piece for piece in added if piece not in wanted}
