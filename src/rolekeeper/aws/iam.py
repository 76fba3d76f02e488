"""Every IAM call rolekeeper makes, each idempotent: a piece already there (or already gone) is fine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from rolekeeper.aws import clients as aws
from rolekeeper.domain.errors import Conflict, RolekeeperError
from rolekeeper.retry import IAM_VISIBLE, Clock

logger = Logger(child=True)


def already_exists(error: ClientError) -> bool:
    # IAM answers an existing service-linked role with InvalidInput "... has been taken in this
    # account"; regular roles and instance profiles with EntityAlreadyExists.
    code = aws.error_code(error)
    return code == "EntityAlreadyExists" or (
        code == "InvalidInput" and "has been taken" in aws.error_message(error)
    )


def not_found(error: ClientError) -> bool:
    return aws.error_code(error) in ("NoSuchEntity", "NoSuchEntityException")


def get_role(name: str) -> dict[str, Any] | None:
    try:
        return aws.iam().get_role(RoleName=name)["Role"]  # type: ignore[return-value]
    except ClientError as error:
        if not_found(error):
            return None
        raise


def wait_for_role(name: str, clock: Clock) -> dict[str, Any]:
    """IAM is eventually consistent: a role just created may not be returned by GetRole (or be
    usable by a dependent resource) for a few seconds."""
    for _ in IAM_VISIBLE.tries(clock):
        role = get_role(name)
        if role is not None:
            return role
    raise RolekeeperError(f"IAM did not return role {name} within {IAM_VISIBLE.total:.0f} s of creating it")


def create_service_linked_role(
    service_name: str, suffix: str | None, description: str | None
) -> tuple[str | None, bool]:
    """(The new role's name, or None when the role already exists; whether "already exists" came
    only on the SDK's retry of an attempt that failed without an answer: that attempt's create)."""
    kwargs: dict[str, str] = {"AWSServiceName": service_name}
    if suffix:
        kwargs["CustomSuffix"] = suffix
    if description:
        kwargs["Description"] = description
    try:
        return aws.iam().create_service_linked_role(**kwargs)["Role"]["RoleName"], False
    except ClientError as error:
        if already_exists(error):
            retries = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            return None, bool(retries)
        raise


def update_description(name: str, description: str) -> None:
    aws.iam().update_role(RoleName=name, Description=description)


def delete_service_linked_role(name: str) -> str | None:
    """Submits the deletion (IAM finishes it asynchronously); returns the deletion task id."""
    try:
        return aws.iam().delete_service_linked_role(RoleName=name)["DeletionTaskId"]
    except ClientError as error:
        if not_found(error):
            return None
        raise


def deletion_status(task_id: str) -> tuple[str, str]:
    """(Status, reason) of a service-linked role deletion task; a task IAM no longer knows
    finished long ago."""
    try:
        result = aws.iam().get_service_linked_role_deletion_status(DeletionTaskId=task_id)
    except ClientError as error:
        if not_found(error):
            return "SUCCEEDED", ""
        raise
    reason = result.get("Reason", {})
    usage = "; ".join(
        f"{u.get('Region', '?')}: {', '.join(u.get('Resources', []))}"
        for u in reason.get("RoleUsageList", [])
    )
    return result["Status"], reason.get("Reason", "") + (f" (in use: {usage})" if usage else "")


def create_role(
    name: str,
    path: str,
    trust: dict[str, Any],
    description: str,
    boundary: str | None,
    tags: dict[str, str],
) -> bool:
    """CreateRole; False when a role of that name exists (made concurrently, or this call's
    earlier attempt succeeded and its answer was lost: botocore retried it)."""
    kwargs: dict[str, Any] = {
        "RoleName": name,
        "Path": path,
        "AssumeRolePolicyDocument": json.dumps(trust),
        "Description": description,
    }
    if boundary:
        kwargs["PermissionsBoundary"] = boundary
    if tags:
        kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    try:
        aws.iam().create_role(**kwargs)
    except ClientError as error:
        if already_exists(error):
            return False
        raise
    return True


def update_trust(name: str, trust: dict[str, Any]) -> None:

    aws.iam().update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))


def attached_policies(name: str) -> set[str]:
    paginator = aws.iam().get_paginator("list_attached_role_policies")
    return {p["PolicyArn"] for page in paginator.paginate(RoleName=name) for p in page["AttachedPolicies"]}


def attach(name: str, policy_arn: str) -> None:
    try:
        aws.iam().attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    except ClientError as error:
        if not_found(error):
            raise Conflict(f"policy {policy_arn} does not exist") from None
        raise


def detach(name: str, policy_arn: str) -> bool:
    """False when the policy was not attached (IAM answers NoSuchEntity)."""
    try:
        aws.iam().detach_role_policy(RoleName=name, PolicyArn=policy_arn)
    except ClientError as error:
        if not not_found(error):
            raise
        return False
    return True


def set_boundary(name: str, boundary: str | None) -> None:
    if boundary:
        aws.iam().put_role_permissions_boundary(RoleName=name, PermissionsBoundary=boundary)
    else:
        try:
            aws.iam().delete_role_permissions_boundary(RoleName=name)
        except ClientError as error:
            if not not_found(error):
                raise


def tag(name: str, tags: dict[str, str]) -> None:
    aws.iam().tag_role(RoleName=name, Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])


def untag(name: str, keys: set[str]) -> None:
    aws.iam().untag_role(RoleName=name, TagKeys=sorted(keys))


def get_instance_profile(name: str) -> dict[str, Any] | None:
    try:
        return aws.iam().get_instance_profile(InstanceProfileName=name)["InstanceProfile"]  # type: ignore[return-value]
    except ClientError as error:
        if not_found(error):
            return None
        raise


def create_instance_profile(name: str, path: str) -> dict[str, Any] | None:
    """Returns the new profile, or None when one of that name already exists."""
    try:
        result = aws.iam().create_instance_profile(InstanceProfileName=name, Path=path)
        return result["InstanceProfile"]  # type: ignore[return-value]
    except ClientError as error:
        if already_exists(error):
            return None
        raise


def add_to_profile(profile: str, role: str) -> None:
    try:
        aws.iam().add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
    except ClientError as error:
        # LimitExceeded: the profile already holds a role (an instance profile holds at most one);
        # when that role is this one (added concurrently), there is nothing to do.
        if aws.error_code(error) == "LimitExceeded":
            found = get_instance_profile(profile)
            if found is not None and [r["RoleName"] for r in found.get("Roles", [])] == [role]:
                return
            raise Conflict(f"instance profile {profile} already holds another role") from None
        if not already_exists(error):
            raise


def remove_from_profile(profile: str, role: str) -> None:
    try:
        aws.iam().remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=role)
    except ClientError as error:
        if not not_found(error):
            raise


def delete_instance_profile(name: str) -> None:
    try:
        aws.iam().delete_instance_profile(InstanceProfileName=name)
    except ClientError as error:
        if not not_found(error):
            raise


def profiles_of(name: str) -> list[str]:
    """Names of the instance profiles holding the role, listed in pages."""
    paginator = aws.iam().get_paginator("list_instance_profiles_for_role")
    return [
        p["InstanceProfileName"]
        for page in paginator.paginate(RoleName=name)
        for p in page["InstanceProfiles"]
    ]


# GetAccountAuthorizationDetails' largest page: MaxItems is 1 to 1,000 (IAM's default is 100).
ROLE_DETAILS_PAGE = 1000


def role_detail_pages(page_size: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Every role with its trust, policies, profiles and tags, one GetAccountAuthorizationDetails
    page at a time (one call per page of up to page_size roles rather than several per role): a
    caller keeps what it needs of a page before the next one is read. page_size: ROLE_DETAILS_PAGE
    unless given."""
    paginator = aws.iam().get_paginator("get_account_authorization_details")
    size = page_size or ROLE_DETAILS_PAGE
    for page in paginator.paginate(Filter=["Role"], PaginationConfig={"PageSize": size}):
        yield [dict(detail) for detail in page["RoleDetailList"]]


def delete_empty_profile(name: str) -> None:
    profile = get_instance_profile(name)
    if profile is not None and not profile.get("Roles"):
        delete_instance_profile(name)


def delete_role(name: str, own_profile: str | None) -> bool:
    """Deletes a regular role in the order IAM requires; pieces already gone are fine.

    Returns False when the role was already gone.
    """
    iam = aws.iam()
    try:
        profiles = profiles_of(name)
        for profile in profiles:
            remove_from_profile(profile, name)
        if own_profile and own_profile in profiles:
            delete_instance_profile(own_profile)
        elif own_profile:
            delete_empty_profile(own_profile)
        for policy_arn in attached_policies(name):
            detach(name, policy_arn)
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy_name in page["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        iam.delete_role(RoleName=name)
    except ClientError as error:
        if not_found(error):
            if own_profile:
                delete_empty_profile(own_profile)
            return False
        raise
    return True
