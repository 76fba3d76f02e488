"""Records written by rolekeeper 0.1.0, as its own handlers wrote them (tests/data/registry-0.1.0,
captured under moto; its README says how), read by this version as 0.1.0 meant them, worked on by
every writer, and upgraded to format 2 on each object's next write.

Each test loads the captured items into the registry table and builds the IAM and KMS state they
describe (world.json). AWS assigns role ids, key ids, grant ids and deletion task ids itself, so
the ones recorded at capture are swapped for the ones made here, in the items and in what 0.1.0
read from them (expected.json), before anything is loaded; nothing else is changed.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

from tools.devkit.clock import FakeClock
from tools.devkit.cloudformation import CloudFormation
from tools.devkit.events import EVENTS, healer_event
from tools.devkit.fidelity import DeletionTasks
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

DATA = Path(__file__).resolve().parent.parent / "data" / "registry-0.1.0"
CAPTURED = json.loads((DATA / "expected.json").read_text())
WORLD = json.loads((DATA / "world.json").read_text())
ITEM_FILES = sorted(p for p in DATA.glob("*.json") if p.name not in ("expected.json", "world.json"))
ACCOUNT = "123456789012"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
CLOUDWATCH = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/app-boundary"
THIRD = f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/third/7d1c9152-ac3d-11ef-8ad2-2c3d4e5f6071"
SCHEDULED = json.loads((EVENTS / "heal-scheduled.json").read_text())
# The captured requests (their RequestIds end in these numbers; capture.py lists them).
ECS_ADOPTED, APP_ECS, WEB_APP, WEB_OTHER, SPOT_FLEET_SLR, GRANT_APP, GRANT_OTHER = 1, 2, 3, 4, 5, 6, 7
RETAINED_CREATE, SPOT_SLR = 8, 10
OLD_APP, OLD_OTHER, BATCH, BUSY_UPDATE = 12, 13, 14, 15

_deserialize = TypeDeserializer().deserialize


def _number(request: int) -> str:
    return f"00000000-0000-4000-8000-{request:012d}"


@dataclass
class Legacy:
    """The registry and AWS as 0.1.0 left them, and CloudFormation's side of its resources."""

    ids: dict[str, str]
    cfn: CloudFormation
    sent: Sent
    clock: FakeClock
    deletion_tasks: DeletionTasks
    table: str = field(default_factory=lambda: os.environ["REGISTRY_TABLE_NAME"])

    # --- the captured data, with this world's ids -----------------------------------------------

    def swap(self, value: Any) -> Any:
        text = json.dumps(value)
        for captured, made in self.ids.items():
            text = text.replace(captured, made)
        return json.loads(text)

    @property
    def expected(self) -> dict[str, Any]:
        """What 0.1.0 read from each object item: its claims and their wants, its desired state
        and the pieces rolekeeper added (ownership.desired_of/added_of), by registry key."""
        return self.swap(CAPTURED["objects"])  # type: ignore[no-any-return]

    def grant_key(self, logical_id: str) -> str:
        return next(
            key
            for key, o in self.expected.items()
            if o["kind"] == "grant" and any(c["logical_id"] == logical_id for c in o["claims"])
        )

    def captured_event(self, request: int) -> dict[str, Any]:
        return self.swap(copy.deepcopy(CAPTURED["events"][_number(request)]))  # type: ignore[no-any-return]

    # --- requests, as CloudFormation sends them ----------------------------------------------------

    def deliver(
        self, event: dict[str, Any], *, context: LambdaContext | None = None
    ) -> dict[str, Any] | None:
        """One invocation of the provisioner (CloudFormation's state set for the request first);
        the answer it sent, None if it sent none."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        before = len(self.sent.responses)
        self.cfn.before(event)
        lambda_handler(copy.deepcopy(event), context or LambdaContext(aws_request_id=str(uuid.uuid4())))
        # Answers to this request (another invocation may answer its own meanwhile).
        answers = [a for a in self.sent.responses[before:] if a["RequestId"] == event["RequestId"]]
        assert len(answers) <= 1, f"{len(answers)} answers to one request"
        if not answers:
            return None
        self.cfn.after(event, answers[0])
        return answers[0]

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        answer = self.deliver(event)
        assert answer is not None, "no answer"
        assert answer["Status"] == "SUCCESS", answer["Reason"]
        return answer

    def resource(self, request: int) -> tuple[dict[str, Any], str]:
        """The captured Create's event and the physical id 0.1.0 answered for it."""
        event = self.captured_event(request)
        claim = (event["StackId"], event["LogicalResourceId"])
        for key, o in self.expected.items():
            if any((c["stack_id"], c["logical_id"]) == claim for c in o["claims"]):
                return event, (key.removeprefix("GRANT#") if o["kind"] == "grant" else o["attrs"]["arn"])
        raise AssertionError(f"no record claimed by request {request}")

    def create(
        self, request: int, *, stack_id: str = THIRD, logical_id: str = "", **props: Any
    ) -> dict[str, Any]:
        """A Create like captured request `request` (its properties, with props) from another stack."""
        event = self.captured_event(request)
        event.update(RequestId=str(uuid.uuid4()), StackId=stack_id)
        event["LogicalResourceId"] = logical_id or event["LogicalResourceId"]
        event["ResourceProperties"].update(props)
        return event

    def update(self, request: int, **props: Any) -> dict[str, Any]:
        """An Update of the resource captured request `request` created."""
        created, physical_id = self.resource(request)
        event = copy.deepcopy(created)
        event.update(RequestType="Update", RequestId=str(uuid.uuid4()), PhysicalResourceId=physical_id)
        event["OldResourceProperties"] = created["ResourceProperties"]
        event["ResourceProperties"] = {**created["ResourceProperties"], **props}
        return event

    def delete(self, request: int) -> dict[str, Any]:
        """The Delete of the resource captured request `request` created."""
        created, physical_id = self.resource(request)
        event = copy.deepcopy(created)
        event.update(RequestType="Delete", RequestId=str(uuid.uuid4()), PhysicalResourceId=physical_id)
        return event

    def heal(self, event: dict[str, Any]) -> dict[str, Any]:
        from rolekeeper.handlers import healer

        result = healer.lambda_handler(
            copy.deepcopy(event), LambdaContext(function_name="rolekeeper-HealerFunction")
        )
        return result  # type: ignore[no-any-return]

    # --- the registry as stored ------------------------------------------------------------------

    def items(self, key: str) -> list[dict[str, Any]]:
        """The partition's items as DynamoDB holds them (AttributeValues)."""
        client = boto3.client("dynamodb")
        return client.query(  # type: ignore[no-any-return]
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": key}},
            ConsistentRead=True,
        )["Items"]

    def object_item(self, key: str) -> dict[str, Any] | None:
        found = [i for i in self.items(key) if i["sk"]["S"] == "OBJECT"]
        return {k: _deserialize(v) for k, v in found[0].items()} if found else None

    def record(self, key: str) -> Any:
        from rolekeeper.aws.registry import Registry

        return Registry(self.table).objects.read(key)


