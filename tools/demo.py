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
        self,
        event_file: str,
        stack: str,
        logical_id: str | None = None,
        label: str = "",
        **changes: Any,
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
            + (f"   ({label})" if label else "")
        )
        sent = {k: v for k, v in event["ResourceProperties"].items() if k != "ServiceToken"}
        print(f"         Properties sent: {json.dumps(sent)}")
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
    """What AWS and the registry hold now; "(nothing left)" when the account is empty."""
    import boto3

    from rolekeeper.aws.registry import Registry
    from rolekeeper.config import settings

    lines = []
    iam = boto3.client("iam")
    roles = [r for page in iam.get_paginator("list_roles").paginate() for r in page["Roles"]]
    for role in roles:
        policies = iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
        names = ", ".join(p["PolicyName"] for p in policies) or "-"
        lines.append(f"role {role['Path']}{role['RoleName']}  id {role['RoleId']}  policies: {names}")
    for profile in iam.list_instance_profiles()["InstanceProfiles"]:
        lines.append(
            f"instance profile {profile['InstanceProfileName']} holds {[r['RoleName'] for r in profile['Roles']]}"
        )
    if key_arn:
        for grant in boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]:
            lines.append(
                f"grant {grant['GrantId'][:16]}... to {grant['GranteePrincipal'].rsplit('/', 1)[1]}: {', '.join(sorted(grant['Operations']))}"
            )
    for record in Registry(settings().registry_table_name).all():
        ids = ""
        if record.attrs.get("role_id"):
            ids = f", RoleId {record.attrs['role_id']}"
        if record.attrs.get("grant_id"):
            ids = f", grant {record.attrs['grant_id'][:16]}... for RoleId {record.attrs.get('grantee_role_id', '?')}"
        lines.append(
            f"registry {record.key}: created by rolekeeper={record.created}, claims={len(record.claims)}{ids}"
        )
    print(f"\n  AWS now ({title}):")
    for line in lines or ["(nothing left)"]:
        print(f"    {line}")
    print()


def registry_agrees(key_arn: str) -> bool:
    """The registry's RoleId and grant id are the ones IAM and KMS hold now."""
    import boto3

    from rolekeeper.aws.registry import Registry
    from rolekeeper.config import settings
    from rolekeeper.domain.records import role_key

    registry = Registry(settings().registry_table_name)
    role = boto3.client("iam").get_role(RoleName=SPOT_FLEET)["Role"]
    record = registry.objects.read(role_key(SPOT_FLEET))
    grants = {g["GrantId"] for g in boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]}
    recorded = {g.attrs.get("grant_id") for g in registry.objects.grants_naming(SPOT_FLEET)}
    agrees = record is not None and record.attrs.get("role_id") == role["RoleId"] and recorded == grants
    print(f"  registry agrees with AWS (RoleId and grant ids): {'yes' if agrees else 'NO'}")
    return agrees


def print_status(title: str) -> None:
    from rolekeeper import cli
    from rolekeeper.config import settings

    table = settings().registry_table_name
    print(f"  $ rolekeeper status   ({title})")
    for line in cli.render(cli.status(table), table).splitlines():
        print(f"    {line}")
    print()


def step_heal(demo: Demo, key_arn: str, spot_fleet: dict[str, Any], new_grant: dict[str, Any]) -> None:
    import boto3

    iam = boto3.client("iam")
    print("6. Someone deletes the Spot Fleet service-linked role by hand; the healer puts it back")
    old_grant_id = new_grant["Data"]["GrantId"]
    task_id = iam.delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    print(f"  DeleteServiceLinkedRole {SPOT_FLEET} -> deletion task {task_id}")
    healed = demo.heal("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id})
    print(f"  healer: {healed['outcome']} ({healed['detail']})")
    role = iam.get_role(RoleName=SPOT_FLEET)["Role"]
    print(f"  {SPOT_FLEET} is back with a new RoleId {role['RoleId']} (was {spot_fleet['Data']['RoleId']})")
    grants = boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]
    current = [g["GrantId"] for g in grants]
    print(
        f"  the grant named the old RoleId, so the healer revoked it ({old_grant_id[:16]}...: "
        f"{'gone' if old_grant_id not in current else 'STILL THERE'}) and issued a new one for the new role "
        f"({', '.join(g[:16] + '...' for g in current)})"
    )
    if not registry_agrees(key_arn):
        demo.failures += 1
    state("after healing", key_arn)
    print_status("after healing: one heal counted on the Spot Fleet role")


