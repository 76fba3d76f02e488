"""Damage: the call a heal event reports, made as a person would before the event is invoked."""

from __future__ import annotations

from typing import Any

from tools.sam_local.aws_state import Aws
from tools.sam_local.plan import fill


def _lower_first(name: str) -> str:
    return name[:1].upper() + name[1:]


def replay(aws: Aws, event: dict[str, Any], facts: dict[str, str]) -> None:
    detail = event["detail"]
    params = {_lower_first(k): v for k, v in (detail.get("requestParameters") or {}).items()}
    name = detail["eventName"]
    if name == "DetachRolePolicy":
        aws.iam.detach_role_policy(**params)
    elif name == "RemoveRoleFromInstanceProfile":
        aws.iam.remove_role_from_instance_profile(**params)
    elif name == "DeleteInstanceProfile":
        profile = aws.iam.get_instance_profile(**params)["InstanceProfile"]
        for role in profile["Roles"]:
            aws.iam.remove_role_from_instance_profile(RoleName=role["RoleName"], **params)
        aws.iam.delete_instance_profile(**params)
    elif name == "UpdateAssumeRolePolicy":
        aws.iam.update_assume_role_policy(**params)
    elif name == "DeleteRole":
        role_name = params["RoleName"]
        for profile_name in aws.profiles_of(role_name):
            aws.iam.remove_role_from_instance_profile(RoleName=role_name, InstanceProfileName=profile_name)
            aws.iam.delete_instance_profile(InstanceProfileName=profile_name)
        for arn in aws.attached(role_name):
            aws.iam.detach_role_policy(RoleName=role_name, PolicyArn=arn)
        aws.iam.delete_role(**params)
    elif name == "DeleteServiceLinkedRole":
        facts["deletion_task_id"] = aws.iam.delete_service_linked_role(**params)["DeletionTaskId"]
    elif name == "RevokeGrant":
        aws.kms.revoke_grant(**params)
    elif name == "RetireGrant":
        aws.kms.retire_grant(
            KeyId=detail["responseElements"]["keyId"], GrantId=detail["additionalEventData"]["grantId"]
        )
    else:
        raise SystemExit(f"sam-local: no replay for {name}; give the step a damage list")


def damage(aws: Aws, step: dict[str, Any], event: dict[str, Any], facts: dict[str, str]) -> None:
    if "damage" not in step:
        replay(aws, event, facts)
        return
    for call in step["damage"]:
        service, method = call["call"].split(".")
        kwargs = {k: fill(v, facts) for k, v in call.items() if k != "call"}
        getattr(getattr(aws, service), method)(**kwargs)