def build_world(deletion_tasks: DeletionTasks) -> dict[str, str]:
    """IAM and KMS as 0.1.0 left them (world.json); returns captured id -> id made here."""
    iam, kms = boto3.client("iam"), boto3.client("kms")
    ids: dict[str, str] = {}

    def swapped(value: Any) -> Any:
        text = json.dumps(value)
        for captured, made in ids.items():
            text = text.replace(captured, made)
        return json.loads(text)

    for policy in WORLD["policies"]:
        made = iam.create_policy(
            PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["Document"])
        )
        assert made["Policy"]["Arn"] == policy["Arn"]
    for role in WORLD["roles"]:
        if "AWSServiceName" in role:
            iam.create_service_linked_role(AWSServiceName=role["AWSServiceName"])
            ids[role["RoleId"]] = iam.get_role(RoleName=role["RoleName"])["Role"]["RoleId"]
            continue
        options: dict[str, Any] = {"Tags": role["Tags"]} if role["Tags"] else {}
        if "PermissionsBoundary" in role:
            options["PermissionsBoundary"] = role["PermissionsBoundary"]
        made = iam.create_role(
            RoleName=role["RoleName"],
            Path=role["Path"],
            AssumeRolePolicyDocument=json.dumps(role["AssumeRolePolicyDocument"]),
            **options,
        )["Role"]
        ids[role["RoleId"]] = made["RoleId"]
        for arn in role["AttachedPolicies"]:
            iam.attach_role_policy(RoleName=role["RoleName"], PolicyArn=arn)
        for profile in role["InstanceProfiles"]:
            iam.create_instance_profile(
                InstanceProfileName=profile["InstanceProfileName"], Path=profile["Path"]
            )
            iam.add_role_to_instance_profile(
                InstanceProfileName=profile["InstanceProfileName"], RoleName=role["RoleName"]
            )
    for key in swapped(WORLD["keys"]):
        made = kms.create_key(Description=key["Description"], Tags=key["Tags"])["KeyMetadata"]
        ids[key["KeyId"]] = made["KeyId"]
        for grant in swapped(key["Grants"]):
            options = {k: grant[k] for k in ("Constraints", "RetiringPrincipal") if k in grant}
            ids[grant["GrantId"]] = kms.create_grant(
                KeyId=made["KeyId"],
                GranteePrincipal=grant["GranteePrincipal"],
                Operations=grant["Operations"],
                Name=grant["Name"],
                **options,
            )["GrantId"]
    deletion_tasks.asynchronous = True
    for task_id, role_name in WORLD["slr_deletions_in_progress"].items():
        ids[task_id] = iam.delete_service_linked_role(RoleName=role_name)["DeletionTaskId"]
    deletion_tasks.asynchronous = False
    return ids


