"""Lambda delivers an asynchronous event at least once, and retries it after a function error:
a request already answered gets no second response and makes no second claim."""

from __future__ import annotations

import time

from rolekeeper.domain.records import role_key
from tests.integration.test_service_role import get_role, registry
from tools.devkit.events import load_event


def test_a_redelivered_request_gets_no_second_response_and_no_second_claim(aws, stack, sent, context):
    from rolekeeper.handlers.custom_resource import lambda_handler

    first = stack.send("role-ecs-instance-create.json")
    assert first["Status"] == "SUCCESS", first["Reason"]
    again = load_event("role-ecs-instance-create.json", StackId=stack.stack_id, RequestId=first["RequestId"])
    answered = len(sent.responses)
    assert lambda_handler(again, context) is None
    assert len(sent.responses) == answered, "a second response for one RequestId"
    assert len(registry().objects.read(role_key("ecsInstanceRole")).claims) == 1


def test_a_redelivered_delete_does_not_act_twice(aws, stack, other_stack, sent, context):
    from rolekeeper.handlers.custom_resource import lambda_handler

    created = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    deleted = stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert deleted["Status"] == "SUCCESS", deleted["Reason"]
    # Another stack makes the role again; a redelivery of the old Delete must not touch it.
    theirs = other_stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    assert theirs["Status"] == "SUCCESS", theirs["Reason"]
    answered = len(sent.responses)
    stack.cfn.set(
        stack.stack_id,
        "EcsInstanceRole",
        "DELETE_IN_PROGRESS",
        created["PhysicalResourceId"],
        stack_status="DELETE_IN_PROGRESS",
    )
    redelivered = load_event(
        "role-ecs-instance-delete.json",
        StackId=stack.stack_id,
        PhysicalResourceId=created["PhysicalResourceId"],
        RequestId=deleted["RequestId"],
    )
    lambda_handler(redelivered, context)
    assert len(sent.responses) == answered
    assert get_role("ecsInstanceRole") is not None
    assert len(registry().objects.read(role_key("ecsInstanceRole")).claims) == 1


def test_a_request_whose_first_attempt_died_before_answering_is_answered(aws, stack):
    # The first attempt noted the request, then the function crashed (no answer): Lambda's retry
    # must be answered.
    registry().requests.begin("d1ed-before-answering", now=time.time(), until=time.time() - 1)
    response = stack.send("role-ecs-instance-create.json", RequestId="d1ed-before-answering")
    assert response["Status"] == "SUCCESS", response["Reason"]


def test_a_registry_that_cannot_be_read_does_not_cost_the_request_its_response(aws, stack, monkeypatch):
    from rolekeeper.aws.registry import Requests

    def broken(*_args, **_kwargs):
        raise RuntimeError("registry unavailable")

    monkeypatch.setattr(Requests, "begin", broken)
    response = stack.send("slr-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]


def test_a_refused_direct_invoke_does_not_make_cloudformations_request_look_answered(aws, stack):
    # Someone invokes the function with a RequestId (CloudFormation never made this request): it is
    # refused, and CloudFormation's own request carrying that id is still answered and acts.
    forged = stack.send("role-ecs-instance-create.json", RequestId="shared-request-id", confirmed=False)
    assert forged["Status"] == "FAILED"
    real = stack.send("role-ecs-instance-create.json", RequestId="shared-request-id")
    assert real["Status"] == "SUCCESS", real["Reason"]
    assert get_role("ecsInstanceRole") is not None
