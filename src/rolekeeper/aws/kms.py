"""Idempotent KMS grant operations."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from rolekeeper.aws import clients as aws
from rolekeeper.domain.errors import InvalidRequest


def describe_key(key_id: str) -> dict[str, Any]:
    try:
        return aws.kms(key_id).describe_key(KeyId=key_id)["KeyMetadata"]  # type: ignore[return-value]
    except ClientError as error:
        if aws.error_code(error) in ("NotFoundException", "InvalidArnException"):
            raise InvalidRequest(
                f"KeyId {key_id} was not found (use a key ARN or a key id in this account)"
            ) from None
        raise


def create_grant(
    key_arn: str,
    grantee: str,
    operations: list[str],
    name: str,
    constraints: dict[str, Any] | None,
    retiring_principal: str | None,
) -> tuple[str, str]:
    """CreateGrant is idempotent when Name and every parameter repeat: the same GrantId comes back
    (with a new token). Returns (GrantId, GrantToken)."""
    kwargs: dict[str, Any] = {
        "KeyId": key_arn,
        "GranteePrincipal": grantee,
        "Operations": operations,
        "Name": name,
    }
    if constraints:
        kwargs["Constraints"] = constraints
    if retiring_principal:
        kwargs["RetiringPrincipal"] = retiring_principal
    result = aws.kms(key_arn).create_grant(**kwargs)
    return result["GrantId"], result["GrantToken"]


def grant_exists(key_arn: str, grant_id: str) -> bool:
    try:
        grants = aws.kms(key_arn).list_grants(KeyId=key_arn, GrantId=grant_id)["Grants"]
    except ClientError as error:
        if aws.error_code(error) in ("NotFoundException", "InvalidGrantIdException"):
            return False
        raise
    return any(g["GrantId"] == grant_id for g in grants)


def grant_ids(key_arn: str) -> set[str]:
    """Every grant on a key, listed in pages."""
    paginator = aws.kms(key_arn).get_paginator("list_grants")
    try:
        return {g["GrantId"] for page in paginator.paginate(KeyId=key_arn) for g in page["Grants"]}
    except ClientError as error:
        if aws.error_code(error) == "NotFoundException":
            return set()
        raise


def revoke_grant(key_arn: str, grant_id: str) -> bool:
    """Removes a grant; False when it was already retired or revoked.

    RevokeGrant rather than RetireGrant: RetireGrant is allowed only to the grant's retiring or
    grantee principal (or the account root), which this function's role is not; the key's own
    account may always revoke with kms:RevokeGrant.
    """
    try:
        aws.kms(key_arn).revoke_grant(KeyId=key_arn, GrantId=grant_id)
    except ClientError as error:
        if aws.error_code(error) in ("NotFoundException", "InvalidGrantIdException"):
            return False
        raise
    return True


def key_tags(key_arn: str) -> dict[str, str]:
    """The key's tags (ListResourceTags pages)."""
    paginator = aws.kms(key_arn).get_paginator("list_resource_tags")
    return {t["TagKey"]: t["TagValue"] for page in paginator.paginate(KeyId=key_arn) for t in page["Tags"]}
