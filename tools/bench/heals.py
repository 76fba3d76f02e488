"""AWS calls per heal: objects under a claim, damaged by hand (not counted), healed by the event
EventBridge would deliver."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from tools.bench import ACCOUNT
from tools.bench.inprocess import (
    ECS,
    ECS_POLICY,
    OPT_IN,
    SPOT_FLEET,
    World,
    cfn,
    delete_ecs_role_by_hand,
    heal,
    heal_event,
    request,
)


def heals(world: World, measure: Callable[[str, Callable[[], Any]], Any]) -> None:
    import boto3

    from rolekeeper.aws.registry import Registry
    from rolekeeper.config import settings
    from rolekeeper.domain.records import grant_key

    def send(event: dict[str, Any]) -> dict[str, Any]:
        return cfn(world, event)

    def healed(name: str, event: dict[str, Any]) -> None:
        result = measure(name, lambda: heal(event))
        assert result["outcome"] == "healed", (name, result)

    iam, kms = boto3.client("iam"), boto3.client("kms")
    send(request("role-ecs-instance-create.json", "healing", {"OnDelete": "Delete"}))
    delete_ecs_role_by_hand()
    healed("Heal: deleted ecsInstanceRole (with profile)", heal_event("heal-delete-role.json"))
    iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    healed("Heal: detached policy", heal_event("heal-detach-role-policy.json"))
    key_arn = kms.create_key(Description="heals", Tags=OPT_IN)["KeyMetadata"]["Arn"]
    grant = send(request("grant-create.json", "healing", {"KeyId": key_arn}))
    kms.revoke_grant(KeyId=key_arn, GrantId=grant["Data"]["GrantId"])
    healed(
        "Heal: retired grant",
        heal_event(
            "heal-retire-grant.json",
            responseElements={"keyId": key_arn},
            additionalEventData={"grantId": grant["Data"]["GrantId"]},
            resources=[{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key_arn}],
        ),
    )
    record = Registry(settings().registry_table_name).objects.read(grant_key(grant["PhysicalResourceId"]))
    assert record is not None
    kms.revoke_grant(KeyId=key_arn, GrantId=record.attrs["grant_id"])
    healed(
        "Heal: revoked grant (re-issued once before)",
        heal_event(
            "heal-revoke-grant.json",
            requestParameters={"keyId": key_arn, "grantId": record.attrs["grant_id"]},
            resources=[{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key_arn}],
        ),
    )
    send(request("grant-create.json", "healing2", {"KeyId": key_arn}, LogicalResourceId="SecondGrant"))
    task_id = iam.delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    healed(
        "Heal: deleted SLR (task id in the event), 2 grants",
        heal_event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id}),
    )
    asked = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    iam.delete_service_linked_role(RoleName=SPOT_FLEET)
    deleted = heal_event("heal-delete-service-linked-role.json", eventTime=f"{asked:%Y-%m-%dT%H:%M:%SZ}")
    deleted["detail"].pop("responseElements", None)
    healed("Heal: deleted SLR (no task id), 2 grants", deleted)
    boundary = iam.create_policy(
        PolicyName="app-boundary",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    send(
        request(
            "role-ec2-application-create.json",
            "healing",
            {"RoleName": "app-bounded", "PermissionsBoundary": boundary},
            LogicalResourceId="BoundedRole",
        )
    )
    iam.delete_role_permissions_boundary(RoleName="app-bounded")
    healed(
        "Heal: removed boundary",
        heal_event(
            "heal-delete-role.json",
            eventName="DeleteRolePermissionsBoundary",
            requestParameters={"roleName": "app-bounded"},
        ),
    )
