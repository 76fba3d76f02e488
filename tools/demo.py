"""make demo: the whole lifecycle on an embedded AWS (moto on 127.0.0.1), no account needed.

The real handler runs unchanged; boto3 reaches moto through AWS_ENDPOINT_URL and responses go
to a local receiver standing in for CloudFormation's pre-signed ResponseURL.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from tools.local_aws import ACCOUNT, OPT_IN, REGION, Context, Receiver, embedded_aws

EVENTS = Path(__file__).resolve().parent.parent / "events"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"


class Demo:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.failures = 0

    def request(
        self, event_file: str, stack: str, logical_id: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        from rolekeeper.handlers.custom_resource import lambda_handler

        event = json.loads((EVENTS / event_file).read_text())
        request_id = str(uuid.uuid4())
        event["StackId"] = (
            f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/{uuid.uuid5(uuid.NAMESPACE_DNS, stack)}"
        )
        event["RequestId"] = request_id
        event["ResponseURL"] = self.receiver.url(request_id)
        if logical_id:
            event["LogicalResourceId"] = logical_id
        event["ResourceProperties"].update(changes.pop("props", {}))
        if "old_props" in changes:
            event["OldResourceProperties"].update(changes.pop("old_props"))
        event.update(changes)
        logs = io.StringIO()
        with contextlib.redirect_stdout(logs):
            lambda_handler(event, Context())
        body = self.receiver.bodies[request_id]
        status = body["Status"]
        print(
            f"  {event['RequestType']:6} {event['ResourceType']:26} {stack}/{event['LogicalResourceId']:26} -> {status}"
        )
        if status != "SUCCESS":
            self.failures += 1
            print(f"         Reason: {body['Reason']}")
        print(f"         PhysicalResourceId: {body['PhysicalResourceId']}")
        for key, value in body["Data"].items():
            print(f"         {key}: {value if key != 'GrantToken' else value[:16] + '...'}")
        return body

    def heal(self, event_file: str, **detail: Any) -> dict[str, Any]:
        from rolekeeper.handlers.healer import lambda_handler

        event = json.loads((EVENTS / event_file).read_text())
        for key, value in detail.items():
            event["detail"][key] = value
        logs = io.StringIO()
        with contextlib.redirect_stdout(logs):
            result: dict[str, Any] = lambda_handler(event, Context(function_name="rolekeeper-HealerFunction"))
        if result.get("outcome") != "healed":
            self.failures += 1
        return result


def state(title: str, key_arn: str | None = None) -> None:
    import boto3

    from rolekeeper.config import settings
    from rolekeeper.registry import Registry

    print(f"\n  AWS now ({title}):")
    roles = boto3.client("iam").get_paginator("list_roles").paginate()
    for role in (r for page in roles for r in page["Roles"]):
        policies = boto3.client("iam").list_attached_role_policies(RoleName=role["RoleName"])[
            "AttachedPolicies"
        ]
        names = ", ".join(p["PolicyName"] for p in policies) or "-"
        print(f"    role {role['Path']}{role['RoleName']}  id {role['RoleId']}  policies: {names}")
    for profile in boto3.client("iam").list_instance_profiles()["InstanceProfiles"]:
        print(
            f"    instance profile {profile['InstanceProfileName']} holds {[r['RoleName'] for r in profile['Roles']]}"
        )
    if key_arn:
        for grant in boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]:
            print(
                f"    grant {grant['GrantId'][:16]}... to {grant['GranteePrincipal'].rsplit('/', 1)[1]}: {', '.join(sorted(grant['Operations']))}"
            )
    for record in Registry(settings().registry_table_name).all():
        print(
            f"    registry {record.key}: created by rolekeeper={record.created}, claims={len(record.claims)}"
        )
    print()


def main() -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    receiver = Receiver().start()
    with embedded_aws(POWERTOOLS_LOG_LEVEL="WARNING"):
        import boto3

        demo = Demo(receiver)
        print(
            f"rolekeeper demo: moto at {boto3.client('iam').meta.endpoint_url}, responses to 127.0.0.1:{receiver.port}\n"
        )

        print("1. Stack 'platform' creates both Spot service-linked roles")
        spot_fleet = demo.request("slr-create.json", "platform", props={"OnDelete": "Delete"})
        spot = demo.request("slr-spot-create.json", "platform", props={"OnDelete": "Delete"})

        print("\n2. A customer managed key, and the grant that lets Spot Fleet use it")
        key_arn = boto3.client("kms").create_key(Description="encrypted AMIs", Tags=OPT_IN)["KeyMetadata"][
            "Arn"
        ]
        grant = demo.request("grant-create.json", "platform", props={"KeyId": key_arn})
        state("after stack 'platform'", key_arn)

        print("3. Stack 'analytics' asks for the same Spot Fleet role: adopted, two claims")
        analytics = demo.request("slr-create.json", "analytics", props={"OnDelete": "Delete"})

        print("\n4. Stack 'platform' narrows the grant's operations: a new grant, the old one retired")
        narrower = [
            "Decrypt",
            "DescribeKey",
            "GenerateDataKeyWithoutPlaintext",
            "ReEncryptFrom",
            "ReEncryptTo",
            "CreateGrant",
        ]
        new_grant = demo.request(
            "grant-update.json",
            "platform",
            props={"KeyId": key_arn, "Operations": narrower},
            old_props={"KeyId": key_arn},
            PhysicalResourceId=grant["PhysicalResourceId"],
        )
        demo.request(
            "grant-delete.json",
            "platform",
            props={"KeyId": key_arn},
            PhysicalResourceId=grant["PhysicalResourceId"],
        )

        print("\n5. The ECS instance role from the AWS Batch guide, with its instance profile")
        ecs = demo.request("role-ecs-instance-create.json", "platform", props={"OnDelete": "Delete"})
        state("after update and ecsInstanceRole", key_arn)

        print("6. Someone deletes the Spot Fleet service-linked role by hand; the healer puts it back")
        iam = boto3.client("iam")
        task_id = iam.delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
        print(f"  DeleteServiceLinkedRole {SPOT_FLEET} -> deletion task {task_id}")
        healed = demo.heal(
            "heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id}
        )
        print(f"  healer: {healed['outcome']} ({healed['detail']})")
        role = iam.get_role(RoleName=SPOT_FLEET)["Role"]
        print(
            f"  {SPOT_FLEET} is back with a new RoleId {role['RoleId']} (was {spot_fleet['Data']['RoleId']})"
        )
        state("after healing: the grant was re-issued for the new role", key_arn)

        print("7. Delete both stacks")
        demo.request(
            "grant-delete.json",
            "platform",
            props={"KeyId": key_arn},
            PhysicalResourceId=new_grant["PhysicalResourceId"],
        )
        demo.request(
            "role-ecs-instance-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=ecs["PhysicalResourceId"],
        )
        demo.request(
            "slr-spot-create.json",
            "platform",
            RequestType="Delete",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=spot["PhysicalResourceId"],
        )
        demo.request(
            "slr-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=spot_fleet["PhysicalResourceId"],
        )
        print("   (the Spot Fleet role stays: stack 'analytics' still claims it)")
        demo.request(
            "slr-delete.json",
            "analytics",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=analytics["PhysicalResourceId"],
        )
        print("   (last claim released: deletion of the service-linked role submitted)")
        state("after deleting both stacks", key_arn)

    receiver.stop()
    if demo.failures:
        print(f"demo finished with {demo.failures} unexpected FAILED response(s)")
        return 1
    print("demo finished: every request answered once, as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
