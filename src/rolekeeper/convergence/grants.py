"""Grants made for a service-linked role's unique id: when the role is recreated (a new RoleId),
the grants made for the old id no longer apply to it and are re-issued."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import kms
from rolekeeper.aws.registry import Registry
from rolekeeper.convergence.outcomes import GrantOutcome
from rolekeeper.domain.errors import Changed
from rolekeeper.domain.records import Record
from rolekeeper.domain.specs import GrantSpec

logger = Logger(child=True)


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


def is_stale(grant: Record, role_id: str) -> bool:
    """The grant was made for another incarnation of its grantee role (its Name carries the id)."""
    return grant.attrs.get("grantee_role_id", role_id) != role_id


def reissue_stale_grants(
    registry: Registry, grantee: dict[str, Any], *, healable_only: bool = False
) -> list[str]:
    """Re-issue every claimed grant naming the grantee role (RoleName, Arn, RoleId as IAM has it
    now) that was made for an older RoleId, and revoke the stale grant: it is of no use to
    anyone, and another record naming it gets the same new grant (by Name). The record is written
    only as it was read: one the provisioner replaced or released meanwhile is left to it.
    healable_only: the healer's call (claims with Heal on). Returns what was done."""
    done = []
    for grant in registry.grants_naming(grantee["RoleName"]):
        if (
            not grant.claims
            or (healable_only and not grant.healable)
            or not is_stale(grant, grantee["RoleId"])
        ):
            continue
        spec = GrantSpec.from_dict(grant.desired)
        stale = grant.attrs.get("grant_id", "")
        outcome = converge_grant(spec, grantee)
        if stale and stale != outcome.grant_id:
            kms.revoke_grant(spec.key_arn, stale)
        # Recorded after the revoke: a retry still knows the stale id, and CreateGrant's Name
        # idempotency hands it the same new grant.
        try:
            registry.commit(
                grant.key,
                "grant",
                grant.desired,
                read=grant,
                created_now=True,
                attrs={
                    **grant.attrs,
                    "grant_id": outcome.grant_id,
                    "grantee_arn": outcome.grantee_arn,
                    "grantee_role_id": outcome.grantee_role_id,
                },
            )
        except Changed:
            logger.info("grant record changed meanwhile; left to its writer", key=grant.key)
            continue
        done.append(f"grant re-issued on {spec.key_arn}")
    return done
