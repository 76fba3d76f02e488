"""HealerFunction end to end: CloudTrail events and the schedule, under AWS-like moto."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from typing import Any

import boto3
import pytest

from rolekeeper.aws.registry import Change, Fence, FenceMoved, Leases, Objects, Registry
from rolekeeper.domain.records import role_key
from tools.devkit.clock import CLOCK
from tools.devkit.environment import OPT_IN
from tools.devkit.events import EVENTS, healer_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext

ECS = "ecsInstanceRole"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"


event = healer_event


@pytest.fixture
def heal(aws, monkeypatch):
    """Deliver an event to the healer as EventBridge would."""
    from rolekeeper.handlers import healer
    from rolekeeper.healing import service as healing

    rebuild_handlers()
    notices: list[tuple[str, str]] = []
    monkeypatch.setattr(
        healing, "notify", lambda _topic, subject, message: notices.append((subject, message))
    )

    def deliver(payload: dict[str, Any]) -> dict[str, Any]:
        return healer.lambda_handler(
            copy.deepcopy(payload), LambdaContext(function_name="rolekeeper-HealerFunction")
        )

    deliver.notices = notices  # type: ignore[attr-defined]
    yield deliver
    rebuild_handlers()


def iam():
    return boto3.client("iam")


def registry() -> Registry:
    return Registry(os.environ["REGISTRY_TABLE_NAME"])


def delete_ecs_role_by_hand() -> None:
    client = iam()
    client.remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    client.delete_instance_profile(InstanceProfileName=ECS)
    client.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    client.delete_role(RoleName=ECS)


def test_healer_recreates_deleted_role_with_policy_and_profile(stack, heal):
    created = stack.send("role-ecs-instance-create.json")
    delete_ecs_role_by_hand()
    result = heal(event("heal-delete-role.json"))
    assert result["outcome"] == "healed"
    role = iam().get_role(RoleName=ECS)["Role"]
    assert role["RoleId"] != created["Data"]["RoleId"]
    attached = [p["PolicyArn"] for p in iam().list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]]
    assert attached == [ECS_POLICY]
    profile = iam().get_instance_profile(InstanceProfileName=ECS)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ECS]
    assert heal.notices and "healed ecsInstanceRole" in heal.notices[0][0]


def test_healer_ignores_roles_it_does_not_hold(aws, heal):
    result = heal(event("heal-delete-role.json"))
    assert result["outcome"] == "ignored"
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_healer_respects_heal_false(stack, heal):
    stack.send("role-ecs-instance-create.json", props={"Heal": "false"})
    delete_ecs_role_by_hand()
    assert heal(event("heal-delete-role.json"))["outcome"] == "ignored"
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_healer_never_undoes_the_custom_resource_delete(stack, heal):
    created = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    for name in (
        "heal-remove-role-from-instance-profile.json",
        "heal-delete-instance-profile.json",
        "heal-detach-role-policy.json",
        "heal-delete-role.json",
    ):
        assert heal(event(name))["outcome"] == "ignored"
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_healer_reattaches_detached_policy(stack, heal):
    stack.send("role-ecs-instance-create.json")
    iam().detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    assert heal(event("heal-detach-role-policy.json"))["outcome"] == "healed"
    assert [p["PolicyArn"] for p in iam().list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]] == [
        ECS_POLICY
    ]


def test_healer_puts_role_back_into_its_instance_profile(stack, heal):
    stack.send("role-ecs-instance-create.json")
    iam().remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    assert heal(event("heal-remove-role-from-instance-profile.json"))["outcome"] == "healed"
    profile = iam().get_instance_profile(InstanceProfileName=ECS)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ECS]


def test_healer_recreates_deleted_instance_profile(stack, heal):
    stack.send("role-ecs-instance-create.json")
    iam().remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    iam().delete_instance_profile(InstanceProfileName=ECS)
    assert heal(event("heal-delete-instance-profile.json"))["outcome"] == "healed"
    profile = iam().get_instance_profile(InstanceProfileName=ECS)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ECS]


def test_healer_restores_trust_policy_keeping_other_statements(stack, heal):
    stack.send("role-spot-fleet-tagging-create.json")
    name = "aws-ec2-spot-fleet-tagging-role"
    damaged = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    iam().update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(damaged))
    assert heal(event("heal-update-assume-role-policy.json"))["outcome"] == "healed"
    statements = iam().get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]["Statement"]
    services = [s["Principal"]["Service"] for s in statements]
    assert "spotfleet.amazonaws.com" in services and "ec2.amazonaws.com" in services
    spot = next(s for s in statements if s["Principal"]["Service"] == "spotfleet.amazonaws.com")
    assert spot["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"


@pytest.fixture
def spot_fleet_with_grant(aws, stack):
    slr = stack.send("slr-create.json")
    key_arn = boto3.client("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
    grant = stack.send("grant-create.json", props={"KeyId": key_arn})
    assert grant["Status"] == "SUCCESS", grant["Reason"]
    return slr, key_arn, grant


def test_healer_waits_for_slr_deletion_then_recreates_and_reissues_grant(
    spot_fleet_with_grant, heal, deletion_tasks, monkeypatch, stack
):

    slr, key_arn, grant = spot_fleet_with_grant
    deletion_tasks.asynchronous = True
    task_id = iam().delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    polls: list[float] = []

    def finish_while_waiting(delay: float) -> None:
        polls.append(delay)
        deletion_tasks.finish()  # IAM completes the deletion while the healer waits

    CLOCK[0].on_sleep = finish_while_waiting
    result = heal(event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id}))
    assert result["outcome"] == "healed"
    assert polls == [1.0]
    role = iam().get_role(RoleName=SPOT_FLEET)["Role"]
    assert role["RoleId"] != slr["Data"]["RoleId"]
    (current,) = boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]
    assert current["GrantId"] != grant["Data"]["GrantId"]
    assert role["RoleId"] in current["Name"]
    # The stack's later Delete still removes the re-issued grant
    stack.send("grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId=grant["PhysicalResourceId"])
    assert boto3.client("kms").list_grants(KeyId=key_arn)["Grants"] == []


def test_healer_leaves_slr_whose_deletion_failed_in_use(spot_fleet_with_grant, heal, deletion_tasks):
    slr, _key, _grant = spot_fleet_with_grant
    deletion_tasks.fail_next_with_in_use = True
    task_id = iam().delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    result = heal(event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id}))
    assert result["outcome"] == "in-use"
    assert iam().get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"] == slr["Data"]["RoleId"]


def test_healer_retries_later_when_deletion_is_still_in_progress(spot_fleet_with_grant, heal, deletion_tasks):
    from rolekeeper.healing.service import RetryLater

    deletion_tasks.asynchronous = True
    task_id = iam().delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    with pytest.raises(RetryLater):
        heal(event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id}))


def test_healer_reissues_retired_grant(spot_fleet_with_grant, heal):
    _slr, key_arn, grant = spot_fleet_with_grant
    grant_id = grant["Data"]["GrantId"]
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=grant_id)
    retire = event(
        "heal-retire-grant.json",
        additionalEventData={"grantId": grant_id},
        resources=[{"type": "AWS::KMS::Key", "ARN": key_arn, "accountId": "123456789012"}],
    )
    assert heal(retire)["outcome"] == "healed"
    (current,) = boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]
    assert current["GrantId"] != grant_id
    # The revoke of the stale id arriving later is ignored (no longer registered under it)
    revoke = event("heal-revoke-grant.json", requestParameters={"keyId": key_arn, "grantId": grant_id})
    assert heal(revoke)["outcome"] == "ignored"


def test_healer_burst_of_50_events_recreates_once(stack, heal, monkeypatch):
    from rolekeeper.aws import iam as iam_ops

    stack.send("role-ecs-instance-create.json")
    delete_ecs_role_by_hand()
    creates: list[str] = []
    real_create = iam_ops.create_role
    monkeypatch.setattr(
        iam_ops, "create_role", lambda *a, **k: (creates.append(a[0]), real_create(*a, **k))[1]
    )
    payload = event("heal-delete-role.json")
    outcomes = [heal(payload)["outcome"] for _ in range(50)]
    assert creates == [ECS]
    assert outcomes.count("healed") == 1
    assert set(outcomes) == {"healed", "healthy"}


def _atomic_moto(monkeypatch) -> None:
    """Each AWS API call is atomic (DynamoDB's conditional writes are what the heal lease relies
    on); moto's in-process backends are not under threads, and a read can see a table mid-write.
    Serialise moto's actions; rolekeeper's own code still interleaves between calls."""
    from moto.core.responses import BaseResponse

    lock = threading.RLock()
    original = BaseResponse.call_action

    def call_action(self):
        with lock:
            return original(self)

    monkeypatch.setattr(BaseResponse, "call_action", call_action)


def test_healer_concurrent_invocations_heal_once_without_errors(stack, heal, monkeypatch):
    from rolekeeper.aws import iam as iam_ops

    _atomic_moto(monkeypatch)

    stack.send("role-ecs-instance-create.json")
    delete_ecs_role_by_hand()
    creates: list[str] = []
    real_create = iam_ops.create_role
    monkeypatch.setattr(
        iam_ops, "create_role", lambda *a, **k: (creates.append(a[0]), real_create(*a, **k))[1]
    )
    payload = event("heal-delete-role.json")
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcomes.append(heal(payload)["outcome"])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert creates == [ECS]
    assert outcomes.count("healed") == 1
    assert set(outcomes) <= {"healed", "healthy", "coalesced"}


def test_healer_rate_limit_stops_and_alerts(stack, heal, monkeypatch):

    monkeypatch.setenv("HEAL_RATE_LIMIT", "2")
    rebuild_handlers()
    stack.send("role-ecs-instance-create.json")
    outcomes = []
    for _ in range(3):
        delete_ecs_role_by_hand()
        outcomes.append(heal(event("heal-delete-role.json"))["outcome"])
    assert outcomes == ["healed", "healed", "suppressed"]
    assert any("stopped healing" in subject for subject, _ in heal.notices)
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_healer_report_mode_changes_nothing(stack, heal, monkeypatch):

    monkeypatch.setenv("HEAL_MODE", "report")
    rebuild_handlers()
    stack.send("role-ecs-instance-create.json")
    delete_ecs_role_by_hand()
    result = heal(event("heal-delete-role.json"))
    assert result["outcome"] == "reported"
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]
    assert any("would heal" in subject for subject, _ in heal.notices)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            lambda: {**event("heal-delete-role.json"), "account": "999999999999"}, id="other-account"
        ),
        pytest.param(
            lambda: event("heal-delete-role.json", recipientAccountId="999999999999"), id="other-recipient"
        ),
        pytest.param(lambda: event("heal-delete-role-failed.json"), id="failed-call"),
        pytest.param(lambda: {"hello": "world"}, id="not-eventbridge"),
        pytest.param(lambda: {**event("heal-delete-role.json"), "detail": "oops"}, id="detail-not-object"),
        pytest.param(lambda: event("heal-delete-role.json", eventName="CreateRole"), id="unwatched-name"),
        pytest.param(lambda: ["not", "a", "dict"], id="list"),
    ],
)
def test_healer_drops_foreign_and_malformed_events_without_raising(stack, heal, payload):
    stack.send("role-ecs-instance-create.json")
    delete_ecs_role_by_hand()
    result = heal(payload())
    assert result["outcome"] == "dropped"
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_scheduled_reconcile_repairs_what_events_missed(stack, heal, monkeypatch):
    from rolekeeper.aws import clients as aws_clients

    stack.send("role-ecs-instance-create.json")
    stack.send("role-batch-service-create.json")
    stack.send("slr-create.json")
    stack.send("role-spot-fleet-tagging-create.json")
    delete_ecs_role_by_hand()
    iam().detach_role_policy(
        RoleName="AWSBatchServiceRole", PolicyArn="arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole"
    )
    calls: list[str] = []
    aws_clients.iam().meta.events.register("before-call.iam.*", lambda model, **_: calls.append(model.name))
    result = heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
    assert result["outcome"] == "reconciled"
    assert result["healed"] == 2 and result["healthy"] == 2
    assert "GetRole" not in calls[: calls.index("GetAccountAuthorizationDetails") + 1]
    assert calls.count("GetAccountAuthorizationDetails") == 1
    assert iam().get_role(RoleName=ECS)
    assert [
        p["PolicyName"]
        for p in iam().list_attached_role_policies(RoleName="AWSBatchServiceRole")["AttachedPolicies"]
    ] == ["AWSBatchServiceRole"]


def test_scheduled_reconcile_reissues_missing_grant(spot_fleet_with_grant, heal):
    _slr, key_arn, grant = spot_fleet_with_grant
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=grant["Data"]["GrantId"])
    result = heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
    assert result["healed"] == 1
    assert len(boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]) == 1
    assert registry().objects.read(role_key(SPOT_FLEET)) is not None


@pytest.mark.parametrize("elements", ["", "ok", ["a"], 7])
def test_healer_reads_a_record_whose_response_elements_is_not_an_object(stack, heal, elements):
    stack.send("role-ecs-instance-create.json")
    iam().detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    result = heal(event("heal-detach-role-policy.json", responseElements=elements))
    assert result["outcome"] == "healed", result
    attached = [p["PolicyArn"] for p in iam().list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]]
    assert attached == [ECS_POLICY]


# --- issue 9: DeleteServiceLinkedRole without a deletion task id ------------------------------


def _now_iso() -> str:
    """CloudTrail's eventTime for a call made now (whole seconds; a second on, so that it is
    after the CreateDate of a role made in this same second)."""
    import datetime

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    return later.strftime("%Y-%m-%dT%H:%M:%SZ")


def _slr_deleted_event_without_task_id(event_time: str) -> dict[str, Any]:
    payload = event("heal-delete-service-linked-role.json", eventTime=event_time)
    payload["detail"].pop("responseElements")
    return payload


def test_healer_waits_for_slr_to_disappear_without_task_id_then_recreates(
    spot_fleet_with_grant, heal, deletion_tasks, monkeypatch
):

    slr, key_arn, grant = spot_fleet_with_grant
    deletion_tasks.asynchronous = True
    requested = _now_iso()
    iam().delete_service_linked_role(RoleName=SPOT_FLEET)
    polls: list[float] = []

    def finish_on_second_wait(delay: float) -> None:
        polls.append(delay)
        if len(polls) == 2:
            deletion_tasks.finish()  # IAM completes the deletion while the healer waits

    CLOCK[0].on_sleep = finish_on_second_wait
    result = heal(_slr_deleted_event_without_task_id(requested))
    assert result["outcome"] == "healed", result
    assert polls == [1.0, 2.0]
    role = iam().get_role(RoleName=SPOT_FLEET)["Role"]
    assert role["RoleId"] != slr["Data"]["RoleId"]
    (current,) = boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]
    assert current["GrantId"] != grant["Data"]["GrantId"] and role["RoleId"] in current["Name"]
    assert registry().objects.read(role_key(SPOT_FLEET)).attrs["role_id"] == role["RoleId"]


def test_healer_retries_later_when_slr_stays_without_task_id(
    spot_fleet_with_grant, heal, deletion_tasks, monkeypatch
):
    from rolekeeper.healing.service import RetryLater
    from rolekeeper.retry import SLR_DELETION

    slr, _key, _grant = spot_fleet_with_grant
    deletion_tasks.asynchronous = True
    requested = _now_iso()
    iam().delete_service_linked_role(RoleName=SPOT_FLEET)
    polls: list[float] = []
    CLOCK[0].on_sleep = polls.append
    with pytest.raises(RetryLater):
        heal(_slr_deleted_event_without_task_id(requested))
    assert polls == [SLR_DELETION.delay(n) for n in range(SLR_DELETION.attempts - 1)]  # bounded
    assert iam().get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"] == slr["Data"]["RoleId"]
    # Lambda's retry, after IAM finished: the role comes back
    deletion_tasks.finish()
    assert heal(_slr_deleted_event_without_task_id(requested))["outcome"] == "healed"
    assert iam().get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"] != slr["Data"]["RoleId"]


def test_healer_redelivered_slr_delete_without_task_id_after_the_heal_does_not_wait(
    spot_fleet_with_grant, heal, monkeypatch
):

    iam().delete_service_linked_role(RoleName=SPOT_FLEET)  # finishes at once
    payload = _slr_deleted_event_without_task_id("2026-01-01T00:00:00Z")
    assert heal(payload)["outcome"] == "healed"
    polls: list[float] = []
    CLOCK[0].on_sleep = polls.append
    # The role there now was made after the deletion was asked for: nothing to wait for
    assert heal(payload)["outcome"] == "healthy"
    assert polls == []


# --- issue 9: permissions boundaries and tags -------------------------------------------------

APP = "app-web"


@pytest.fixture
def boundary_arns(aws) -> tuple[str, str]:
    document = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
        }
    )
    return tuple(  # type: ignore[return-value]
        iam().create_policy(PolicyName=name, PolicyDocument=document)["Policy"]["Arn"]
        for name in ("app-boundary", "wide-open")
    )


def _boundary_of(name: str) -> str | None:
    return (iam().get_role(RoleName=name)["Role"].get("PermissionsBoundary") or {}).get(
        "PermissionsBoundaryArn"
    )


def _role_event(event_name: str, **parameters: str) -> dict[str, Any]:
    return event(
        "heal-delete-role.json", eventName=event_name, requestParameters={"roleName": APP, **parameters}
    )


def test_healer_puts_back_a_removed_boundary(stack, heal, boundary_arns):
    boundary, _other = boundary_arns
    created = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": boundary})
    assert created["Status"] == "SUCCESS", created["Reason"]
    iam().delete_role_permissions_boundary(RoleName=APP)
    result = heal(_role_event("DeleteRolePermissionsBoundary"))
    assert result["outcome"] == "healed", result
    assert _boundary_of(APP) == boundary


def test_healer_keeps_a_boundary_an_administrator_put_in_place_of_the_claimed_one(stack, heal, boundary_arns):
    """Issue 16: the healer restores only what was removed; a boundary an administrator chose
    instead is theirs (issue 9 put the claimed one back: a stack author's boundary won)."""
    boundary, other = boundary_arns
    stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": boundary})
    iam().put_role_permissions_boundary(RoleName=APP, PermissionsBoundary=other)
    assert heal(_role_event("PutRolePermissionsBoundary", permissionsBoundary=other))["outcome"] == "healthy"
    assert _boundary_of(APP) == other


def test_healer_leaves_a_boundary_no_claim_wants(stack, heal, boundary_arns):
    _boundary, other = boundary_arns
    stack.send("role-ec2-application-create.json")
    iam().put_role_permissions_boundary(RoleName=APP, PermissionsBoundary=other)
    assert heal(_role_event("PutRolePermissionsBoundary", permissionsBoundary=other))["outcome"] == "healthy"
    assert _boundary_of(APP) == other


def test_healer_puts_back_a_removed_tag(stack, heal):
    stack.send("role-ec2-application-create.json", props={"Tags": [{"Key": "team", "Value": "web"}]})
    iam().untag_role(RoleName=APP, TagKeys=["team"])
    result = heal(_role_event("UntagRole", tagKeys=["team"]))  # type: ignore[arg-type]
    assert result["outcome"] == "healed", result
    tags = {t["Key"]: t["Value"] for t in iam().get_role(RoleName=APP)["Role"]["Tags"]}
    assert tags == {"team": "web", "rolekeeper:managed": "true"}


def test_scheduled_reconcile_restores_a_removed_boundary_and_keeps_a_changed_tag_value(
    stack, heal, boundary_arns
):
    boundary, _other = boundary_arns
    stack.send(
        "role-ec2-application-create.json",
        props={"PermissionsBoundary": boundary, "Tags": [{"Key": "team", "Value": "web"}]},
    )
    iam().delete_role_permissions_boundary(RoleName=APP)
    iam().tag_role(RoleName=APP, Tags=[{"Key": "team", "Value": "someone-else"}])  # no event for this one
    result = heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
    assert result["healed"] == 1, result
    assert _boundary_of(APP) == boundary
    tags = {t["Key"]: t["Value"] for t in iam().get_role(RoleName=APP)["Role"]["Tags"]}
    assert tags["team"] == "someone-else"  # a value set by hand is the administrator's (issue 16)


# --- issue 9 case 6: the healer and a stack's Delete ------------------------------------------


def _forget(key: str) -> None:
    """A last Delete's registry effects: the claim released, the object forgotten."""
    _release_only(key)
    boto3.client("dynamodb").delete_item(
        TableName=os.environ["REGISTRY_TABLE_NAME"], Key={"pk": {"S": key}, "sk": {"S": "OBJECT"}}
    )


def _mark_deleting(key: str) -> None:
    boto3.client("dynamodb").update_item(
        TableName=os.environ["REGISTRY_TABLE_NAME"],
        Key={"pk": {"S": key}, "sk": {"S": "OBJECT"}},
        UpdateExpression="SET #s = :d",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":d": {"S": "deleting"}},
    )