@pytest.fixture
def legacy(
    aws: None,
    sent: Sent,
    cfn: CloudFormation,
    deletion_tasks: DeletionTasks,
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Legacy]:
    from rolekeeper.healing import service as healing

    monkeypatch.setattr(healing, "notify", lambda *_args: None)
    ids = build_world(deletion_tasks)
    world = Legacy(ids, cfn, sent, fake_clock, deletion_tasks)
    client = boto3.client("dynamodb")
    for path in ITEM_FILES:
        for item in world.swap(json.loads(path.read_text())):
            client.put_item(TableName=world.table, Item=item)
    # The test starts a second after the capture (a 0.1.0 invocation's lease on the busy request
    # is still running); time moves only when rolekeeper waits (tests/conftest.py FakeClock).
    fake_clock.offset = CAPTURED["captured_at"] + 1 - time.time()
    rebuild_handlers()
    yield world
    rebuild_handlers()


# --- (a) read as 0.1.0 meant them -----------------------------------------------------------------


def _spec(kind: str, wants: dict[str, Any]) -> Any:
    """A claim's wants as the spec rolekeeper acts on (a role's through RoleSpec, so a JSON list
    and a tuple compare equal)."""
    from rolekeeper.domain.specs import RoleSpec

    plain = json.loads(json.dumps(wants))
    return json.loads(json.dumps(RoleSpec.from_dict(plain).to_dict())) if kind == "role" else plain


def _as_read(record: Any) -> dict[str, Any]:
    """A record as this version reads it, in the terms expected.json records 0.1.0's reading."""
    from rolekeeper.domain import ownership

    kind = str(record.kind)
    claims = sorted(record.claims, key=lambda c: c.sk)
    if kind == "role":
        # A role no claim holds any more wants nothing now; 0.1.0 read its last desired state.
        desired = (
            ownership.desired_of(record).to_dict() if record.claims else _spec(kind, record.legacy_desired)
        )
        added: list[str] | None = sorted(ownership.added_of(record))
    else:
        desired = record.spec()
        added = sorted(record.added) if record.added is not None else None
    return {
        "kind": kind,
        "created": record.created,
        "state": str(record.state),
        "deletion_task_id": record.deletion_task_id,
        "claim_count": record.claim_count,
        "attrs": record.attrs,
        "claims": [
            {
                "stack_id": c.stack_id,
                "logical_id": c.logical_id,
                "heal": c.heal,
                "on_delete": c.on_delete,
                "wants": _spec(kind, wants),
            }
            for c, wants in zip(claims, record.wants(claims), strict=True)
        ],
        "desired": _spec(kind, desired),
        "added": added,
    }


def _normalized(expected: dict[str, Any]) -> dict[str, Any]:
    kind = expected["kind"]
    return {
        **expected,
        "claims": [{**c, "wants": _spec(kind, c["wants"])} for c in expected["claims"]],
        "desired": _spec(kind, expected["desired"]),
    }


def test_registry_upgrade_reads_every_0_1_0_record_as_0_1_0_meant_it(legacy: Legacy) -> None:
    from rolekeeper.aws.registry import Registry

    records = {r.key: r for r in Registry(legacy.table).objects.all()}
    expected = legacy.expected
    assert sorted(records) == sorted(expected)
    for key, meant in expected.items():
        assert _as_read(records[key]) == _normalized(meant), key
    # The older shapes 0.1.0 still read: a claim without wants asks for the object's desired
    # state; a created role without an added set counts everything desired as rolekeeper's, an
    # adopted one nothing.
    old = records["ROLE#app-old"]
    assert [c.wants for c in old.claims if c.logical_id == "OldRole"].count(None) == 1
    assert old.added is None and records["ROLE#awsbatchservicerole"].added is None
    assert _as_read(old)["added"] == sorted([f"policy:{SSM}", f"policy:{CLOUDWATCH}", "profile", "tag:team"])
    assert _as_read(records["ROLE#awsbatchservicerole"])["added"] == []


# --- (b), (c) every writer works on them; the next write upgrades -----------------------------------


