"""Issue 16, case 1 and 2: rolekeeper acts only for CloudFormation's own requests. A request's
ResponseURL must be CloudFormation's pre-signed URL for it; what removes or weakens takes effect
only once CloudFormation's bucket accepted the answer (a forger cannot sign a PUT that bucket
accepts), and nothing is written to the registry for a request nobody proved genuine."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from rolekeeper.domain.records import role_key
from tests.conftest import Stack
from tests.integration.test_ownership import APP_BOUNDARY, claims, owner_boundary
from tests.integration.test_service_role import attached, boundary, get_role, registry
from tools.devkit import cloudformation
from tools.devkit.clock import CLOCK
from tools.devkit.events import load_event
from tools.devkit.lambda_context import LambdaContext

APP = "app-victim"
ROLE = "WebAppRole"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
CLOUDWATCH = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
VICTIM = {
    "RoleName": APP,
    "ManagedPolicyArns": [SSM],
    "PermissionsBoundary": APP_BOUNDARY,
    "OnDelete": "Retain",
}
# What a forger asks of the victim's resource: no boundary, another policy, OnDelete Delete, no healing.
FORGED = {"RoleName": APP, "ManagedPolicyArns": [CLOUDWATCH], "OnDelete": "Delete", "Heal": "false"}


def registry_items() -> list[dict[str, Any]]:
    import os

    return boto3.client("dynamodb").scan(TableName=os.environ["REGISTRY_TABLE_NAME"])["Items"]


@pytest.fixture
def victim(aws: None, stack: Stack) -> dict[str, Any]:
    owner_boundary("ec2:*")
    created = stack.send("role-ec2-application-create.json", props=VICTIM)
    assert created["Status"] == "SUCCESS", created["Reason"]
    return created


def in_update_window(stack: Stack, created: dict[str, Any]) -> None:
    """The victim's stack really is updating its resource: CloudFormation confirms an Update."""
    stack.cfn.set(
        stack.stack_id,
        ROLE,
        "UPDATE_IN_PROGRESS",
        created["PhysicalResourceId"],
        stack_status="UPDATE_IN_PROGRESS",
    )


