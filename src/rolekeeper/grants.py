"""Grants made for a service-linked role's unique id: when the role is recreated (a new RoleId),
the grants made for the old id no longer apply to it and are re-issued."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from rolekeeper import iam, kms
from rolekeeper.reconcile import GrantSpec, converge_grant
from rolekeeper.registry import Changed, Record, Registry

logger = Logger(child=True)


def is_stale(grant: Record, role_id: str) -> bool:
    """The grant was made for another incarnation of its grantee role (its Name carries the id)."""
    return grant.attrs.get("grantee_role_id", role_id) != role_id


def reissue_stale_grants(registry: Registry, role_name: str, *, healable_only: bool = False) -> list[str]:
    """Re-issue every claimed grant naming role_name that was made for an older RoleId; the stale
    grant is revoked unless another record still references it. Returns what was done."""
    grantee = iam.get_role(role_name)
    if grantee is None:
        return []
    done = []
    for grant in registry.grants_naming(role_name):
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
            if any(other.key != grant.key for other in registry.grants_by_id(stale)):
                logger.info("stale grant still referenced by another record; kept", grant_id=stale)
            else:
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
