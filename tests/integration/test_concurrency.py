"""Issue cases under conflicts, lost answers and interleavings (DESIGN: "Concurrency and lost
answers are normal"). Each test stages the exact interleaving by acting at a chosen AWS call of the
request under test: a DynamoDB transaction cancelled for TransactionConflict, a write applied whose
answer is lost, another writer's step run just before the call."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from rolekeeper.aws.registry import Registry
from rolekeeper.config import settings
from rolekeeper.domain.records import role_key
from rolekeeper.provisioning import service
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request
from tests.conftest import Stack
from tests.faults import NOWHERE, _Body
from tests.integration.test_faults import ECS, SPOT_FLEET, Env, env, ok
from tools.devkit.clock import CLOCK
from tools.devkit.lambda_context import LambdaContext

__all__ = ["env"]


@dataclass
class At:
    """On the n-th call (1-based, every attempt counted) of one DynamoDB operation made by
    rolekeeper: run `before` (another writer's step), then answer `conflict` (a transaction
    cancelled for TransactionConflict: nothing applied), `lost` (applied, answer lost: botocore
    retries) or let it through."""

    operation: str
    plan: dict[int, str] = field(default_factory=dict)
    before: dict[int, Callable[[], None]] = field(default_factory=dict)
    calls: int = 0

    def install(self) -> At:
        from rolekeeper.aws import clients as aws

        aws.dynamodb().meta.events.register(f"before-send.dynamodb.{self.operation}", self._hook)
        return self

    def _hook(self, request: Any, event_name: str, **_kwargs: Any) -> AWSResponse | None:
        self.calls += 1
        if step := self.before.pop(self.calls, None):
            step()
        what = self.plan.pop(self.calls, None)
        if what == "lost":
            from moto.core.models import botocore_stubber

            botocore_stubber(event_name, request)
            raise ReadTimeoutError(endpoint_url=request.url)
        if what == "conflict":
            items = json.loads(request.body)["TransactItems"]
            reasons = [{"Code": "None"} for _ in items]
            reasons[-1] = {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
            body = {
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
                f"[{', '.join(r['Code'] for r in reasons)}]",
                "CancellationReasons": reasons,
            }
            url, request.url = request.url, NOWHERE
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "c0nf11c7"}
            return AWSResponse(url, 400, headers, _Body(json.dumps(body).encode()))  # type: ignore[arg-type]
        return None


def registry() -> Registry:
    return Registry(os.environ["REGISTRY_TABLE_NAME"])


def direct(stack: Stack, event_file: str, props: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """Another stack's request carried out by a provisioner of its own (another invocation);
    overrides: fields of the event (PhysicalResourceId, RequestId)."""
    from tools.devkit.events import load_event

    event = load_event(event_file, StackId=stack.stack_id, **overrides)
    event["ResourceProperties"].update(props or {})
    request = Request(
        request_type=event["RequestType"],
        resource_type=event["ResourceType"],
        stack_id=event["StackId"],
        logical_id=event["LogicalResourceId"],
        properties=event["ResourceProperties"],
        physical_id=event.get("PhysicalResourceId"),
        request_id=event["RequestId"],
    )
    from tools.devkit.clock import CLOCK

    ctx = Context(settings(), registry(), CLOCK[0].clock())
    return (
        service.delete(ctx, request) if request.request_type == "Delete" else service.converge(ctx, request)
    )


@pytest.fixture
def no_waiting(fake_clock: Any) -> list[float]:
    """The waits rolekeeper made (recorded by the test's clock, none slept)."""
    return fake_clock.slept  # type: ignore[no-any-return]


DELETE = {"OnDelete": "Delete"}


def other(env: Env) -> Stack:
    return Stack("other", env.sent, env.stack.context, env.stack.cfn)


def delete(
    stack: Stack, created: dict[str, Any], event_file: str = "role-ecs-instance-delete.json"
) -> dict[str, Any]:
    return stack.send(event_file, props=DELETE, PhysicalResourceId=created["PhysicalResourceId"])


# 1. A conflict must not turn into a deletion ---------------------------------------------------


def test_a_cancelled_claim_while_another_stack_adopts_keeps_the_role_and_both_claims(env: Env):
    """Stack 1 creates ecsInstanceRole; stack 2 adopts it and succeeds; stack 1's transaction is
    cancelled (TransactionConflict). Stack 1 reads again and claims: nothing is deleted."""
    theirs = other(env)
    At(
        "TransactWriteItems",
        plan={1: "conflict"},
        before={1: lambda: direct(theirs, "role-ecs-instance-create.json", DELETE)},
    ).install()
    ok(env.stack.send("role-ecs-instance-create.json", props=DELETE))
    assert env.iam.get_role(RoleName=ECS)["Role"]["RoleName"] == ECS
    record = registry().objects.read(role_key(ECS))
    assert record is not None and len(record.claims) == 2 and record.claim_count == 2
    assert not record.deleting


def test_a_claim_that_keeps_conflicting_rolls_back_only_what_no_claim_holds(env: Env):
    """Every attempt conflicts: the Create fails, and the role it created goes only because no
    other claim holds it."""
    At("TransactWriteItems", plan=dict.fromkeys(range(1, 500), "conflict")).install()
    response = env.stack.send("role-ecs-instance-create.json", props=DELETE)
    assert response["Status"] == "FAILED"
    assert "retry" in response["Reason"]
    assert env.claims() == []
    assert env.items() == []
    with pytest.raises(env.iam.exceptions.NoSuchEntityException):
        env.iam.get_role(RoleName=ECS)


# 2. The last Delete must not leave the role forever ------------------------------------------


def test_a_release_cancelled_for_a_conflict_is_retried_and_the_last_delete_still_deletes(env: Env):
    first = env.stack.send("role-ecs-instance-create.json", props=DELETE)
    theirs = other(env)
    ok(theirs.send("role-ecs-instance-create.json", props=DELETE))
    at = At("TransactWriteItems", plan={1: "conflict"}).install()
    ok(delete(env.stack, first))
    assert at.calls >= 2
    record = registry().objects.read(role_key(ECS))
    assert record is not None and record.claim_count == 1 and len(record.claims) == 1
    ok(delete(theirs, first))
    with pytest.raises(env.iam.exceptions.NoSuchEntityException):
        env.iam.get_role(RoleName=ECS)
    assert env.items() == []


@pytest.mark.parametrize(
    ("operation", "what"),
    [
        ("TransactWriteItems", "the release"),
        ("UpdateItem", "taking the object for deletion"),
        ("DeleteItem", "forgetting the object"),
    ],
)
def test_a_delete_whose_registry_write_applied_but_answer_was_lost_still_deletes(env: Env, operation, what):
    created = env.stack.send("role-ecs-instance-create.json", props=DELETE)
    # UpdateItem's first call in a Delete notes the RequestId; the second takes the object.
    nth = 2 if operation == "UpdateItem" else 1
    At(operation, plan={nth: "lost"}).install()
    ok(delete(env.stack, created))
    with pytest.raises(env.iam.exceptions.NoSuchEntityException):
        env.iam.get_role(RoleName=ECS)
    assert env.items() == [], f"{what}: a record was left behind"


def test_a_create_whose_claim_applied_but_answer_was_lost_holds_one_claim(env: Env):
    At("TransactWriteItems", plan={1: "lost"}).install()
    ok(env.stack.send("role-ecs-instance-create.json", props=DELETE))
    record = registry().objects.read(role_key(ECS))
    assert record is not None and record.claim_count == 1 and len(record.claims) == 1


# 4. Stale grants -------------------------------------------------------------------------------


def test_a_spot_fleet_slr_write_reissues_grants_made_for_the_role_before_it_was_recreated(env: Env):
    from tests.integration.test_faults import _grant_act, _grant_setup

    _grant_setup(env)
    granted = _grant_act(env)
    ok(granted)
    old_grant = granted["Data"]["GrantId"]
    # Outside rolekeeper: the Spot Fleet SLR deleted and created again (a new RoleId).
    env.iam.delete_service_linked_role(RoleName=SPOT_FLEET)
    env.iam.create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    new_role_id = env.iam.get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"]
    ok(env.stack.send("slr-create.json", logical_id="SpotFleetRoleAgain"))
    grants = {g["GrantId"]: g for g in env.grants()}
    assert old_grant not in grants, "the stale grant was kept"
    [live] = grants.values()
    assert new_role_id in live["Name"]
    [record] = registry().objects.grants_naming(SPOT_FLEET)
    assert record.attrs["grant_id"] == live["GrantId"] and record.attrs["grantee_role_id"] == new_role_id


# 5. An asynchronous SLR deletion and a new claim ---------------------------------------------


def test_a_create_during_an_slr_deletion_waits_for_the_task_then_creates(
    aws, stack, other_stack, deletion_tasks, no_waiting
):
    import boto3

    deletion_tasks.asynchronous = True
    created = stack.send("slr-create.json", props=DELETE)
    ok(delete(stack, created, "slr-delete.json"))
    assert deletion_tasks.pending, "the deletion finished at once; this test needs it pending"
    # Before: the new stack adopted the still-visible role, then IAM finished the deletion.
    waiting = other_stack.send("slr-create.json", props=DELETE)
    assert waiting["Status"] == "FAILED" and "being deleted" in waiting["Reason"]
    assert no_waiting, "it did not wait for the task"
    deletion_tasks.finish()
    again = other_stack.send("slr-create.json", props=DELETE)
    ok(again)
    assert again["Data"]["Created"] == "true"
    assert boto3.client("iam").get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"] == again["Data"]["RoleId"]


# 6. A last Delete while the healer holds its lease ---------------------------------------------


def test_a_last_delete_waits_for_a_heal_under_way(env: Env, no_waiting):
    import time

    created = env.stack.send("role-ecs-instance-create.json", props=DELETE)
    key = role_key(ECS)
    lease = registry().leases.take(key, token="healer-1", now=time.time(), seconds=120, limit=10)
    assert lease.state == "taken"
    # The heal ends while the Delete waits (the next look finds the lease gone).
    CLOCK[0].on_sleep = lambda _s: registry().leases.give_back(key, token="healer-1")
    ok(delete(env.stack, created))
    assert no_waiting, "the Delete did not wait for the heal"
    with pytest.raises(env.iam.exceptions.NoSuchEntityException):
        env.iam.get_role(RoleName=ECS)
    assert env.items() == []


# 7. A late Update abandoned at the deadline ------------------------------------------------------


def test_an_update_abandoned_at_the_deadline_puts_the_claim_back_as_it_was(env: Env, monkeypatch):
    from rolekeeper.handlers import custom_resource

    ok(env.stack.send("role-ecs-instance-create.json", props={"Heal": "true"}))
    before = registry().objects.read(role_key(ECS)).claims[0]
    custom_resource.configure(timeout_margin=0.5)
    late = Stack("app", env.sent, LambdaContext(remaining_ms=1_500), env.stack.cfn)
    env.faults.hang("ListAttachedRolePolicies", 1.3)
    response = late.send(
        "role-ecs-instance-create.json",
        props={"Heal": "false"},
        RequestType="Update",
        PhysicalResourceId=f"arn:aws:iam::123456789012:role/{ECS}",
        OldResourceProperties={},
    )
    assert response["Status"] == "FAILED"
    [claim] = registry().objects.read(role_key(ECS)).claims
    assert claim == before and claim.heal is True, "the abandoned Update's claim stayed"
    assert env.iam.get_role(RoleName=ECS)["Role"]["RoleName"] == ECS


def test_the_scheduled_reconcile_reissues_a_grant_made_for_a_replaced_grantee(env: Env):
    """Before: the reconcile only checked that the grant id exists (it does: KMS keeps a grant to
    a deleted role's old id), so a stale grant looked healthy."""
    from tests.integration.test_faults import _grant_act, _grant_setup
    from tools.devkit.events import load_event

    _grant_setup(env)
    granted = _grant_act(env)
    ok(granted)
    env.iam.delete_service_linked_role(RoleName=SPOT_FLEET)
    env.iam.create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    new_role_id = env.iam.get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"]
    assert granted["Data"]["GrantId"] in {g["GrantId"] for g in env.grants()}
    result = env.heal(load_event("heal-scheduled.json"))
    assert result["outcome"] == "reconciled", result
    [live] = env.grants()
    assert live["GrantId"] != granted["Data"]["GrantId"] and new_role_id in live["Name"]
    [record] = registry().objects.grants_naming(SPOT_FLEET)
    assert record.attrs["grantee_role_id"] == new_role_id