def step_delete(demo: Demo, key_arn: str, made: dict[str, dict[str, Any]]) -> None:
    spot_fleet, spot, new_grant, ecs, batch, analytics = (
        made[k] for k in ("spot_fleet", "spot", "new_grant", "ecs", "batch", "analytics")
    )
    print("7. Delete both stacks")
    print("   (CloudFormation still names the grant by the id it was created with; rolekeeper revokes")
    print("   the grant the registry holds now, the one the healer issued)")
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
        "role-batch-service-create.json",
        "platform",
        RequestType="Delete",
        props={"OnDelete": "Delete", "Path": "/service-role/"},
        PhysicalResourceId=batch["PhysicalResourceId"],
    )
    print("   (AWSBatchServiceRole stays: rolekeeper adopted it, it did not create it)")
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
    state("after deleting stack 'platform'", key_arn)
    demo.request(
        "slr-delete.json",
        "analytics",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=analytics["PhysicalResourceId"],
    )
    print("   (last claim released: deletion of the service-linked role submitted)")
    state("after deleting stack 'analytics': only the adopted AWSBatchServiceRole is left", key_arn)
    print_status("at the end")


def main() -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    receiver = Receiver().start()
    with embedded_aws(POWERTOOLS_LOG_LEVEL="WARNING"):
        import boto3

        demo = Demo(receiver)
        iam = boto3.client("iam")
        print(
            f"rolekeeper demo: moto at {iam.meta.endpoint_url}, responses to 127.0.0.1:{receiver.port}\n"
            "Each request shows the properties it sends (the demo sets OnDelete: Delete, so the last\n"
            "claim's Delete removes what rolekeeper created) and CloudFormation's response; the AWS\n"
            "state and the registry follow every step.\n"
        )
        state("before anything: an empty account")

        print("1. Stack 'platform' creates both Spot service-linked roles")
        spot_fleet = demo.request("slr-create.json", "platform", props={"OnDelete": "Delete"})
        spot = demo.request("slr-spot-create.json", "platform", props={"OnDelete": "Delete"})
        state("after step 1")

        print("2. A customer managed key, and the grant that lets Spot Fleet use it")
        key_arn = boto3.client("kms").create_key(Description="encrypted AMIs", Tags=OPT_IN)["KeyMetadata"][
            "Arn"
        ]
        grant = demo.request("grant-create.json", "platform", props={"KeyId": key_arn})
        state("after step 2", key_arn)

        print("3. Stack 'analytics' asks for the same Spot Fleet role: adopted, two claims")
        analytics = demo.request("slr-create.json", "analytics", props={"OnDelete": "Delete"})
        print(
            "   Created: true although 'analytics' created nothing: Created says whether rolekeeper\n"
            "   created the role at any time (here for 'platform' in step 1). It is what decides deletion:\n"
            "   the role goes when the last claim is released, whichever stack holds it."
        )
        state("after step 3", key_arn)

        print("4. Stack 'platform' narrows the grant's operations: a new grant, the old one retired")
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
            label="CloudFormation's cleanup Delete of the replaced grant, after the Update succeeded",
            props={"KeyId": key_arn},
            PhysicalResourceId=grant["PhysicalResourceId"],
        )
        state("after step 4", key_arn)

        print("5. The ECS instance role from the AWS Batch guide, with its instance profile")
        ecs = demo.request("role-ecs-instance-create.json", "platform", props={"OnDelete": "Delete"})
        print(
            "\n   The console's first-run experience already made AWSBatchServiceRole; stack 'platform' asks for it"
        )
        iam.create_role(
            RoleName="AWSBatchServiceRole",
            Path="/service-role/",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "batch.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
        batch = demo.request(
            "role-batch-service-create.json",
            "platform",
            props={"OnDelete": "Delete", "Path": "/service-role/"},
        )
        print(
            "   Created: false: the role was adopted (rolekeeper attached what the blueprint needs and\n"
            "   removed nothing). An adopted role is never deleted by rolekeeper, OnDelete: Delete or not."
        )
        state("after step 5", key_arn)

        step_heal(demo, key_arn, spot_fleet, new_grant)
        made = {
            "spot_fleet": spot_fleet,
            "spot": spot,
            "new_grant": new_grant,
            "ecs": ecs,
            "batch": batch,
            "analytics": analytics,
        }
        step_delete(demo, key_arn, made)

    receiver.stop()
    if demo.failures:
        print(f"demo finished with {demo.failures} unexpected result(s)")
        return 1
    print("demo finished: every request answered once, as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
