"""KMS grants for AWSServiceRoleForEC2SpotFleet: create one (CreateGrant is idempotent by Name
and parameters), and re-issue a registered grant for the grantee role as it is now.

A grant is made for one incarnation of its grantee role (its Name carries the role's unique id):
when the role is recreated (a new RoleId), grants made for the old id no longer apply and are
re-issued; a retired or revoked grant is re-issued the same way. A re-issue is a heal of the
grant object: it runs under the object's heal lease (so a stack's Delete of the grant waits for
it), writes the new grant id fenced by the version it read and its lease, and when that write is
refused (the stack let the grant go meanwhile) revokes the grant it made.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import kms
from rolekeeper.aws.registry import Change, Fence, Objects, Registry
from rolekeeper.aws.registry.leases import HEAL_LEASE_SECONDS
from rolekeeper.convergence.outcomes import GrantOutcome, Made
from rolekeeper.convergence.transition import Plan, reading, run
from rolekeeper.domain.records import Kind, Record, grant_key
from rolekeeper.domain.specs import GrantSpec
from rolekeeper.retry import Clock

logger = Logger(child=True)


def create_grant(spec: GrantSpec, grantee: dict[str, Any], made: Made) -> GrantOutcome:
    """grantee is the role as IAM returns it (its RoleId is part of the grant's Name)."""
    name = spec.name(grantee["RoleId"])
    grant_id, token = kms.create_grant(
        spec.key_arn,
        grantee["Arn"],
        list(spec.operations),
        name,
        spec.constraints or None,
        spec.retiring_principal,
    )
    if grant_id not in made.grants:
        made.grants.append(grant_id)
    return GrantOutcome(
        grant_id=grant_id,
        grant_token=token,
        grantee_arn=grantee["Arn"],
        grantee_role_id=grantee["RoleId"],
        name=name,
    )


def grant_attrs(spec: GrantSpec, outcome: GrantOutcome) -> dict[str, str]:
    """What the registry keeps of a grant (grantee_role and grant_id are the indexes' keys)."""
    return {
        "key_arn": spec.key_arn,
        "grant_id": outcome.grant_id,
        "grant_name": outcome.name,
        "grantee_arn": outcome.grantee_arn,
        "grantee_role": spec.grantee_role_name.lower(),
        "grantee_role_id": outcome.grantee_role_id,
    }


def is_stale(grant: Record, role_id: str) -> bool:
    """The grant was made for another incarnation of its grantee role (its Name carries the id)."""
    return grant.attrs.get("grantee_role_id", role_id) != role_id


def held_by_another(objects: Objects, key_arn: str, grant_id: str, *, besides: str) -> bool:
    """Whether a record other than `besides` names this grant as its current one. The record a
    grant is most often shared with is the one keyed by the grant itself (an Update that returned
    it as a new physical id), read consistently; the index adds candidates it may not list yet."""
    direct = grant_key(f"{key_arn}#{grant_id}")
    if (
        direct != besides
        and (found := objects.read(direct)) is not None
        and found.attrs.get("grant_id") == grant_id
    ):
        return True
    return bool(objects.grants_by_id(grant_id, besides=besides))


def revoke_unheld(objects: Objects, key_arn: str, grant_ids: list[str], *, besides: str) -> None:
    """Take back grants a writer made that no record holds (best effort, logged)."""
    for grant_id in grant_ids:
        try:
            if held_by_another(objects, key_arn, grant_id, besides=besides):
                logger.info("grant held by another record; kept", grant_id=grant_id)
                continue
            kms.revoke_grant(key_arn, grant_id)
            logger.warning("grant this writer made revoked (its record was not written)", grant_id=grant_id)
        except Exception:
            logger.exception("could not revoke the grant this writer made", grant_id=grant_id)


@dataclass
class Reissued:
    key: str
    grant_id: str = ""  # the new grant ("" when nothing was written)
    replaced: str = ""  # the grant it replaced
    why_not: str = ""  # why nothing was written (the record was let go meanwhile)
    changes: list[str] = field(default_factory=list)


def reissue(
    objects: Objects,
    key: str,
    grantee: dict[str, Any],
    *,
    token: str,
    clock: Clock,
    first: Record | None = None,
    gone: str = "",
) -> Reissued:
    """Re-issue the grant recorded under key for grantee (RoleName, Arn, RoleId as IAM has it
    now), while holding the object's heal lease (token): create the grant, revoke the one it
    replaces (unless it is `gone`: the grant id KMS said is retired or revoked), write the new
    id; the lease goes with that write. When the record was let go meanwhile (released, being
    deleted, the lease lost), the grant it made is revoked. first: the record as read under the
    lease, if the caller read it."""
    done = Reissued(key)

    def attempt(record: Record | None, made: Made) -> Plan[Reissued]:
        if record is None or record.deleting or not record.claims or record.lease.by != token:
            done.why_not = (
                "no longer claimed" if record is None or not record.claims else "deleting or lease lost"
            )
            done.grant_id = ""
            return Plan(done, abandon=True)
        spec = GrantSpec.from_dict(record.spec())
        stale = record.attrs.get("grant_id", "")
        outcome = create_grant(spec, grantee, made)
        if stale and stale not in (outcome.grant_id, gone):
            # Of no use to anyone: made for another incarnation of the grantee, or retired.
            kms.revoke_grant(spec.key_arn, stale)
        done.grant_id, done.replaced = outcome.grant_id, stale
        done.changes = [f"grant re-issued on {spec.key_arn}"]
        change = Change(
            kind=Kind.GRANT,
            attrs=grant_attrs(spec, outcome),
            created=True,
            healed_at=clock.now(),
            end_lease=True,
        )
        return Plan(done, Fence(record, exact=True, lease=token, claimed=True), change)

    def undo(made: Made) -> None:
        key_arn = key.removeprefix("GRANT#").split("#", 1)[0]
        revoke_unheld(objects, key_arn, made.grants, besides="")

    return run(
        objects, key, read=reading(objects, key, first), attempt=attempt, undo=undo, clock=clock, what=key
    )


def reissue_stale(
    registry: Registry, grantee: dict[str, Any], *, clock: Clock, limit: int, healable_only: bool
) -> list[str]:
    """The grantee role (RoleName, Arn, RoleId as IAM has it now) was made anew: every claimed
    grant made for an older RoleId is re-issued, each under its heal lease (one a heal holds right
    now is left to that heal). healable_only: the healer's call (claims with Heal on)."""
    changes: list[str] = []
    for record in registry.objects.grants_naming(grantee["RoleName"]):
        if (
            not record.claims
            or (healable_only and not record.healable)
            or not is_stale(record, grantee["RoleId"])
        ):
            continue
        token = uuid.uuid4().hex
        lease = registry.leases.take(
            record.key, token=token, now=clock.now(), seconds=HEAL_LEASE_SECONDS, limit=limit
        )
        if not lease.taken:
            logger.info("stale grant left to whoever holds it", key=record.key, lease=str(lease.state))
            continue
        try:
            done = reissue(registry.objects, record.key, grantee, token=token, clock=clock)
        except Exception:
            registry.leases.give_back(record.key, token=token)
            raise
        if not done.grant_id:  # not written: the lease did not go with the write
            registry.leases.give_back(record.key, token=token)
        changes += done.changes
    return changes