def assert_format_2(legacy: Legacy, key: str) -> dict[str, Any]:
    """The object item and its claims in format 2: the spec stored once (no `desired`, each
    claim's wants a map, no claim repeating its own key), no `pieces_tracked`. Returns the object."""
    items = legacy.items(key)
    (raw,) = [i for i in items if i["sk"]["S"] == "OBJECT"]
    assert raw.get("format") == {"N": "2"}, raw
    assert "desired" not in raw and "pieces_tracked" not in raw, sorted(raw)
    for claim in (i for i in items if i["sk"]["S"].startswith("CLAIM#")):
        assert "M" in claim["wants"], claim
        assert "stack_id" not in claim and "logical_id" not in claim, sorted(claim)
    return {k: _deserialize(v) for k, v in raw.items()}


def assert_format_1(legacy: Legacy, key: str) -> None:
    """Not written since 0.1.0 (a writer that changed nothing leaves the item as it was)."""
    item = legacy.object_item(key)
    assert item is not None and "format" not in item, item


def claims_as_read(legacy: Legacy, key: str) -> dict[str, Any]:
    record = legacy.record(key)
    return {
        c.logical_id + "@" + c.stack_id.split("/")[1]: _spec(str(record.kind), w)
        for c, w in zip(record.claims, record.wants(), strict=True)
    }


def expected_claims(legacy: Legacy, key: str) -> dict[str, Any]:
    meant = legacy.expected[key]
    return {
        c["logical_id"] + "@" + c["stack_id"].split("/")[1]: _spec(meant["kind"], c["wants"])
        for c in meant["claims"]
    }


