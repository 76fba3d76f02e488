"""Custom::ServiceLinkedRole end to end under moto (made AWS-like by tools/devkit/fidelity)."""

from __future__ import annotations

import boto3
import pytest

from rolekeeper.aws.registry import Registry
from rolekeeper.domain.records import role_key

SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"


def registry() -> Registry:
    import os

    return Registry(os.environ["REGISTRY_TABLE_NAME"])


def test_create_makes_role_with_aws_name_path_and_attributes(aws, stack):
    # When
    response = stack.send("slr-create.json")
    # Then
    assert response["Status"] == "SUCCESS", response["Reason"]
    role = boto3.client("iam").get_role(RoleName=SPOT_FLEET)["Role"]
    assert role["Path"] == "/aws-service-role/spotfleet.amazonaws.com/"
    assert response["PhysicalResourceId"] == role["Arn"]
    assert response["Data"] == {
        "RoleName": SPOT_FLEET,
        "Arn": role["Arn"],
        "RoleId": role["RoleId"],
        "Created": "true",
    }
    assert all(isinstance(v, str) for v in response["Data"].values())


def test_existing_role_is_adopted_not_failed(aws, stack):
    # Given: the console made the role long ago ("has been taken in this account" on create)
    boto3.client("iam").create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    # When
    response = stack.send("slr-create.json")
    # Then
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["Created"] == "false"


