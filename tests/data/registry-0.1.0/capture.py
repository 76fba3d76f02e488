"""Capture the registry items rolekeeper 0.1.0 writes (tests/data/registry-0.1.0/README.md).

Runs rolekeeper 0.1.0's own handlers (commit d0c42e5) under moto, made AWS-like by that commit's
tests/fidelity.py, through a representative set of requests, then dumps every DynamoDB item as
the table holds it (AttributeValue JSON), what 0.1.0 itself read from them (expected.json) and the
IAM/KMS state they describe (world.json). Not run by the test suite; run it with 0.1.0's venv:

    git worktree add /tmp/rk-0.1.0 d0c42e5 && make -C /tmp/rk-0.1.0 dev
    /tmp/rk-0.1.0/.venv/bin/python tests/data/registry-0.1.0/capture.py /tmp/rk-0.1.0
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if len(sys.argv) != 2:
    sys.exit(f"usage: <0.1.0 worktree>/.venv/bin/python {sys.argv[0]} <0.1.0 worktree>")
# 0.1.0's tests package (its conftest sets the environment on import); its venv runs its code.
sys.path.insert(0, str(Path(sys.argv[1]).resolve()))

import boto3  # noqa: E402
import pytest  # noqa: E402
from moto import mock_aws  # noqa: E402

from tests import cloudformation, conftest, fidelity  # noqa: E402  (0.1.0's)

os.environ.update({"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"})

ACCOUNT = conftest.ACCOUNT
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/app-boundary"
CLOUDWATCH = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
BATCH_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
# Fixed stack ids (the 0.1.0 test kit derives them from hash(), which varies per process).
STACK_IDS = {
    "app": f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f",
    "other": f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/other/6c0b8041-9b2c-11ef-b9c1-1b2c3d4e5f60",
}
REQUEST = "00000000-0000-4000-8000-{:012d}"


class Killed(BaseException):
    """Lambda ending the environment mid-invocation (nothing in the handler catches it)."""


class Stack(conftest.Stack):
    @property
    def stack_id(self) -> str:
        return STACK_IDS[self.name]


def main() -> None:
    patch = pytest.MonkeyPatch()
    deletion_tasks = fidelity.DeletionTasks()
    double = cloudformation.CloudFormation()
    cloudformation.install(patch, double)
    fidelity.install(patch, deletion_tasks)
    from rolekeeper.aws import iam as iam_ops
    from rolekeeper.handlers import custom_resource, healer
    from rolekeeper.healing import service as healing
    from rolekeeper.provisioning import service as provisioning

    patch.setattr(iam_ops, "sleep", lambda _s: None)
    patch.setattr(provisioning, "sleep", lambda _s: None)
    patch.setattr(healing, "sleep", lambda _s: None)
    patch.setattr(healing, "notify", lambda *_a: None)
    sent = conftest.Sent()
    patch.setattr(custom_resource.helper, "sender", sent)
    delivered: dict[str, dict[str, Any]] = {}  # every request's event, by RequestId
    handler = custom_resource.lambda_handler

    def recording(event: dict[str, Any], context: Any) -> Any:
        delivered[event["RequestId"]] = json.loads(json.dumps(event))
        return handler(event, context)

    patch.setattr(custom_resource, "lambda_handler", recording)
    with mock_aws():
        conftest.reset_clients()
        conftest.create_registry_table()
        custom_resource.provisioner.cache_clear()
        healer.healer.cache_clear()
        context = conftest.LambdaContext()
        app = Stack("app", sent, context, double)
        other = Stack("other", sent, context, double)
        scenario(app, other, deletion_tasks, patch)
        conftest.reset_clients()
        captured_at = time.time()
        write_out(captured_at, delivered)
    patch.undo()


def send(stack: Stack, number: int, event_file: str, **kwargs: Any) -> dict[str, Any]:
    response = stack.send(event_file, RequestId=REQUEST.format(number), **kwargs)
    assert response["Status"] == "SUCCESS", response
    return response


def scenario(
    app: Stack,
    other: Stack,
    deletion_tasks: fidelity.DeletionTasks,
    patch: pytest.MonkeyPatch,
) -> None:
    from rolekeeper.aws import iam as iam_ops
    from rolekeeper.handlers import custom_resource, healer

    iam = boto3.client("iam")
    kms = boto3.client("kms")
    iam.create_policy(
        PolicyName="app-boundary",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )
    # ecsInstanceRole, made by its owner (a tag and a policy of theirs), adopted by stack app.
    iam.create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
        Tags=[{"Key": "owner", "Value": "ops"}],
    )
    iam.attach_role_policy(RoleName="ecsInstanceRole", PolicyArn=CLOUDWATCH)
    send(app, 1, "role-ecs-instance-create.json")
    # An ecs-instance role rolekeeper creates (OnDelete Delete).
    send(
        app,
        2,
        "role-ecs-instance-create.json",
        logical_id="AppEcsRole",
        props={"RoleName": "app-ecs", "OnDelete": "Delete"},
    )
    # An application role with policies, tags and a boundary, claimed by two stacks.
    send(
        app,
        3,
        "role-ec2-application-create.json",
        props={"Tags": [{"Key": "team", "Value": "web"}], "PermissionsBoundary": BOUNDARY},
    )
    send(
        other,
        4,
        "role-ec2-application-create.json",
        logical_id="SharedWebRole",
        props={
            "ManagedPolicyArns": [CLOUDWATCH],
            "Tags": [{"Key": "env", "Value": "prod"}],
            "PermissionsBoundary": BOUNDARY,
            "OnDelete": "Retain",
        },
    )
    # The Spot Fleet service-linked role, and two KMS grants for it on one key.
    send(app, 5, "slr-create.json")
    key_arn = kms.create_key(Description="AMI key", Tags=conftest.OPT_IN)["KeyMetadata"]["Arn"]
    send(app, 6, "grant-create.json", props={"KeyId": key_arn})
    reissued = send(other, 7, "grant-create.json", logical_id="OtherAmiKeyGrant", props={"KeyId": key_arn})
    # The second one revoked by hand and re-issued by a heal (its record now names another grant).
    kms.revoke_grant(KeyId=key_arn, GrantId=reissued["Data"]["GrantId"])
    healer.healer.cache_clear()
    revoke = conftest.healer_event(
        "heal-revoke-grant.json", requestParameters={"keyId": key_arn, "grantId": reissued["Data"]["GrantId"]}
    )
    result = healer.lambda_handler(revoke, conftest.LambdaContext(function_name="rolekeeper-HealerFunction"))
    assert result["outcome"] == "healed", result
    # A role whose only claim was released with Retain.
    created = send(
        other,
        8,
        "role-ec2-application-create.json",
        logical_id="RetainedRole",
        props={"RoleName": "app-retained", "OnDelete": "Retain"},
    )
    send(
        other,
        9,
        "role-ec2-application-delete.json",
        logical_id="RetainedRole",
        props={"RoleName": "app-retained"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    # A service-linked role being deleted: its last claim released with OnDelete Delete, IAM's
    # deletion task still running (the record stays deleting, with the task id).
    spot = send(app, 10, "slr-spot-create.json", props={"OnDelete": "Delete"})
    deletion_tasks.asynchronous = True
    send(
        app,
        11,
        "slr-delete.json",
        logical_id="SpotServiceLinkedRole",
        props={"AWSServiceName": "spot.amazonaws.com", "OnDelete": "Delete"},
        PhysicalResourceId=spot["PhysicalResourceId"],
    )
    # Two records in the shapes 0.1.0 still read from older versions (edited in write_out): a
    # created role claimed by two stacks, and an adopted AWSBatchServiceRole.
    send(
        app,
        12,
        "role-ec2-application-create.json",
        logical_id="OldRole",
        props={"RoleName": "app-old", "Tags": [{"Key": "team", "Value": "old"}], "OnDelete": "Delete"},
    )
    send(
        other,
        13,
        "role-ec2-application-create.json",
        logical_id="OldRole",
        props={"RoleName": "app-old", "ManagedPolicyArns": [CLOUDWATCH], "OnDelete": "Retain"},
    )
    iam.create_role(
        RoleName="AWSBatchServiceRole",
        Path="/service-role/",
        AssumeRolePolicyDocument=json.dumps(BATCH_TRUST),
    )
    send(app, 14, "role-batch-service-create.json", props={"Path": "/service-role/"})
    # A busy request: an Update of app-ecs whose invocation ended mid-way (after the registry
    # noted it, before any answer).
    real_get_role = iam_ops.get_role

    def killed_at_get_role(name: str) -> Any:
        if name == "app-ecs":
            raise Killed
        return real_get_role(name)

    patch.setattr(iam_ops, "get_role", killed_at_get_role)
    busy = conftest.load_event(
        "role-ecs-instance-create.json",
        RequestType="Update",
        RequestId=REQUEST.format(15),
        StackId=app.stack_id,
        LogicalResourceId="AppEcsRole",
        PhysicalResourceId=f"arn:aws:iam::{ACCOUNT}:role/app-ecs",
    )
    busy["ResourceProperties"].update({"RoleName": "app-ecs", "OnDelete": "Delete", "Heal": "false"})
    busy["OldResourceProperties"] = {**busy["ResourceProperties"], "Heal": "true"}
    app.cfn.before(busy)
    try:
        custom_resource.lambda_handler(busy, app.context)  # the recording wrapper
    except Killed:
        pass
    else:
        raise AssertionError("the busy request was answered")
    timer = custom_resource.helper._timer  # 0.1.0's deadline timer: the environment is gone
    if timer is not None:
        timer.cancel()
    patch.setattr(iam_ops, "get_role", real_get_role)


def scan() -> list[dict[str, Any]]:
    client = boto3.client("dynamodb")
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=os.environ["REGISTRY_TABLE_NAME"]):
        items += page["Items"]
    return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"] != "OBJECT", i["sk"]["S"]))


def edit_older_shapes(items: list[dict[str, Any]]) -> list[str]:
    """Shapes 0.1.0 reads from versions before it (made from captured items; what was done)."""
    notes = []
    for item in items:
        pk, sk = item["pk"]["S"], item["sk"]["S"]
        if pk in ("ROLE#app-old", "ROLE#awsbatchservicerole") and sk == "OBJECT":
            item.pop("added", None)
            item.pop("pieces_tracked", None)
            notes.append(f"{pk} OBJECT: `added` and `pieces_tracked` removed")
        if pk == "ROLE#app-old" and sk == f"CLAIM#{STACK_IDS['app']}#OldRole":
            item.pop("wants")
            notes.append(f"{pk} claim of stack app: `wants` removed")
    return notes


def put_back(items: list[dict[str, Any]]) -> None:
    client = boto3.client("dynamodb")
    table = os.environ["REGISTRY_TABLE_NAME"]
    for page in client.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            client.delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
    for item in items:
        client.put_item(TableName=table, Item=item)


def expectations() -> dict[str, Any]:
    """What 0.1.0 itself reads from the items: each object's claims and their wants, the desired
    state and the pieces rolekeeper added (ownership.desired_of/added_of for roles)."""
    from rolekeeper.aws.registry import Registry
    from rolekeeper.domain import ownership

    out: dict[str, Any] = {}
    for record in Registry(os.environ["REGISTRY_TABLE_NAME"]).all():
        if record.kind == "role":
            wants = [ownership.wants_of([c.wants], record.desired)[0].to_dict() for c in record.claims]
            desired = ownership.desired_of(record).to_dict()
            added = sorted(ownership.added_of(record))
        else:
            wants = [c.wants if c.wants else record.desired for c in record.claims]
            desired = record.desired
            added = sorted(record.added) if record.added is not None else None
        out[record.key] = json.loads(
            json.dumps(
                {
                    "kind": record.kind,
                    "created": record.created,
                    "state": record.state,
                    "deletion_task_id": record.deletion_task_id,
                    "claim_count": record.claim_count,
                    "attrs": record.attrs,
                    "claims": [
                        {
                            "stack_id": c.stack_id,
                            "logical_id": c.logical_id,
                            "heal": c.heal,
                            "on_delete": c.on_delete,
                            "wants": w,
                        }
                        for c, w in sorted(zip(record.claims, wants, strict=True), key=lambda cw: cw[0].sk)
                    ],
                    "desired": desired,
                    "added": added,
                }
            )
        )
    return out


def world(deleting: dict[str, str]) -> dict[str, Any]:
    """IAM and KMS as 0.1.0 left them (what the items describe)."""
    iam = boto3.client("iam")
    kms = boto3.client("kms")
    roles = []
    for role in iam.get_paginator("list_roles").paginate().build_full_result()["Roles"]:
        name = role["RoleName"]
        full = iam.get_role(RoleName=name)["Role"]
        entry: dict[str, Any] = {"RoleName": name, "Path": full["Path"], "RoleId": full["RoleId"]}
        if full["Path"].startswith("/aws-service-role/"):
            entry["AWSServiceName"] = full["Path"].split("/")[2]
        else:
            entry["AssumeRolePolicyDocument"] = full["AssumeRolePolicyDocument"]
            entry["Tags"] = full.get("Tags", [])
            if boundary := full.get("PermissionsBoundary"):
                entry["PermissionsBoundary"] = boundary["PermissionsBoundaryArn"]
            entry["AttachedPolicies"] = sorted(
                p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
            )
            entry["InstanceProfiles"] = [
                {"InstanceProfileName": p["InstanceProfileName"], "Path": p["Path"]}
                for p in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
            ]
        roles.append(entry)
    policies = [
        {
            "PolicyName": p["PolicyName"],
            "Arn": p["Arn"],
            "Document": iam.get_policy_version(PolicyArn=p["Arn"], VersionId=p["DefaultVersionId"])[
                "PolicyVersion"
            ]["Document"],
        }
        for p in iam.list_policies(Scope="Local")["Policies"]
    ]
    keys = []
    for key in kms.list_keys()["Keys"]:
        meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        keys.append(
            {
                "KeyId": meta["KeyId"],
                "Arn": meta["Arn"],
                "Description": meta.get("Description", ""),
                "Tags": kms.list_resource_tags(KeyId=meta["KeyId"])["Tags"],
                "Grants": [
                    {
                        k: g[k]
                        for k in (
                            "GrantId",
                            "Name",
                            "GranteePrincipal",
                            "Operations",
                            "Constraints",
                            "RetiringPrincipal",
                        )
                        if g.get(k)
                    }
                    for g in kms.list_grants(KeyId=meta["KeyId"])["Grants"]
                ],
            }
        )
    return {
        "policies": policies,
        "roles": sorted(roles, key=lambda r: r["RoleName"].lower()),
        "keys": keys,
        "slr_deletions_in_progress": deleting,
    }


def file_name(pk: str, items: list[dict[str, Any]]) -> str:
    if pk.startswith("REQUEST#"):
        return "requests.json"
    kind, _, rest = pk.partition("#")
    if kind == "GRANT":
        claims = [i for i in items if i["sk"]["S"].startswith("CLAIM#")]
        rest = claims[0]["sk"]["S"].rsplit("#", 1)[1] if claims else rest.rsplit("#", 1)[1]
    objects = [i for i in items if i["sk"]["S"] == "OBJECT"]
    if objects and objects[0].get("kind", {}).get("S") == "slr":
        kind = "SLR"
    return f"{kind.lower()}-{rest.lower()}.json"


def write_out(captured_at: float, delivered: dict[str, dict[str, Any]]) -> None:
    items = scan()
    deleting = {
        i["deletion_task_id"]["S"]: i["name"]["S"]
        for i in items
        if i.get("deletion_task_id") and i["sk"]["S"] == "OBJECT"
    }
    notes = edit_older_shapes(items)
    put_back(items)
    expected = expectations()
    by_file: dict[str, list[dict[str, Any]]] = {}
    by_pk: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_pk.setdefault(item["pk"]["S"], []).append(item)
    for pk, group in by_pk.items():
        by_file.setdefault(file_name(pk, group), []).extend(group)
    for old in HERE.glob("*.json"):
        old.unlink()
    for name, group in sorted(by_file.items()):
        (HERE / name).write_text(json.dumps(group, indent=1, sort_keys=True) + "\n")
    (HERE / "expected.json").write_text(
        json.dumps(
            {
                "captured_at": round(captured_at, 3),
                "edited": notes,
                "objects": expected,
                "busy_request": REQUEST.format(15),
                "events": delivered,
                "stacks": STACK_IDS,
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    (HERE / "world.json").write_text(
        json.dumps(world(deleting), indent=1, sort_keys=True, default=str) + "\n"
    )
    print(f"{len(items)} items in {len(by_file)} files; edited: {notes}")


if __name__ == "__main__":
    main()
