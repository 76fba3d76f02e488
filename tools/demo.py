"""make demo: the whole lifecycle on an embedded AWS (moto on 127.0.0.1), no account needed.

The real handlers run unchanged; boto3 reaches moto through AWS_ENDPOINT_URL and responses go
to a local receiver standing in for CloudFormation's pre-signed ResponseURL. After each step the
demo prints what changed in AWS and in rolekeeper's registry (a diff of two snapshots, not a
dump), and it ends with what to do next.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tools.local_aws import ACCOUNT, OPT_IN, REGION, Context, Receiver, embedded_aws

EVENTS = Path(__file__).resolve().parent.parent / "events"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
NARROWER = [
    "Decrypt",
    "DescribeKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
]

# A snapshot: (category, name) -> the fields that describe it. Categories in display order, with
# the words for an object that appeared and one that went away.
Snapshot = dict[tuple[str, str], dict[str, str]]
CATEGORIES = {
    "role": ("role", "created", "deleted"),
    "policy": ("managed policy", "attached", "detached"),
    "profile": ("instance profile", "created", "deleted"),
    "grant": ("KMS grant", "issued", "revoked"),
    "record": ("registry record", "recorded", "removed"),
    "claim": ("registry claim", "recorded", "released"),
}

NEXT_STEPS = """\
Next: deploy it to your AWS account (SAM CLI; Python 3.13 on PATH, or add --use-container):
  sam build && sam deploy --guided
then give one of your templates a resource with ServiceToken: !ImportValue <stack name>-ServiceToken.
One example per resource type: README.md, "Resource types"; every property: docs/resource-reference.md"""


def _short(grant_id: str) -> str:
    return grant_id[:16] + "..."


def _operations(operations: list[str]) -> str:
    from rolekeeper.domain.catalog import DEFAULT_GRANT_OPERATIONS

    if set(operations) == set(DEFAULT_GRANT_OPERATIONS):
        return f"the {len(operations)} default operations"
    return ", ".join(sorted(operations))


def snapshot(key_arns: tuple[str, ...] = ()) -> Snapshot:
    """What IAM, KMS (the grants on key_arns) and the registry hold now, as comparable facts."""
    import boto3

    from rolekeeper.aws.registry import Registry
    from rolekeeper.config import settings

    facts: Snapshot = {}
    iam = boto3.client("iam")
    for page in iam.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            name = role["RoleName"]
            facts["role", name] = {"RoleId": role["RoleId"], "path": role["Path"]}
            for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                facts["policy", f"{policy['PolicyName']} on {name}"] = {}
    for profile in iam.list_instance_profiles()["InstanceProfiles"]:
        facts["profile", profile["InstanceProfileName"]] = {
            "holds": ", ".join(r["RoleName"] for r in profile["Roles"]) or "no role"
        }
    kms = boto3.client("kms")
    for key_arn in key_arns:
        for grant in kms.list_grants(KeyId=key_arn)["Grants"]:
            facts["grant", _short(grant["GrantId"])] = {
                "to": grant["GranteePrincipal"].rsplit("/", 1)[-1],
                "for": _operations(grant["Operations"]),
            }
    for record in Registry(settings().registry_table_name).objects.all():
        if record.kind == "grant":
            name = f"of the grant CloudFormation knows as {_short(record.key.rsplit('#', 1)[-1])}"
            fields = {"live grant": _short(record.attrs.get("grant_id", "?"))}
            fields["for RoleId"] = record.attrs.get("grantee_role_id", "?")
        else:
            name = f"of {record.attrs.get('name') or record.key.split('#', 1)[-1]}"
            fields = {"made by": "rolekeeper" if record.created else "someone else (adopted)"}
            fields["RoleId"] = record.attrs.get("role_id", "?")
        if record.state:
            fields["state"] = record.state
        facts["record", name] = fields
        target = name.removeprefix("of ")
        for claim in record.claims:
            stack = claim.stack_id.split("/")[1]
            facts["claim", f"on {target} by stack {stack} / logical id {claim.logical_id}"] = {
                "OnDelete": claim.on_delete,
                "healing": "on" if claim.heal else "off",
            }
    return facts


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Each difference in words: what appeared, what went away, and what changed from -> to."""
    order = list(CATEGORIES)
    lines = []
    for category, name in sorted(before.keys() | after.keys(), key=lambda k: (order.index(k[0]), k[1])):
        label, appeared, went = CATEGORIES[category]
        old, new = before.get((category, name)), after.get((category, name))
        if old is None and new is not None:
            fields = ", ".join(f"{k} {v}" for k, v in new.items())
            lines.append(f"+ {label} {name} {appeared}" + (f" ({fields})" if fields else ""))
        elif new is None and old is not None:
            lines.append(f"- {label} {name} {went}")
        elif old != new and old is not None and new is not None:
            moved = [
                f"{k} {old.get(k, '-')} -> {new.get(k, '-')}"
                for k in {**old, **new}
                if old.get(k) != new.get(k)
            ]
            lines.append(f"~ {label} {name}: {'; '.join(moved)}")
    return lines