def _release_only(key: str) -> None:
    reg = registry()
    for claim in reg.objects.read(key).claims:
        read = reg.objects.read(key)
        reg.objects.write(key, Fence(read, exact=False), Change(read.kind, release=claim), now=time.time())


DELETE_EFFECTS = {"forgotten": _forget, "deleting": _mark_deleting, "released": _release_only}
IGNORED_BECAUSE = {
    "forgotten": "no longer registered",
    "deleting": "a stack's Delete is removing it",
    "released": "no stack claims it any more",
}


def _object_item(key: str) -> dict[str, Any] | None:
    return (
        boto3.client("dynamodb")
        .get_item(TableName=os.environ["REGISTRY_TABLE_NAME"], Key={"pk": {"S": key}, "sk": {"S": "OBJECT"}})
        .get("Item")
    )


@pytest.mark.parametrize("effect", sorted(DELETE_EFFECTS))
def test_a_delete_between_the_healers_read_and_its_lease_stops_the_heal(stack, heal, monkeypatch, effect):
    stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    delete_ecs_role_by_hand()
    key = role_key(ECS)
    real_take = Leases.take

    def delete_first(self, *args, **kwargs):
        DELETE_EFFECTS[effect](key)
        return real_take(self, *args, **kwargs)

    monkeypatch.setattr(Leases, "take", delete_first)
    result = heal(event("heal-delete-role.json"))
    assert result["outcome"] == "ignored"
    assert result["detail"] == IGNORED_BECAUSE[effect]
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]  # nothing recreated in IAM
    item = _object_item(key)
    if effect == "forgotten":
        assert item is None  # no item recreated
    else:
        assert "heal_lease" not in item and "heal_lease_by" not in item and "heal_count" not in item


