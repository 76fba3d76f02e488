"""The scheduled reconcile: every registered object checked against IAM and KMS read in pages
(GetAccountAuthorizationDetails, ListGrants per key), not one call per object; what drifted is
healed through the same transitions as an event's heal."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.convergence import grants
from rolekeeper.domain.drift import Actual
from rolekeeper.domain.records import Kind
from rolekeeper.healing.service import Healer, Outcome, Result

logger = Logger(child=True)


def reconcile_all(healer: Healer) -> list[Result]:
    records = [r for r in healer.objects.all() if r.claims and r.healable and not r.deleting]
    roles: dict[str, dict[str, Any]] = {}
    if records:
        roles = {detail["RoleName"].lower(): detail for detail in iam.role_details()}
    grants_by_key: dict[str, set[str]] = {}
    results = []
    for record in records:
        try:
            grantee = roles.get(record.attrs.get("grantee_role", "")) if record.kind == Kind.GRANT else None
            if grantee is not None and grants.is_stale(record, grantee["RoleId"]):
                # Made for an older incarnation of its grantee (the grant Name carries the RoleId):
                # existing is not enough, it no longer applies to the role.
                changes = grants.reissue_stale(
                    healer.registry,
                    grantee,
                    clock=healer.clock,
                    limit=healer.settings.heal_rate_limit,
                    healable_only=True,
                )
                results.append(
                    Result(Outcome.HEALED, record.key, "grant made for a replaced grantee role", changes)
                )
            elif record.kind == Kind.GRANT:
                key_arn = record.attrs["key_arn"]
                if key_arn not in grants_by_key:
                    grants_by_key[key_arn] = kms.grant_ids(key_arn)
                grant_id = record.attrs["grant_id"]
                results.append(
                    healer.heal_grant(grant_id, exists=grant_id in grants_by_key[key_arn], record=record)
                )
            else:
                name = record.attrs.get("name") or record.key.split("#", 1)[1]
                found = roles.get(name.lower())
                actual = Actual.from_details(found) if found else Actual(role=None)
                results.append(healer.heal_role(name, actual=actual, record=record))
        except Exception as error:  # one object's failure must not stop the others
            logger.exception("reconcile failed for object", key=record.key)
            results.append(Result(Outcome.FAILED, record.key, f"{type(error).__name__}: {error}"))
    return results