class Demo:
    def __init__(self, receiver: Receiver, out: TextIO) -> None:
        self.receiver = receiver
        self.out = out
        self.failures = 0
        self.keys: tuple[str, ...] = ()
        self.last: Snapshot = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def step(self, title: str, action: Callable[[], None]) -> None:
        """Run one step and print what it changed."""
        self.say(title)
        action()
        now = snapshot(self.keys)
        found = changes(self.last, now)
        self.say("   changed:" if found else "   changed: nothing")
        for line in found:
            self.say(f"     {line}")
        self.say()
        self.last = now

    def request(self, event_file: str, stack: str, **overrides: Any) -> dict[str, Any]:
        """Send events/<event_file> as stack's CloudFormation would (props and old_props merged
        into the properties, other overrides into the event) and print the answer."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        event = json.loads((EVENTS / event_file).read_text())
        request_id = str(uuid.uuid4())
        event["StackId"] = (
            f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/{uuid.uuid5(uuid.NAMESPACE_DNS, stack)}"
        )
        event["RequestId"] = request_id
        event["ResponseURL"] = self.receiver.url(request_id)
        event["ResourceProperties"].update(overrides.pop("props", {}))
        if "old_props" in overrides:
            event["OldResourceProperties"].update(overrides.pop("old_props"))
        event.update(overrides)
        with contextlib.redirect_stdout(io.StringIO()):  # the handler's JSON logs
            lambda_handler(event, Context())
        body = self.receiver.bodies[request_id]
        sent = ", ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}"
            for k, v in event["ResourceProperties"].items()
            if k != "ServiceToken"
        )
        data = body.get("Data") or {}
        said = (
            f"Created: {data['Created']}"
            if "Created" in data
            else (f"GrantId {_short(data['GrantId'])}" if "GrantId" in data else "")
        )
        answer = f"-> {body['Status']}" + (f" ({said})" if said else "")
        self.say(
            f"   {event['RequestType']} {event['ResourceType']} {stack}/{event['LogicalResourceId']} {answer}"
        )
        if event["RequestType"] != "Delete":  # a Delete acts on the stored claim, not on its properties
            self.say(f"     properties: {sent}")
        if body["Status"] != "SUCCESS":
            self.say(f"     Reason: {body['Reason']}")
            self.failures += 1
        return body

    def heal(self, event_file: str, **detail: Any) -> dict[str, Any]:
        from rolekeeper.handlers.healer import lambda_handler

        event = json.loads((EVENTS / event_file).read_text())
        event["detail"].update(detail)
        with contextlib.redirect_stdout(io.StringIO()):
            result: dict[str, Any] = lambda_handler(event, Context(function_name="rolekeeper-HealerFunction"))
        self.say(f"   healer: {result.get('outcome')} ({result.get('detail')})")
        if result.get("outcome") != "healed":
            self.failures += 1
        return result

    def status(self) -> None:
        from rolekeeper import cli
        from rolekeeper.config import settings

        table = settings().registry_table_name
        self.say("   $ rolekeeper status")
        for line in cli.render(cli.status(table), table).splitlines():
            self.say(f"     {line}" if line else "")
        self.say()


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


def main(out: TextIO = sys.stdout) -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    receiver = Receiver().start()
    try:
        with embedded_aws(POWERTOOLS_LOG_LEVEL="WARNING"):
            import boto3

            demo = Demo(receiver, out)
            demo.say(
                f"rolekeeper demo: AWS is moto at {boto3.client('iam').meta.endpoint_url}, CloudFormation's\n"
                f"responses go to 127.0.0.1:{receiver.port}. Every request sets OnDelete: Delete, so the last\n"
                "claim's Delete removes what rolekeeper created. After each step: what changed in AWS and in\n"
                "rolekeeper's registry (+ appeared, - went away, ~ changed).\n"
            )
            demo.last = snapshot()
            heal_and_delete(demo, build(demo))
    finally:
        receiver.stop()
    if demo.failures:
        demo.say(f"demo finished with {demo.failures} unexpected result(s)")
        return 1
    demo.say("demo finished: every request was answered once, as expected.\n")
    demo.say(NEXT_STEPS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