@pytest.mark.parametrize("effect", sorted(DELETE_EFFECTS))
def test_a_delete_between_the_lease_and_the_final_write_is_not_written_over(stack, heal, monkeypatch, effect):
    stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    delete_ecs_role_by_hand()
    key = role_key(ECS)
    before = _object_item(key)
    real_write = Objects.write

    def delete_first(self, key_, fence, *args, **kwargs):
        if fence.lease:  # the heal's final write
            DELETE_EFFECTS[effect](key)
        return real_write(self, key_, fence, *args, **kwargs)

    monkeypatch.setattr(Objects, "write", delete_first)
    result = heal(event("heal-delete-role.json"))
    assert result["outcome"] == "ignored"
    assert result["detail"] == f"released while healing: {IGNORED_BECAUSE[effect]}"
    item = _object_item(key)
    if effect != "deleting":
        # Let go while it healed: the role the heal made is taken back (with its record, which
        # no claim holds), not left standing for no one.
        assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]
    if item is None:
        return
    # Nothing of the heal written; the lease given back so a waiting Delete goes on
    assert item["role_id"] == before["role_id"]
    assert "healed_at" not in item and "heal_lease" not in item and "heal_lease_by" not in item


def test_scheduled_reconcile_does_not_recreate_what_a_delete_released_after_its_scan(
    stack, heal, monkeypatch
):
    from rolekeeper.aws import iam as iam_ops

    created = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    real_pages = iam_ops.role_detail_pages

    def delete_after_the_scan(*args, **kwargs):
        # The stack's Delete lands after the registry's first page was read, before IAM is listed.
        response = stack.send(
            "role-ecs-instance-delete.json",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=created["PhysicalResourceId"],
        )
        assert response["Status"] == "SUCCESS"
        return real_pages(*args, **kwargs)

    monkeypatch.setattr(iam_ops, "role_detail_pages", delete_after_the_scan)
    result = heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
    assert result.get("healed", 0) == 0, result
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]
    assert _object_item(role_key(ECS)) is None


