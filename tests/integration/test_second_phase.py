"""The second phase plans from the record as the first phase wrote it, without reading it again
(objects.as_written). Another stack's request can land between the PUT and the settle: the
settle's write is then refused by the version it planned from, and it plans again from a read.
Each test stages that request inside the PUT of the first one's answer."""

from __future__ import annotations

import os
from typing import Any

import pytest

from rolekeeper.config import settings
from rolekeeper.domain.records import role_key
from rolekeeper.provisioning import service
from rolekeeper.provisioning.context import Context
from tests.conftest import Stack
from tests.faults import UNAVAILABLE
from tests.integration.test_concurrency import direct
from tests.integration.test_faults import SPOT_FLEET, Env, env
from tests.integration.test_ownership import claims
from tests.integration.test_service_role import attached, get_role, registry
from tools.devkit.clock import CLOCK
from tools.devkit.responses import Sent

__all__ = ["env"]  # the fixture

APP = "app-shared"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
CLOUDWATCH = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
CREATE = "role-ec2-application-create.json"
UPDATE = "role-ec2-application-update.json"
DELETE = "role-ec2-application-delete.json"


def carried_out(stack: Stack, event_file: str, props: dict[str, Any], **overrides: Any) -> None:
    """Another stack's request, both phases, in an invocation of its own (its answer accepted)."""
    response = direct(stack, event_file, props, RequestId=f"other-{event_file}", **overrides)
    assert response.intent is not None
    ctx = Context(settings(), registry(), CLOCK[0].clock())
    service.settle(ctx, response.intent, accepted=True, known=response.record)


@pytest.fixture
def during_the_put(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What to do while the next answer is being PUT (between the first phase and the second)."""
    staged: list[Any] = []
    answer = Sent.__call__

    def answering(self: Sent, url: str, body: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        status = answer(self, url, body, *args, **kwargs)
        while staged:
            staged.pop(0)()
        return status

    monkeypatch.setattr(Sent, "__call__", answering)
    return staged


def test_an_update_settled_after_another_stack_let_go_takes_away_what_only_it_wanted_before(
    aws, stack, other_stack, during_the_put
):
    """Stack app wanted SSM and CloudWatch, stack other too. app's Update drops CloudWatch: as its
    first phase wrote the record, other still wants it, so putting the Update in force takes
    nothing away. other's Delete (Retain) lands during the PUT: CloudWatch is kept for app's
    claim as it stood. app's second phase must see that and detach CloudWatch."""
    both = {"RoleName": APP, "ManagedPolicyArns": [SSM, CLOUDWATCH], "OnDelete": "Retain"}
    created = stack.send(CREATE, props=both)
    assert created["Status"] == "SUCCESS", created["Reason"]
    joined = other_stack.send(CREATE, props=both)
    assert joined["Status"] == "SUCCESS", joined["Reason"]
    arn = created["PhysicalResourceId"]
    during_the_put.append(lambda: carried_out(other_stack, DELETE, both, PhysicalResourceId=arn))

    updated = stack.send(
        UPDATE, props={"RoleName": APP, "ManagedPolicyArns": [SSM]}, old_props=both, PhysicalResourceId=arn
    )

    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert [c.stack_id for c in claims(APP)] == [stack.stack_id], "other's release did not land"
    assert attached(APP) == {SSM}, "CloudWatch stayed although no claim wants it any more"


def test_a_last_delete_settled_after_another_stack_claimed_keeps_the_role(
    aws, stack, other_stack, during_the_put
):
    """Stack app's Delete (OnDelete Delete) of the role it created: as its first phase wrote the
    record, its claim is the last one. other claims the role during the PUT: the release must
    not take the role for deletion, and the role stays for other."""
    props = {"RoleName": APP, "ManagedPolicyArns": [SSM], "OnDelete": "Delete"}
    created = stack.send(CREATE, props=props)
    assert created["Status"] == "SUCCESS", created["Reason"]
    during_the_put.append(
        lambda: carried_out(
            other_stack, CREATE, {"RoleName": APP, "ManagedPolicyArns": [SSM], "OnDelete": "Retain"}
        )
    )

    deleted = stack.send(DELETE, props=props, PhysicalResourceId=created["PhysicalResourceId"])

    assert deleted["Status"] == "SUCCESS", deleted["Reason"]
    assert get_role(APP) is not None, "the role was deleted although another stack claims it"
    assert [c.stack_id for c in claims(APP)] == [other_stack.stack_id]
    assert attached(APP) == {SSM}


def test_a_second_phase_takes_nothing_away_on_the_first_phases_view_of_the_record(
    env: Env, other_stack: Stack, during_the_put: list[Any]
):
    """As above, but other claims CloudWatch (Heal off) during app's PUT, while app's Update drops
    it. The record as app's first phase wrote it does not show other's claim: a prune planned
    from it would detach CloudWatch before its write is refused (the fence keeps the registry
    right, not IAM). What changes IAM plans from a read."""
    both = {"RoleName": APP, "ManagedPolicyArns": [SSM, CLOUDWATCH], "OnDelete": "Retain"}
    created = env.stack.send(CREATE, props=both)
    assert created["Status"] == "SUCCESS", created["Reason"]
    arn = created["PhysicalResourceId"]
    during_the_put.append(lambda: carried_out(other_stack, CREATE, {**both, "Heal": "false"}))
    env.faults.forget()

    updated = env.stack.send(
        UPDATE, props={**both, "ManagedPolicyArns": [SSM]}, old_props=both, PhysicalResourceId=arn
    )

    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert env.faults.calls("DetachRolePolicy") == [], "CloudWatch was detached although other claims it"
    assert env.attached(APP) == {SSM, CLOUDWATCH}
    assert sorted(c.stack_id for c in claims(APP)) == sorted([env.stack.stack_id, other_stack.stack_id])
    assert all(c.pending is None for c in claims(APP))


def test_a_service_linked_role_deletion_whose_status_is_not_known_yet_can_be_created_again(env: Env):
    """IAM cannot say right away whether the deletion it accepted is over (GetServiceLinkedRole-
    DeletionStatus failing): the record keeps the task id, so the next Create settles it and
    creates the role anew, instead of waiting for ever on a deletion nobody can finish."""
    props = {"OnDelete": "Delete"}
    created = env.stack.send("slr-create.json", props=props)
    assert created["Status"] == "SUCCESS", created["Reason"]
    env.faults.arm("GetServiceLinkedRoleDeletionStatus", UNAVAILABLE)

    deleted = env.stack.send("slr-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"])

    assert deleted["Status"] == "SUCCESS", deleted["Reason"]
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is None or record.deletion_task_id, "left deleting without the task id"
    env.faults.disarm()
    again = env.stack.send("slr-create.json", props=props)
    assert again["Status"] == "SUCCESS", again["Reason"]
    assert env.role(SPOT_FLEET) is not None