def forged_update(stack: Stack, created: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return stack.send(
        "role-ec2-application-update.json",
        props=FORGED,
        old_props=VICTIM,
        PhysicalResourceId=created["PhysicalResourceId"],
        confirmed=False,  # CloudFormation's state is the victim's own update (in_update_window)
        signed=False,  # a forger cannot sign a PUT CloudFormation's bucket accepts
        **overrides,
    )


def assert_victim_untouched(stack: Stack) -> None:
    assert boundary(APP) == APP_BOUNDARY, "the victim's boundary was removed"
    assert attached(APP) == {SSM}, f"the victim's policies changed: {attached(APP)}"
    (claim,) = claims(APP)
    assert (claim.on_delete, claim.heal, claim.pending) == ("Retain", True, None), claim
    # The victim's later stack Delete (its template still says Retain) keeps the role.
    deleted = stack.send(
        "role-ec2-application-delete.json", props=VICTIM, PhysicalResourceId=get_role(APP)["Arn"]
    )
    assert deleted["Status"] == "SUCCESS", deleted["Reason"]
    assert get_role(APP) is not None, (
        "the victim's Delete (Retain) deleted the role: the forgery outlived its window"
    )


def test_a_forged_update_with_an_attackers_url_is_refused_and_writes_nothing(victim, stack):
    in_update_window(stack, victim)
    items = registry_items()
    forged = forged_update(
        stack, victim, ResponseURL="https://attacker.example.com/collect?X-Amz-Signature=x"
    )
    assert forged["Status"] == "FAILED"
    assert "ResponseURL is not CloudFormation's" in forged["Reason"]
    assert registry_items() == items, "a refused request wrote to the registry"
    assert_victim_untouched(stack)


def test_a_forged_update_with_the_real_buckets_url_and_a_forged_signature_has_no_lasting_effect(
    victim, stack
):
    in_update_window(stack, victim)
    forged = forged_update(stack, victim)
    # It passed every check a request can be put to before its answer (the URL has the bucket's
    # shape, CloudFormation shows an update in progress): the answer's PUT is refused (403).
    assert forged["Status"] == "SUCCESS", forged["Reason"]
    assert_victim_untouched(stack)


def test_the_forgers_additions_are_taken_back_with_its_withdrawn_claim_change(victim, stack):
    in_update_window(stack, victim)
    forged_update(stack, victim)
    assert CLOUDWATCH not in attached(APP), "the forger's policy stays on the victim's role"
    record = registry().objects.read(role_key(APP))
    assert record is not None and f"policy:{CLOUDWATCH}" not in (record.added or set())


def test_a_forged_create_in_a_create_window_leaves_no_claim(aws, stack):
    owner_boundary("ec2:*")
    event = load_event("role-ec2-application-create.json")
    stack.cfn.set(stack.stack_id, ROLE, "CREATE_IN_PROGRESS", None, stack_status="CREATE_IN_PROGRESS")
    forged = stack.send("role-ec2-application-create.json", props=FORGED, confirmed=False, signed=False)
    assert forged["Status"] == "SUCCESS", forged["Reason"]
    assert claims(APP) == [], "the forged Create's claim stays"
    assert get_role(APP) is None, "the role the forged Create made stays"
    assert event["LogicalResourceId"] == ROLE


def test_a_forged_delete_in_a_delete_window_releases_nothing(victim, stack):
    stack.cfn.set(
        stack.stack_id,
        ROLE,
        "DELETE_IN_PROGRESS",
        victim["PhysicalResourceId"],
        stack_status="DELETE_IN_PROGRESS",
    )
    forged = stack.send(
        "role-ec2-application-delete.json",
        props={**VICTIM, "OnDelete": "Delete"},
        PhysicalResourceId=victim["PhysicalResourceId"],
        confirmed=False,
        signed=False,
    )
    assert forged["Status"] == "SUCCESS"
    assert [c.pending for c in claims(APP)] == [None], "the forged release is still pending or done"
    assert get_role(APP) is not None


def test_a_refused_direct_invoke_writes_nothing_to_the_registry(victim, stack):
    items = registry_items()
    for _ in range(3):  # re-sent in a loop, as the forger does
        refused = stack.send("role-ec2-application-create.json", props=FORGED, confirmed=False, signed=False)
        assert refused["Status"] == "FAILED"
    assert registry_items() == items, "a refused invoke left items (REQUEST# or others) in the registry"


def test_an_accepted_answer_puts_the_update_in_force_in_the_same_invocation(victim, stack):
    updated = stack.send(
        "role-ec2-application-update.json",
        props={**VICTIM, "ManagedPolicyArns": [CLOUDWATCH], "OnDelete": "Delete"},
        old_props=VICTIM,
        PhysicalResourceId=victim["PhysicalResourceId"],
    )
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert attached(APP) == {CLOUDWATCH}
    (claim,) = claims(APP)
    assert (claim.on_delete, claim.pending) == ("Delete", None)


@pytest.mark.parametrize(("http_status", "in_force"), [(200, True), (403, False), (None, False)])
def test_the_schedule_settles_what_an_ended_invocation_left_pending(
    victim, stack, monkeypatch, http_status, in_force
):
    """The invocation ended after its answer's PUT (Lambda stopped it): the schedule puts the
    change in force when the PUT was recorded accepted, and withdraws it otherwise."""
    from rolekeeper.handlers import custom_resource
    from rolekeeper.provisioning import service

    def ended(*_args: Any, **_kwargs: Any) -> None:  # the second phase never runs in the invocation
        raise KeyboardInterrupt("the environment ended")

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(service, "settle", ended)
        stack.send(
            "role-ec2-application-update.json",
            props={**VICTIM, "ManagedPolicyArns": [CLOUDWATCH], "OnDelete": "Delete"},
            old_props=VICTIM,
            PhysicalResourceId=victim["PhysicalResourceId"],
        )
    (claim,) = claims(APP)
    assert claim.pending is not None, "staging: the change is not pending"
    reg = registry()
    if http_status is None:
        reg.table.write(_remove_status(claim.pending.request_id))
    elif http_status != 200:
        reg.requests.delivered(claim.pending.request_id, http_status=http_status, now=CLOCK[0].now())
    CLOCK[0].offset += 3600
    event = {
        "id": "s",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-07T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {},
        "version": "0",
    }
    assert custom_resource.lambda_handler(event, LambdaContext())["outcome"] == "settled"
    (claim,) = claims(APP)
    assert claim.pending is None
    assert claim.on_delete == ("Delete" if in_force else "Retain")
    assert attached(APP) == ({CLOUDWATCH} if in_force else {SSM})


def _remove_status(request_id: str) -> Any:
    from rolekeeper.aws.registry.requests import request_key
    from rolekeeper.aws.registry.table import Write

    return Write(key=request_key(request_id), update="REMOVE http_status, answered_at")


def test_response_urls_cloudformation_makes_are_accepted_and_others_refused() -> None:
    from rolekeeper.domain.catalog import Scope
    from rolekeeper.domain.errors import Unconfirmed
    from rolekeeper.provisioning.confirm import response_url

    scope = Scope("aws", "eu-west-1", "123456789012")
    stack_id = "arn:aws:cloudformation:eu-west-1:123456789012:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f"
    genuine = cloudformation.response_url(stack_id, "Role", "r-1")
    response_url(genuine, scope, stack_id, "Role", "r-1")
    for host in (
        "cloudformation-custom-resource-response-euwest1.s3-eu-west-1.amazonaws.com",
        "cloudformation-custom-resource-response-euwest1.s3.eu-west-1.amazonaws.com",
    ):
        response_url(
            genuine.replace("cloudformation-custom-resource-response-euwest1.s3.amazonaws.com", host),
            scope,
            stack_id,
            "Role",
            "r-1",
        )
    refused = [
        genuine.replace("https://", "http://"),  # not TLS
        genuine.replace("euwest1", "useast1"),  # another region's bucket
        genuine.replace("amazonaws.com", "amazonaws.com.evil.example"),
        genuine.replace("%7CRole%7C", "%7COther%7C"),  # another resource's key
        genuine.replace("r-1", "r-2"),  # another request's key
        genuine.split("?")[0],  # not pre-signed
        genuine.replace(".s3.amazonaws.com", ".s3.amazonaws.com:8443"),
    ]
    for url in refused:
        with pytest.raises(Unconfirmed):
            response_url(url, scope, stack_id, "Role", "r-1")
    china = Scope("aws-cn", "cn-north-1", "123456789012")
    cn_stack = stack_id.replace("arn:aws:", "arn:aws-cn:").replace("eu-west-1", "cn-north-1")
    cn_url = cloudformation.response_url(cn_stack, "Role", "r-1").replace(
        "s3.amazonaws.com", "s3.cn-north-1.amazonaws.com.cn"
    )
    response_url(cn_url, china, cn_stack, "Role", "r-1")
    with pytest.raises(Unconfirmed):
        response_url(cn_url.replace(".amazonaws.com.cn", ".amazonaws.com"), china, cn_stack, "Role", "r-1")
    # Local runs only: a receiver on this machine.
    response_url("http://127.0.0.1:8080/x", scope, stack_id, "Role", "r-1", local=True)
    with pytest.raises(Unconfirmed):
        response_url("http://127.0.0.1:8080/x", scope, stack_id, "Role", "r-1")


# --- a weaker trust statement waits for the answer's delivery too -----------------------------

SPOT_FLEET_TAGGING = "aws-ec2-spot-fleet-tagging-role"


def _trust_conditions() -> list[Any]:
    statements = get_role(SPOT_FLEET_TAGGING)["AssumeRolePolicyDocument"]["Statement"]
    return [s.get("Condition") for s in statements]


@pytest.mark.parametrize("signed", [False, True], ids=["forged", "cloudformations"])
def test_confused_deputy_protection_switched_off_waits_for_the_answers_delivery(
    aws, stack, monkeypatch, signed
):
    """Switching ConfusedDeputyProtection off weakens the trust policy: like a prune, it is applied
    only once CloudFormation's bucket accepted the answer. A forged Update in the victim's update
    window leaves the conditions in place throughout; CloudFormation's own takes them away."""
    from tools.devkit.responses import Sent

    created = stack.send("role-spot-fleet-tagging-create.json")
    assert created["Status"] == "SUCCESS", created["Reason"]
    (protected,) = _trust_conditions()
    assert protected is not None
    at_answer: list[list[Any]] = []
    answer = Sent.__call__

    def answering(self: Sent, url: str, body: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        at_answer.append(_trust_conditions())
        return answer(self, url, body, *args, **kwargs)

    monkeypatch.setattr(Sent, "__call__", answering)
    stack.cfn.set(
        stack.stack_id,
        "SpotFleetTaggingRole",
        "UPDATE_IN_PROGRESS",
        created["PhysicalResourceId"],
        stack_status="UPDATE_IN_PROGRESS",
    )
    update = stack.send(
        "role-spot-fleet-tagging-create.json",
        props={"ConfusedDeputyProtection": "false"},
        old_props={"Blueprint": "spot-fleet-tagging"},
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
        confirmed=False,
        signed=signed,
    )
    assert update["Status"] == "SUCCESS", update["Reason"]
    assert at_answer == [[protected]], "the conditions were taken away before the answer was accepted"
    assert _trust_conditions() == ([None] if signed else [protected])