def role_state(name: str) -> dict[str, Any]:
    iam = boto3.client("iam")
    role = iam.get_role(RoleName=name)["Role"]
    return {
        "policies": sorted(
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        ),
        "tags": {t["Key"]: t["Value"] for t in role.get("Tags", [])},
        "boundary": (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn"),
        "profiles": sorted(
            p["InstanceProfileName"]
            for p in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
        ),
        "role_id": role["RoleId"],
    }


@pytest.mark.parametrize(
    ("key", "request_number"),
    [
        ("ROLE#app-web", WEB_APP),
        ("ROLE#ecsinstancerole", ECS_ADOPTED),
        ("ROLE#app-ecs", APP_ECS),
        ("ROLE#app-old", OLD_APP),
        ("ROLE#app-retained", RETAINED_CREATE),
        ("ROLE#awsbatchservicerole", BATCH),
        ("ROLE#awsserviceroleforec2spotfleet", SPOT_FLEET_SLR),
    ],
)
def test_registry_upgrade_a_create_by_another_stack_upgrades_and_keeps_every_claim_and_piece(
    legacy: Legacy, key: str, request_number: int
) -> None:
    """Stack third claims the object with the properties the captured Create had."""
    name = legacy.expected[key]["attrs"]["name"]
    before = role_state(name)
    event = legacy.create(request_number)
    answer = legacy.send(event)
    assert answer["Data"]["RoleId"] == before["role_id"]
    item = assert_format_2(legacy, key)
    meant = legacy.expected[key]
    # The claims 0.1.0 wrote ask for what they asked for; the new one joins them.
    claims = claims_as_read(legacy, key)
    new = claims.pop(f"{event['LogicalResourceId']}@third")
    assert claims == expected_claims(legacy, key)
    assert new.get("name", new.get("service_name")) in (name, "spotfleet.amazonaws.com"), new
    # What 0.1.0 counted as rolekeeper's stays recorded as its own (an adopted role's older
    # record: nothing), and nothing more: the Create asked for nothing the role lacked.
    if meant["kind"] == "role":
        assert set(item.get("added", set())) == set(meant["added"])
    assert role_state(name) == before, "the role already had everything the new claim asks for"


def test_registry_upgrade_an_update_takes_away_what_0_1_0_added_and_no_claim_wants(legacy: Legacy) -> None:
    # app-web: 0.1.0 recorded SSM (stack app's) and CloudWatch (stack other's) as added.
    legacy.send(legacy.update(WEB_APP, ManagedPolicyArns=[]))
    assert role_state("app-web")["policies"] == [CLOUDWATCH]
    item = assert_format_2(legacy, "ROLE#app-web")
    assert set(item["added"]) == set(legacy.expected["ROLE#app-web"]["added"]) - {f"policy:{SSM}"}
    claims = claims_as_read(legacy, "ROLE#app-web")
    assert claims["SharedWebRole@other"] == expected_claims(legacy, "ROLE#app-web")["SharedWebRole@other"]
    assert claims["WebAppRole@app"]["policy_arns"] == []
    # app-old, in a shape from before 0.1.0 (no added set, stack app's claim without wants): all it
    # desired counted as rolekeeper's, so what the Update no longer wants goes.
    legacy.send(legacy.update(OLD_APP, Tags=[], ManagedPolicyArns=[]))
    state = role_state("app-old")
    assert state["policies"] == [CLOUDWATCH] and "team" not in state["tags"]
    item = assert_format_2(legacy, "ROLE#app-old")
    assert set(item["added"]) == {f"policy:{CLOUDWATCH}", "profile"}
    assert claims_as_read(legacy, "ROLE#app-old")["OldRole@other"]["policy_arns"] == [CLOUDWATCH]


def test_registry_upgrade_a_release_with_retain_takes_away_only_what_0_1_0_added(legacy: Legacy) -> None:
    # Stack other lets app-web go (Retain): CloudWatch and tag env were only its, and rolekeeper's.
    assert legacy.send(legacy.delete(WEB_OTHER))
    state = role_state("app-web")
    assert state["policies"] == [SSM] and state["tags"] == {"team": "web", "rolekeeper:managed": "true"}
    assert state["boundary"] == BOUNDARY and state["profiles"] == ["app-web"]
    item = assert_format_2(legacy, "ROLE#app-web")
    assert set(item["added"]) == set(legacy.expected["ROLE#app-web"]["added"]) - {
        f"policy:{CLOUDWATCH}",
        "tag:env",
    }
    assert list(claims_as_read(legacy, "ROLE#app-web")) == ["WebAppRole@app"]
    # ecsInstanceRole was adopted: its owner's policy and tag were never rolekeeper's. Another
    # stack claims it, then stack app lets go (Retain): what the claims no longer want is only
    # what 0.1.0 did not add, so nothing goes.
    before = role_state("ecsInstanceRole")
    legacy.send(legacy.create(ECS_ADOPTED))
    legacy.send(legacy.delete(ECS_ADOPTED))
    assert role_state("ecsInstanceRole") == before
    assert CLOUDWATCH in before["policies"] and before["tags"] == {"owner": "ops"}
    item = assert_format_2(legacy, "ROLE#ecsinstancerole")
    assert set(item["added"]) == {f"policy:{ECS_POLICY}", "profile"}
    # The last claim goes with Retain: the role stays as it is, its record unclaimed.
    legacy.send(legacy.delete(ECS_ADOPTED) | {"StackId": THIRD})
    assert role_state("ecsInstanceRole") == before
    record = legacy.record("ROLE#ecsinstancerole")
    assert record.claims == [] and record.claim_count == 0


def test_registry_upgrade_a_release_with_delete_takes_away_or_deletes_what_0_1_0_made(legacy: Legacy) -> None:
    # app-web: stack app lets go with OnDelete Delete while stack other holds it: the role stays,
    # without what only stack app wanted (SSM, tag team; 0.1.0 recorded both as added).
    legacy.send(legacy.delete(WEB_APP))
    state = role_state("app-web")
    assert state["policies"] == [CLOUDWATCH]
    assert state["tags"] == {"env": "prod", "rolekeeper:managed": "true"}
    assert_format_2(legacy, "ROLE#app-web")
    # app-old (no added set, stack app's claim without wants): the same, from what it desired.
    legacy.send(legacy.delete(OLD_APP))
    state = role_state("app-old")
    assert state["policies"] == [CLOUDWATCH] and "team" not in state["tags"]
    assert set(assert_format_2(legacy, "ROLE#app-old")["added"]) == {f"policy:{CLOUDWATCH}", "profile"}
    # app-ecs: its only claim, OnDelete Delete: the role and the instance profile 0.1.0 made go.
    legacy.send(legacy.delete(APP_ECS))
    iam = boto3.client("iam")
    assert "app-ecs" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert "app-ecs" not in {
        p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
    }
    assert legacy.items("ROLE#app-ecs") == []


def test_registry_upgrade_a_heal_after_a_detach_puts_back_and_upgrades(legacy: Legacy) -> None:
    iam = boto3.client("iam")
    iam.detach_role_policy(RoleName="ecsInstanceRole", PolicyArn=ECS_POLICY)
    assert legacy.heal(healer_event("heal-detach-role-policy.json"))["outcome"] == "healed"
    assert ECS_POLICY in role_state("ecsInstanceRole")["policies"]
    item = assert_format_2(legacy, "ROLE#ecsinstancerole")
    assert set(item["added"]) == {f"policy:{ECS_POLICY}", "profile"}
    assert claims_as_read(legacy, "ROLE#ecsinstancerole") == expected_claims(legacy, "ROLE#ecsinstancerole")
    # app-old kept no added set: its heal records what 0.1.0 counted as rolekeeper's.
    iam.detach_role_policy(RoleName="app-old", PolicyArn=SSM)
    detach = healer_event(
        "heal-detach-role-policy.json", requestParameters={"roleName": "app-old", "policyArn": SSM}
    )
    assert legacy.heal(detach)["outcome"] == "healed"
    assert SSM in role_state("app-old")["policies"]
    item = assert_format_2(legacy, "ROLE#app-old")
    assert sorted(item["added"]) == legacy.expected["ROLE#app-old"]["added"]
    assert claims_as_read(legacy, "ROLE#app-old") == expected_claims(legacy, "ROLE#app-old")


def test_registry_upgrade_the_scheduled_reconcile_repairs_and_upgrades_what_it_writes(legacy: Legacy) -> None:
    iam, kms = boto3.client("iam"), boto3.client("kms")
    other_grant = legacy.grant_key("OtherAmiKeyGrant")
    key_arn, live = (
        legacy.expected[other_grant]["attrs"]["key_arn"],
        legacy.expected[other_grant]["attrs"]["grant_id"],
    )
    kms.revoke_grant(KeyId=key_arn, GrantId=live)  # the grant a heal re-issued under 0.1.0
    iam.detach_role_policy(RoleName="app-web", PolicyArn=CLOUDWATCH)
    iam.remove_role_from_instance_profile(InstanceProfileName="app-old", RoleName="app-old")
    result = legacy.heal(SCHEDULED)
    assert result["outcome"] == "reconciled" and result.get("healed") == 3, result
    assert CLOUDWATCH in role_state("app-web")["policies"]
    assert role_state("app-old")["profiles"] == ["app-old"]
    grants = kms.list_grants(KeyId=key_arn)["Grants"]
    record = legacy.record(other_grant)
    assert record.attrs["grant_id"] in {g["GrantId"] for g in grants} and record.attrs["grant_id"] != live
    for key in ("ROLE#app-web", "ROLE#app-old", other_grant):
        assert_format_2(legacy, key)
        assert claims_as_read(legacy, key) == expected_claims(legacy, key)
    # What was healthy was only read: still as 0.1.0 wrote it, and still read the same.
    for key in (
        "ROLE#ecsinstancerole",
        "ROLE#app-ecs",
        "ROLE#awsbatchservicerole",
        legacy.grant_key("SpotFleetAmiKeyGrant"),
    ):
        assert_format_1(legacy, key)
    # Neither the role no claim holds nor the one being deleted was touched.
    assert_format_1(legacy, "ROLE#app-retained")
    assert_format_1(legacy, "ROLE#awsserviceroleforec2spot")
    # The second run finds nothing to do.
    again = legacy.heal(SCHEDULED)
    assert again["outcome"] == "reconciled" and "healed" not in again, again


def test_registry_upgrade_a_grant_delete_revokes_the_grant_0_1_0_recorded(legacy: Legacy) -> None:
    kms = boto3.client("kms")
    first, reissued = legacy.grant_key("SpotFleetAmiKeyGrant"), legacy.grant_key("OtherAmiKeyGrant")
    key_arn = legacy.expected[first]["attrs"]["key_arn"]
    live = {legacy.expected[k]["attrs"]["grant_id"] for k in (first, reissued)}
    assert {g["GrantId"] for g in kms.list_grants(KeyId=key_arn)["Grants"]} == live
    legacy.send(legacy.delete(GRANT_APP))
    assert legacy.items(first) == []
    assert {g["GrantId"] for g in kms.list_grants(KeyId=key_arn)["Grants"]} == live - {
        legacy.expected[first]["attrs"]["grant_id"]
    }
    # The one a heal re-issued under 0.1.0: its physical id names the grant it replaced; the
    # record's live grant goes.
    assert reissued.rsplit("#", 1)[1] != legacy.expected[reissued]["attrs"]["grant_id"]
    legacy.send(legacy.delete(GRANT_OTHER))
    assert legacy.items(reissued) == []
    assert kms.list_grants(KeyId=key_arn)["Grants"] == []


def test_registry_upgrade_rolekeeper_status_lists_every_0_1_0_record(
    legacy: Legacy, capsys: pytest.CaptureFixture[str]
) -> None:
    from rolekeeper import cli

    capsys.readouterr()
    cli.main(["status", "--json"])  # exit code 1: the unclaimed role (below)
    report = json.loads(capsys.readouterr().out)
    objects = {o["key"]: o for o in report["objects"]}
    assert sorted(objects) == sorted(legacy.expected)
    for key, meant in legacy.expected.items():
        entry = objects[key]
        assert entry["created_by_rolekeeper"] is meant["created"], key
        assert sorted((c["stack_id"], c["logical_id"], c["on_delete"]) for c in entry["claims"]) == sorted(
            (c["stack_id"], c["logical_id"], c["on_delete"]) for c in meant["claims"]
        ), key
        if meant["claims"]:
            assert _spec(meant["kind"], entry["desired"]) == _spec(meant["kind"], meant["desired"]), key
            assert entry["drift"] == [], (key, entry["drift"])
    assert (
        objects["ROLE#awsserviceroleforec2spot"]["deleting"]["deletion_task_id"]
        == (legacy.expected["ROLE#awsserviceroleforec2spot"]["deletion_task_id"])
    )
    # A role no claim holds wants nothing, so no drift can be judged of it ("could not check":
    # the same for a role this version released; not a matter of the format).
    unclaimed = {k for k, o in legacy.expected.items() if not o["claims"] and o["kind"] == "role"}
    assert unclaimed == {"ROLE#app-retained"}
    assert [k for k, o in objects.items() if o["drift"] and k not in unclaimed] == []
    assert objects["ROLE#app-retained"]["desired"]["policy_arns"] == [SSM]  # what 0.1.0 last desired


# --- (d) requests 0.1.0 answered or was working on --------------------------------------------------


def test_registry_upgrade_a_redelivery_of_a_request_0_1_0_answered_gets_no_second_answer(
    legacy: Legacy,
) -> None:
    iam = boto3.client("iam")
    before = {key: legacy.items(key) for key in ("ROLE#app-ecs", f"REQUEST#{_number(APP_ECS)}")}
    roles = sorted(r["RoleName"] for r in iam.list_roles()["Roles"])
    # Delivered again while CloudFormation still shows the Create in progress (the one moment a
    # redelivery passes confirmation), and again once it has moved on.
    event = legacy.captured_event(APP_ECS)
    assert legacy.deliver(event) is None
    legacy.cfn.set(
        event["StackId"], event["LogicalResourceId"], "CREATE_COMPLETE", legacy.resource(APP_ECS)[1]
    )
    from rolekeeper.handlers.custom_resource import lambda_handler

    lambda_handler(copy.deepcopy(event), LambdaContext(aws_request_id=str(uuid.uuid4())))
    assert len(legacy.sent.responses) == 0
    assert {key: legacy.items(key) for key in before} == before
    assert sorted(r["RoleName"] for r in iam.list_roles()["Roles"]) == roles


def test_registry_upgrade_a_request_0_1_0_was_working_on_is_answered_once_its_invocation_is_over(
    legacy: Legacy,
) -> None:
    # 0.1.0's invocation noted the Update (Heal true -> false) and ended before answering; its
    # deadline has not passed: a redelivery now is left to it.
    busy = legacy.captured_event(BUSY_UPDATE)
    assert legacy.deliver(busy) is None
    assert legacy.record("ROLE#app-ecs").claims[0].heal is True
    # Past that invocation's deadline, the next delivery works on the request and answers it.
    (noted,) = legacy.items(f"REQUEST#{_number(BUSY_UPDATE)}")
    assert "answered_at" not in noted
    legacy.clock.sleep(int(noted["busy_until"]["N"]) + 1 - legacy.clock.now())
    answer = legacy.deliver(busy)
    assert answer is not None and answer["Status"] == "SUCCESS", answer
    assert answer["PhysicalResourceId"] == legacy.resource(APP_ECS)[1]
    assert_format_2(legacy, "ROLE#app-ecs")
    (claim,) = legacy.record("ROLE#app-ecs").claims
    assert claim.heal is False and claim.wants == legacy.swap(
        legacy.expected["ROLE#app-ecs"]["claims"][0]["wants"]
    )
    # And it stays answered once.
    assert legacy.deliver(busy) is None


def test_registry_upgrade_an_object_0_1_0_was_deleting_is_created_anew_once_the_deletion_finished(
    legacy: Legacy,
) -> None:
    key = "ROLE#awsserviceroleforec2spot"
    create = legacy.create(SPOT_SLR, stack_id=CAPTURED["stacks"]["app"], logical_id="SpotAgain")
    # IAM is still deleting it: the Create waits (bounded), then asks for a retry.
    answer = legacy.deliver(create)
    assert answer is not None and answer["Status"] == "FAILED" and "being deleted" in answer["Reason"]
    assert legacy.object_item(key)["state"] == "deleting"
    legacy.deletion_tasks.finish()
    create["RequestId"] = str(uuid.uuid4())
    answer = legacy.send(create)
    role = boto3.client("iam").get_role(RoleName="AWSServiceRoleForEC2Spot")["Role"]
    assert answer["Data"]["RoleId"] == role["RoleId"] != legacy.expected[key]["attrs"]["role_id"]
    item = assert_format_2(legacy, key)
    assert item.get("state") is None and item["created"] is True


# --- writers racing the upgrade -----------------------------------------------------------------------


def test_registry_upgrade_a_writer_that_read_the_0_1_0_record_never_writes_over_a_claim_changed_since(
    legacy: Legacy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Create (a writer that only adds: it does not check the version it read) read app-old as
    0.1.0 left it; before its write, stack app's Update upgraded the record and took SSM and tag
    team away. The Create's write must not put back stack app's claim as 0.1.0 read it."""
    from tests.staging import Stage

    stage = Stage().install(monkeypatch)
    update = legacy.update(OLD_APP, ManagedPolicyArns=[], Tags=[])
    updated: list[dict[str, Any]] = []
    stage.at(
        "create",
        "TransactWriteItems",
        lambda _call: updated.append(stage.run("update", lambda: legacy.send(update)).result),
    )
    created = stage.run("create", lambda: legacy.send(legacy.create(OLD_OTHER)))
    assert created.error is None and updated and updated[0] is not None, created.error
    claims = claims_as_read(legacy, "ROLE#app-old")
    assert (claims["OldRole@app"]["policy_arns"], claims["OldRole@app"]["tags"]) == ([], {}), (
        "stack app's Update was written over"
    )
    assert set(assert_format_2(legacy, "ROLE#app-old")["added"]) == {f"policy:{CLOUDWATCH}", "profile"}
    state = role_state("app-old")
    assert state["policies"] == [CLOUDWATCH] and "team" not in state["tags"]
    # What the registry says is wanted is what the schedule keeps: SSM stays detached.
    assert legacy.heal(SCHEDULED)["outcome"] == "reconciled"
    assert role_state("app-old")["policies"] == [CLOUDWATCH]


def test_registry_upgrade_a_record_with_more_claims_than_one_transaction_holds_keeps_what_they_want(
    legacy: Legacy,
) -> None:
    """A DynamoDB transaction holds at most 100 items: a record whose claims do not all fit in one
    with the write cannot be upgraded by it, and must keep the spec its claims without wants ask
    for. Made from the captured app-old: its claim without wants copied for 100 more stacks."""
    client = boto3.client("dynamodb")
    (wantless,) = [
        i for i in legacy.items("ROLE#app-old") if i["sk"]["S"].startswith("CLAIM#") and "wants" not in i
    ]

    def fleet(n: int) -> str:
        return f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/fleet-{n}/{uuid.UUID(int=n)}"

    for n in range(100):
        stack_id = fleet(n)
        client.put_item(
            TableName=legacy.table,
            Item={**wantless, "sk": {"S": f"CLAIM#{stack_id}#OldRole"}, "stack_id": {"S": stack_id}},
        )
    client.update_item(
        TableName=legacy.table,
        Key={"pk": {"S": "ROLE#app-old"}, "sk": {"S": "OBJECT"}},
        UpdateExpression="ADD claim_count :n",
        ExpressionAttributeValues={":n": {"N": "100"}},
    )
    desired = _spec("role", legacy.expected["ROLE#app-old"]["desired"])
    legacy.send(legacy.create(OLD_OTHER))
    record = legacy.record("ROLE#app-old")
    assert len(record.claims) == 103
    wants = [w for c, w in zip(record.claims, record.wants(), strict=True) if c.stack_id != THIRD]
    assert all(wants), "the claims without wants lost what they want"
    assert [_spec("role", w) for w in wants].count(desired) == 101
    # What they want stays: an Update of stack other's claim takes nothing of theirs away.
    legacy.send(legacy.update(OLD_OTHER, Tags=[{"Key": "env", "Value": "prod"}]))
    state = role_state("app-old")
    assert sorted(state["policies"]) == sorted([SSM, CLOUDWATCH])
    assert state["tags"]["team"] == "old" and state["tags"]["env"] == "prod"
    # Once the claims fit in one transaction, the next write upgrades the record.
    for n in range(100):
        client.delete_item(
            TableName=legacy.table,
            Key={"pk": {"S": "ROLE#app-old"}, "sk": {"S": f"CLAIM#{fleet(n)}#OldRole"}},
        )
    client.update_item(
        TableName=legacy.table,
        Key={"pk": {"S": "ROLE#app-old"}, "sk": {"S": "OBJECT"}},
        UpdateExpression="ADD claim_count :n",
        ExpressionAttributeValues={":n": {"N": "-100"}},
    )
    legacy.send(legacy.update(OLD_OTHER, Tags=[]))
    assert_format_2(legacy, "ROLE#app-old")
    assert claims_as_read(legacy, "ROLE#app-old")["OldRole@app"] == desired
    assert "team" in role_state("app-old")["tags"] and "env" not in role_state("app-old")["tags"]