def test_create_refused_as_iam_does_when_role_appears_concurrently(aws, stack, monkeypatch):
    # Given: GetRole misses the role, then CreateServiceLinkedRole finds it taken (InvalidInput)
    from rolekeeper.aws import iam

    boto3.client("iam").create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    real_get = iam.get_role
    calls = {"n": 0}

    def first_miss(name):
        calls["n"] += 1
        return None if calls["n"] == 1 else real_get(name)

    monkeypatch.setattr(iam, "get_role", first_miss)
    response = stack.send("slr-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["Created"] == "false"


def test_raw_moto_entity_already_exists_is_also_adopted(raw_moto, stack, monkeypatch):
    # moto answers an existing role with EntityAlreadyExists rather than InvalidInput; both adopt.
    from botocore.exceptions import ClientError

    from rolekeeper.aws import iam

    error = ClientError(
        {"Error": {"Code": "EntityAlreadyExists", "Message": "Role exists"}}, "CreateServiceLinkedRole"
    )
    assert iam.already_exists(error)
    invalid = ClientError(
        {
            "Error": {
                "Code": "InvalidInput",
                "Message": "Service role name X has been taken in this account, please try a different suffix.",
            }
        },
        "CreateServiceLinkedRole",
    )
    assert iam.already_exists(invalid)
    other = ClientError(
        {"Error": {"Code": "InvalidInput", "Message": "Custom suffix is not allowed"}},
        "CreateServiceLinkedRole",
    )
    assert not iam.already_exists(other)


def test_same_create_twice_changes_nothing(aws, stack):
    first = stack.send("slr-create.json")
    second = stack.send("slr-create.json")
    assert second["Status"] == "SUCCESS"
    assert second["PhysicalResourceId"] == first["PhysicalResourceId"]
    assert second["Data"]["RoleId"] == first["Data"]["RoleId"]
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None and len(record.claims) == 1


def test_two_stacks_one_role_two_claims(aws, stack, other_stack):
    a = stack.send("slr-create.json")
    b = other_stack.send("slr-create.json")
    assert a["Status"] == b["Status"] == "SUCCESS"
    assert a["Data"]["RoleId"] == b["Data"]["RoleId"]
    roles = [r for r in boto3.client("iam").list_roles()["Roles"] if r["RoleName"] == SPOT_FLEET]
    assert len(roles) == 1
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None
    assert {c.stack_id for c in record.claims} == {stack.stack_id, other_stack.stack_id}


def test_update_keeps_description_current(aws, stack):
    created = stack.send("slr-create.json")
    response = stack.send("slr-update.json", PhysicalResourceId=created["PhysicalResourceId"])
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    role = boto3.client("iam").get_role(RoleName=SPOT_FLEET)["Role"]
    assert role["Description"] == "Spot Fleet launches instances for the batch platform"


def test_delete_with_retain_releases_claim_only(aws, stack):
    created = stack.send("slr-create.json")
    response = stack.send("slr-delete.json", PhysicalResourceId=created["PhysicalResourceId"])
    assert response["Status"] == "SUCCESS"
    boto3.client("iam").get_role(RoleName=SPOT_FLEET)  # still there
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None and record.claims == []


def test_delete_with_delete_waits_for_last_claim(aws, stack, other_stack, deletion_tasks):
    deletion_tasks.asynchronous = True
    props = {"OnDelete": "Delete"}
    created = stack.send("slr-create.json", props=props)
    other_stack.send("slr-create.json", props=props)
    # When the first stack goes, the other still claims the role
    stack.send("slr-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"])
    boto3.client("iam").get_role(RoleName=SPOT_FLEET)
    assert deletion_tasks.pending == {}
    # When the last claim goes, deletion is submitted (asynchronous in IAM) and the answer is immediate
    response = other_stack.send(
        "slr-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS"
    assert len(deletion_tasks.pending) == 1
    (task_id,) = deletion_tasks.pending
    assert task_id.startswith("task/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet/")
    # Until the deletion is known to be over, the object stays "deleting" with IAM's task id.
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None and record.deleting and record.deletion_task_id == task_id
    deletion_tasks.finish()
    with pytest.raises(boto3.client("iam").exceptions.NoSuchEntityException):
        boto3.client("iam").get_role(RoleName=SPOT_FLEET)
    # The next Create sees the task finished, forgets the old object and creates the role anew.
    again = stack.send("slr-create.json", props=props)
    assert again["Status"] == "SUCCESS" and again["Data"]["Created"] == "true"
    record = registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None and not record.deleting and len(record.claims) == 1


def test_delete_never_removes_an_adopted_role(aws, stack):
    boto3.client("iam").create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    created = stack.send("slr-create.json", props={"OnDelete": "Delete"})
    assert created["Data"]["Created"] == "false"
    stack.send(
        "slr-delete.json", props={"OnDelete": "Delete"}, PhysicalResourceId=created["PhysicalResourceId"]
    )
    boto3.client("iam").get_role(RoleName=SPOT_FLEET)


def test_delete_of_unknown_physical_id_touches_nothing(aws, stack):
    created = stack.send("slr-create.json", props={"OnDelete": "Delete"})
    # Cleanup Delete after a failed Create carries crhelper's generated id
    response = stack.send("slr-delete.json", PhysicalResourceId="app_SpotFleetServiceLinkedRole_ABCD1234")
    assert response["Status"] == "SUCCESS"
    # A Delete from a resource that never claimed the role touches nothing either
    response = stack.send(
        "slr-delete.json", logical_id="Stranger", PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS"
    boto3.client("iam").get_role(RoleName=SPOT_FLEET)
    assert len(registry().objects.read(role_key(SPOT_FLEET)).claims) == 1


def test_delete_of_role_already_gone_succeeds(aws, stack):
    created = stack.send("slr-create.json", props={"OnDelete": "Delete"})
    boto3.client("iam").delete_service_linked_role(RoleName=SPOT_FLEET)
    response = stack.send(
        "slr-delete.json", props={"OnDelete": "Delete"}, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]


def test_delete_does_not_sleep(aws, stack, monkeypatch):
    import time

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    created = stack.send("slr-create.json")
    stack.send("slr-delete.json", PhysicalResourceId=created["PhysicalResourceId"])
    assert slept == []


def test_custom_suffix_for_autoscaling(aws, stack):
    response = stack.send(
        "slr-create.json",
        logical_id="AsgRole",
        props={"AWSServiceName": "autoscaling.amazonaws.com", "CustomSuffix": "batch"},
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["RoleName"] == "AWSServiceRoleForAutoScaling_batch"


def test_regular_role_squatting_the_name_is_refused(aws, stack):
    boto3.client("iam").create_role(RoleName=SPOT_FLEET, AssumeRolePolicyDocument="{}")
    response = stack.send("slr-create.json")
    assert response["Status"] == "FAILED"
    assert "not a service-linked role" in response["Reason"]
