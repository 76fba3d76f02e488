"""The story `make demo` tells: two stacks, a key and its grant, a role made by hand and adopted,
damage and the heal, and both stacks deleted; each step printed with what it changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tools.devkit.environment import OPT_IN

if TYPE_CHECKING:
    from tools.demo.run import Demo

SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
NARROWER = [
    "Decrypt",
    "DescribeKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
]


def _trust(service: str) -> str:
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def build(demo: Demo) -> dict[str, dict[str, Any]]:
    """Steps 1-6: what two stacks ask for; returns the responses later requests refer to."""
    import boto3

    iam, kms = boto3.client("iam"), boto3.client("kms")
    made: dict[str, dict[str, Any]] = {}

    def spot_roles() -> None:
        made["spot_fleet"] = demo.request("slr-create.json", "platform", props={"OnDelete": "Delete"})
        made["spot"] = demo.request("slr-spot-create.json", "platform", props={"OnDelete": "Delete"})

    demo.step("1. Stack 'platform' creates both Spot service-linked roles", spot_roles)

    def key_and_grant() -> None:
        key = kms.create_key(Description="encrypted AMIs", Tags=OPT_IN)["KeyMetadata"]["Arn"]
        demo.keys = (key,)
        demo.say(f"   (a customer managed key, tagged rolekeeper:spot-fleet-grants=allow: {key})")
        made["grant"] = demo.request("grant-create.json", "platform", props={"KeyId": key})

    demo.step("2. A customer managed key, and the grant that lets Spot Fleet use it", key_and_grant)

    def second_stack() -> None:
        made["analytics"] = demo.request("slr-create.json", "analytics", props={"OnDelete": "Delete"})
        demo.say("   Created: true although 'analytics' created nothing: it says whether rolekeeper created")
        demo.say(
            "   the role at all. The role goes when the last claim is released, whichever stack holds it."
        )

    demo.step("3. Stack 'analytics' asks for the same Spot Fleet role: a second claim", second_stack)

    def narrow_grant() -> None:
        (key,) = demo.keys
        old = made["grant"]["PhysicalResourceId"]
        made["grant"] = demo.request(
            "grant-update.json",
            "platform",
            props={"KeyId": key, "Operations": NARROWER},
            old_props={"KeyId": key},
            PhysicalResourceId=old,
        )
        demo.say("   (grants are immutable: a new one; then CloudFormation's cleanup Delete of the old one)")
        demo.request("grant-delete.json", "platform", props={"KeyId": key}, PhysicalResourceId=old)

    demo.step(
        "4. Stack 'platform' narrows the grant's operations: a new grant, the old one revoked", narrow_grant
    )

    def by_hand() -> None:
        demo.say("   aws iam create-role --role-name AWSBatchServiceRole --path /service-role/ ...")
        iam.create_role(
            RoleName="AWSBatchServiceRole",
            Path="/service-role/",
            AssumeRolePolicyDocument=_trust("batch.amazonaws.com"),
        )

    demo.step("5. The console's first-run experience made AWSBatchServiceRole (here: by hand)", by_hand)

    def ecs_and_batch() -> None:
        made["ecs"] = demo.request("role-ecs-instance-create.json", "platform", props={"OnDelete": "Delete"})
        made["batch"] = demo.request(
            "role-batch-service-create.json",
            "platform",
            props={"OnDelete": "Delete", "Path": "/service-role/"},
        )
        demo.say(
            "   AWSBatchServiceRole, Created: false: adopted. rolekeeper attached what the blueprint needs,"
        )
        demo.say("   removed nothing, and will never delete it, OnDelete: Delete or not.")

    demo.step(
        "6. Stack 'platform' asks for ecsInstanceRole (with its instance profile) and AWSBatchServiceRole",
        ecs_and_batch,
    )

    return made


def heal_and_delete(demo: Demo, made: dict[str, dict[str, Any]]) -> None:
    """Steps 7-10: damage, the heal, and both stacks deleted."""
    import boto3

    iam = boto3.client("iam")

    def delete_by_hand() -> None:
        made["task"] = iam.delete_service_linked_role(RoleName=SPOT_FLEET)
        demo.say(f"   aws iam delete-service-linked-role --role-name {SPOT_FLEET}")

    demo.step(
        "7. Someone deletes the Spot Fleet role by hand (the grant now names a role that is gone)",
        delete_by_hand,
    )

    def heal() -> None:
        demo.heal(
            "heal-delete-service-linked-role.json",
            responseElements={"deletionTaskId": made["task"]["DeletionTaskId"]},
        )
        demo.say(
            "   A recreated role has a new RoleId: the grant made for the old one is revoked and re-issued."
        )

    demo.step("8. The healer gets IAM's DeleteServiceLinkedRole event and puts it back", heal)
    demo.status()

    def delete_platform() -> None:
        demo.say("   (the grant's physical id still names the first grant; rolekeeper revokes the live one)")
        demo.request(
            "grant-delete.json",
            "platform",
            props={"KeyId": demo.keys[0]},
            PhysicalResourceId=made["grant"]["PhysicalResourceId"],
        )
        demo.request(
            "role-ecs-instance-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=made["ecs"]["PhysicalResourceId"],
        )
        demo.request(
            "role-batch-service-create.json",
            "platform",
            RequestType="Delete",
            props={"OnDelete": "Delete", "Path": "/service-role/"},
            PhysicalResourceId=made["batch"]["PhysicalResourceId"],
        )
        demo.request(
            "slr-spot-create.json",
            "platform",
            RequestType="Delete",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=made["spot"]["PhysicalResourceId"],
        )
        demo.request(
            "slr-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=made["spot_fleet"]["PhysicalResourceId"],
        )
        demo.say("   AWSBatchServiceRole stays (adopted); the Spot Fleet role stays ('analytics' claims it).")

    demo.step("9. Stack 'platform' is deleted", delete_platform)

    def delete_analytics() -> None:
        demo.request(
            "slr-delete.json",
            "analytics",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=made["analytics"]["PhysicalResourceId"],
        )
        demo.say("   The last claim is released: the service-linked role's deletion is submitted to IAM.")

    demo.step("10. Stack 'analytics' is deleted", delete_analytics)