def test_scheduled_reconcile_stops_when_the_delete_starts_between_its_read_and_its_lease(
    stack, heal, monkeypatch
):
    stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    delete_ecs_role_by_hand()
    key = role_key(ECS)
    real_take = Leases.take

    def deleting_first(self, *args, **kwargs):
        _mark_deleting(key)
        return real_take(self, *args, **kwargs)

    monkeypatch.setattr(Leases, "take", deleting_first)
    result = heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
    assert result.get("healed", 0) == 0 and result["ignored"] == 1, result
    assert ECS not in [r["RoleName"] for r in iam().list_roles()["Roles"]]


def test_a_held_lease_coalesces_and_an_expired_one_is_taken(stack, aws):
    reg = registry()
    stack.send("role-ecs-instance-create.json")
    key = role_key(ECS)
    first = reg.leases.take(key, token="a", now=1000, seconds=120, limit=5)
    assert first.taken
    assert reg.leases.take(key, token="b", now=1060, seconds=120, limit=5).state == "held"
    # Only the holder's token records
    record = reg.objects.read(key)
    with pytest.raises(FenceMoved):
        reg.objects.write(
            key, Fence(record, lease="b", claimed=True), Change(record.kind, {"role_id": "X"}), now=1060
        )
    assert reg.leases.take(key, token="b", now=1121, seconds=120, limit=5).taken  # expired
    record = reg.objects.read(key)
    heal_write = Change(record.kind, healed_at=1122, end_lease=True)
    reg.objects.write(key, Fence(record, lease="b", claimed=True), heal_write, now=1122)
    assert reg.objects.read(key).healed_at == 1122
    assert _object_item(key)["heal_count"]["N"] == "2"


def test_the_hour_limit_resets_with_a_second_write_only_when_the_window_passed(stack, aws):
    reg = registry()
    stack.send("role-ecs-instance-create.json")
    key = role_key(ECS)
    for i in range(2):
        assert reg.leases.take(key, token=f"t{i}", now=1000 + i, seconds=120, limit=2).taken
        reg.leases.give_back(key, token=f"t{i}")
    assert reg.leases.take(key, token="x", now=1500, seconds=120, limit=2).state == "limited"
    assert reg.leases.take(key, token="y", now=1000 + 3601, seconds=120, limit=2).taken
    assert _object_item(key)["heal_count"]["N"] == "1"