def test_a_service_linked_role_deletion_left_without_its_task_id_is_settled_by_the_next_create(env: Env):
    """A Delete's invocation ended after DeleteServiceLinkedRole, before it recorded the task id:
    the record says deleting, with no task to ask about. Once the role is gone, the next Create
    completes that deletion in the registry and creates the role anew."""
    props = {"OnDelete": "Delete"}
    created = env.stack.send("slr-create.json", props=props)
    assert created["Status"] == "SUCCESS", created["Reason"]
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None
    (claim,) = record.claims
    env.dynamodb.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": os.environ["REGISTRY_TABLE_NAME"],
                    "Key": {"pk": {"S": record.key}, "sk": {"S": "OBJECT"}},
                    "UpdateExpression": "SET #s = :d, deleting_by = :by, deleting_since = :now "
                    "ADD claim_count :minus, version :one",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {
                        ":d": {"S": "deleting"},
                        ":by": {"S": "ended-delete"},
                        ":now": {"N": str(int(CLOCK[0].now()))},
                        ":minus": {"N": "-1"},
                        ":one": {"N": "1"},
                    },
                }
            },
            {
                "Delete": {
                    "TableName": os.environ["REGISTRY_TABLE_NAME"],
                    "Key": {"pk": {"S": record.key}, "sk": {"S": claim.sk}},
                }
            },
        ]
    )
    env.iam.delete_service_linked_role(RoleName=SPOT_FLEET)

    again = env.stack.send("slr-create.json", props=props)

    assert again["Status"] == "SUCCESS", again["Reason"]
    assert env.role(SPOT_FLEET) is not None
