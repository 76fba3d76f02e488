"""Custom::ServiceRole end to end under moto (AWS managed policies loaded, see tools/devkit/fidelity).

Every test reads the outcome back from IAM with boto3: the CloudFormation response alone is not
proof that the role, its trust policy, its policies and its instance profile are as documented.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rolekeeper.aws.registry import Registry
from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.errors import InvalidRequest
from rolekeeper.domain.properties import ServiceRoleProperties, parse
from rolekeeper.domain.records import role_key
from rolekeeper.domain.validation import role_spec

ACCOUNT = "123456789012"
AWS_POLICY = "arn:aws:iam::aws:policy/"
SPOT_FLEET_TAGGING_POLICY = AWS_POLICY + "service-role/AmazonEC2SpotFleetTaggingRole"
ECS_INSTANCE_POLICY = AWS_POLICY + "service-role/AmazonEC2ContainerServiceforEC2Role"
BATCH_SERVICE_POLICY = AWS_POLICY + "service-role/AWSBatchServiceRole"
SSM_CORE = AWS_POLICY + "AmazonSSMManagedInstanceCore"
CLOUDWATCH_AGENT = AWS_POLICY + "CloudWatchAgentServerPolicy"
ADMINISTRATOR = AWS_POLICY + "AdministratorAccess"
BOUNDARY = AWS_POLICY + "PowerUserAccess"
GOV_STACK_ID = (
    f"arn:aws-us-gov:cloudformation:us-gov-west-1:{ACCOUNT}:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f"
)

SPOT_FLEET_CONDITION = {
    "StringEquals": {"aws:SourceAccount": ACCOUNT},
    "ArnLike": {"aws:SourceArn": f"arn:aws:ec2:*:{ACCOUNT}:spot-fleet-request/sfr-*"},
}

# --- reading IAM back -------------------------------------------------------------------------


def iam() -> Any:
    return boto3.client("iam")


def registry() -> Registry:
    return Registry(os.environ["REGISTRY_TABLE_NAME"])


def get_role(name: str) -> dict[str, Any] | None:
    try:
        return iam().get_role(RoleName=name)["Role"]
    except iam().exceptions.NoSuchEntityException:
        return None


def role_names() -> set[str]:
    return {r["RoleName"] for r in iam().list_roles()["Roles"]}


def profile_names() -> set[str]:
    return {p["InstanceProfileName"] for p in iam().list_instance_profiles()["InstanceProfiles"]}


def get_profile(name: str) -> dict[str, Any] | None:
    try:
        return iam().get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam().exceptions.NoSuchEntityException:
        return None


def statements(name: str) -> list[dict[str, Any]]:
    document = iam().get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    found = document["Statement"]
    return found if isinstance(found, list) else [found]


def only_statement(name: str) -> dict[str, Any]:
    (statement,) = statements(name)
    return statement


def attached(name: str) -> set[str]:
    return {p["PolicyArn"] for p in iam().list_attached_role_policies(RoleName=name)["AttachedPolicies"]}


MARKER = "rolekeeper:managed"


def all_tags(name: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in iam().list_role_tags(RoleName=name)["Tags"]}


def tags(name: str) -> dict[str, str]:
    """The role's tags apart from rolekeeper's marker (which test_created_roles_carry_the_marker checks)."""
    return {k: v for k, v in all_tags(name).items() if k != MARKER}


def profiles_holding(name: str) -> list[str]:
    found = iam().list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
    return [p["InstanceProfileName"] for p in found]


def boundary(name: str) -> str | None:
    return (iam().get_role(RoleName=name)["Role"].get("PermissionsBoundary") or {}).get(
        "PermissionsBoundaryArn"
    )


def trust_document(*statement: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statement)})


def service_trust(service: str) -> dict[str, Any]:
    # As the IAM console writes it (empty Sid included).
    return {"Sid": "", "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}


def access_denied(operation: str) -> ClientError:
    caller = f"arn:aws:sts::{ACCOUNT}:assumed-role/rolekeeper/fn"
    message = f"User: {caller} is not authorized to perform: iam:{operation}"
    return ClientError({"Error": {"Code": "AccessDenied", "Message": message}}, operation)


def assert_nothing_created() -> None:
    assert role_names() == set()
    assert profile_names() == set()
    assert list(registry().objects.all()) == []


# --- blueprints -------------------------------------------------------------------------------


def assert_documented_role(
    response: dict[str, Any], name: str, principal: str, policy: str, profile: bool
) -> None:
    """The response and IAM agree with the blueprint table in the README."""
    assert response["Status"] == "SUCCESS", response["Reason"]
    role = get_role(name)
    assert role is not None
    assert role["Path"] == "/"
    assert role["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/{name}"
    assert response["PhysicalResourceId"] == role["Arn"]
    expected = {"RoleName": name, "Arn": role["Arn"], "RoleId": role["RoleId"], "Created": "true"}
    if profile:
        arn = f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}"
        assert get_profile(name)["Arn"] == arn
        expected |= {"InstanceProfileName": name, "InstanceProfileArn": arn}
    assert response["Data"] == expected
    statement = only_statement(name)
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": principal}
    assert statement["Action"] == "sts:AssumeRole"
    assert attached(name) == {policy}
    if profile:
        assert profiles_holding(name) == [name]
        assert [r["RoleName"] for r in get_profile(name)["Roles"]] == [name]
    else:
        assert profiles_holding(name) == []
        assert profile_names() == set()


def test_spot_fleet_tagging_creates_documented_role(aws, stack):
    response = stack.send("role-spot-fleet-tagging-create.json")
    assert_documented_role(
        response,
        "aws-ec2-spot-fleet-tagging-role",
        "spotfleet.amazonaws.com",
        SPOT_FLEET_TAGGING_POLICY,
        False,
    )


def test_ecs_instance_creates_documented_role_with_instance_profile(aws, stack):
    response = stack.send(
        "role-ecs-instance-create.json", props={"Tags": [{"Key": "team", "Value": "platform"}]}
    )
    assert_documented_role(response, "ecsInstanceRole", "ec2.amazonaws.com", ECS_INSTANCE_POLICY, True)
    # The tag is applied at creation, with rolekeeper's marker
    assert all_tags("ecsInstanceRole") == {"team": "platform", MARKER: "true"}


@pytest.mark.parametrize(
    "event_file",
    [
        "role-ecs-instance-create.json",
        "role-ec2-application-create.json",
        "role-spot-fleet-tagging-create.json",
    ],
)
def test_created_roles_carry_the_marker_adopted_roles_do_not(aws, stack, event_file):
    response = stack.send(event_file)
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert all_tags(response["Data"]["RoleName"]) == {MARKER: "true"}
    iam().create_role(
        RoleName="AWSBatchServiceRole",
        AssumeRolePolicyDocument=trust_document(service_trust("batch.amazonaws.com")),
    )
    adopted = stack.send("role-batch-service-create.json")
    assert adopted["Data"]["Created"] == "false"
    assert all_tags("AWSBatchServiceRole") == {}


def test_batch_service_creates_documented_role(aws, stack):
    response = stack.send("role-batch-service-create.json")
    assert_documented_role(
        response, "AWSBatchServiceRole", "batch.amazonaws.com", BATCH_SERVICE_POLICY, False
    )


def test_ec2_application_creates_named_role_with_listed_policies_and_profile(aws, stack):
    response = stack.send("role-ec2-application-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    role = get_role("app-web")
    assert role is not None
    profile = get_profile("app-web")
    assert profile is not None
    assert response["PhysicalResourceId"] == role["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/app-web"
    assert response["Data"] == {
        "RoleName": "app-web",
        "Arn": role["Arn"],
        "RoleId": role["RoleId"],
        "Created": "true",
        "InstanceProfileName": "app-web",
        "InstanceProfileArn": profile["Arn"],
    }
    statement = only_statement("app-web")
    assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert "Condition" not in statement
    assert attached("app-web") == {SSM_CORE}
    assert profiles_holding("app-web") == ["app-web"]


def test_documented_name_with_path_puts_role_and_profile_under_it(aws, stack):
    response = stack.send("role-ecs-instance-create.json", props={"Path": "/batch/"})
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == f"arn:aws:iam::{ACCOUNT}:role/batch/ecsInstanceRole"
    assert get_role("ecsInstanceRole")["Path"] == "/batch/"
    assert get_profile("ecsInstanceRole")["Path"] == "/batch/"
    assert (
        response["Data"]["InstanceProfileArn"]
        == f"arn:aws:iam::{ACCOUNT}:instance-profile/batch/ecsInstanceRole"
    )


def test_application_role_with_path_is_refused(aws, stack):
    # IAM's "*" also matches "/": rolekeeper's permissions for prefixed names stop at the root path.
    response = stack.send("role-ec2-application-create.json", props={"Path": "/apps/web/"})
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith("Path must be / for RoleName app-web")
    assert role_names() == set()


def test_ec2_application_instance_profile_false_makes_no_profile(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"InstanceProfile": "false"})
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert "InstanceProfileName" not in response["Data"]
    assert profile_names() == set()


def test_create_with_boundary_and_tags_sets_them(aws, stack):
    response = stack.send(
        "role-ec2-application-create.json",
        props={
            "PermissionsBoundary": BOUNDARY,
            "Tags": [{"Key": "app", "Value": "web"}, {"Key": "env", "Value": "prod"}],
        },
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert boundary("app-web") == BOUNDARY
    assert tags("app-web") == {"app": "web", "env": "prod"}


def test_create_twice_changes_nothing_the_second_time(aws, stack, monkeypatch):
    from rolekeeper.aws import iam as rk_iam

    first = stack.send("role-ecs-instance-create.json")
    spot = stack.send("role-spot-fleet-tagging-create.json")
    assert first["Status"] == spot["Status"] == "SUCCESS"
    mutations: list[str] = []
    for name in (
        "create_role",
        "update_trust",
        "attach",
        "detach",
        "set_boundary",
        "tag",
        "untag",
        "create_instance_profile",
        "add_to_profile",
        "remove_from_profile",
        "delete_instance_profile",
        "delete_role",
    ):
        real = getattr(rk_iam, name)
        monkeypatch.setattr(
            rk_iam, name, lambda *a, _n=name, _f=real, **k: (mutations.append(_n), _f(*a, **k))[1]
        )
    # When the same requests come again (CloudFormation retry)
    second = stack.send("role-ecs-instance-create.json")
    spot_again = stack.send("role-spot-fleet-tagging-create.json")
    # Then
    assert second["Status"] == spot_again["Status"] == "SUCCESS"
    assert mutations == []
    assert second["PhysicalResourceId"] == first["PhysicalResourceId"]
    assert second["Data"] == first["Data"]
    assert len(registry().objects.read(role_key("ecsInstanceRole")).claims) == 1


# --- spot-fleet-tagging confused deputy -----------------------------------------------------------


def test_spot_fleet_tagging_trust_limited_by_source_account_and_arn_by_default(aws, stack):
    response = stack.send("role-spot-fleet-tagging-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    statement = only_statement("aws-ec2-spot-fleet-tagging-role")
    assert statement["Principal"] == {"Service": "spotfleet.amazonaws.com"}
    assert statement["Condition"] == SPOT_FLEET_CONDITION


def test_spot_fleet_tagging_protection_false_has_no_condition(aws, stack):
    response = stack.send("role-spot-fleet-tagging-create.json", props={"ConfusedDeputyProtection": "false"})
    assert response["Status"] == "SUCCESS", response["Reason"]
    statement = only_statement("aws-ec2-spot-fleet-tagging-role")
    assert statement["Principal"] == {"Service": "spotfleet.amazonaws.com"}
    assert "Condition" not in statement


def test_spot_fleet_tagging_update_toggles_protection_in_place(aws, stack):
    name = "aws-ec2-spot-fleet-tagging-role"
    created = stack.send("role-spot-fleet-tagging-create.json")
    role_id = get_role(name)["RoleId"]
    base = {"Blueprint": "spot-fleet-tagging", "OnDelete": "Retain"}
    # When protection is switched off
    off = stack.send(
        "role-spot-fleet-tagging-create.json",
        props={"ConfusedDeputyProtection": "false"},
        old_props=base,
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    # Then the same role's trust policy loses the condition
    assert off["Status"] == "SUCCESS", off["Reason"]
    assert off["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert get_role(name)["RoleId"] == role_id
    assert "Condition" not in only_statement(name)
    # When it is switched back on
    on = stack.send(
        "role-spot-fleet-tagging-create.json",
        props={"ConfusedDeputyProtection": "true"},
        old_props={**base, "ConfusedDeputyProtection": "false"},
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert on["Status"] == "SUCCESS", on["Reason"]
    assert on["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert get_role(name)["RoleId"] == role_id
    assert only_statement(name)["Condition"] == SPOT_FLEET_CONDITION
    assert attached(name) == {SPOT_FLEET_TAGGING_POLICY}


# --- adoption --------------------------------------------------------------------------------


def test_adopt_console_ecs_instance_role_adds_blueprint_and_keeps_extras(aws, stack):
    # Given: ecsInstanceRole made by the console, with a policy and a tag someone else added
    iam().create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=trust_document(service_trust("ec2.amazonaws.com")),
        Tags=[{"Key": "owner", "Value": "ops"}],
    )
    iam().attach_role_policy(RoleName="ecsInstanceRole", PolicyArn=SSM_CORE)
    role_id = get_role("ecsInstanceRole")["RoleId"]
    # When
    response = stack.send("role-ecs-instance-create.json")
    # Then
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["Created"] == "false"
    assert response["Data"]["RoleId"] == role_id
    assert response["Data"]["InstanceProfileName"] == "ecsInstanceRole"
    assert attached("ecsInstanceRole") == {ECS_INSTANCE_POLICY, SSM_CORE}
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]
    assert all_tags("ecsInstanceRole") == {"owner": "ops"}
    assert only_statement("ecsInstanceRole") == service_trust("ec2.amazonaws.com")


def test_adopt_role_keeps_other_trusted_principals(aws, stack):
    iam().create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=trust_document(
            {
                "Effect": "Allow",
                "Principal": {"Service": ["ec2.amazonaws.com", "ssm.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ),
    )
    response = stack.send("role-ecs-instance-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    services = set()
    for statement in statements("ecsInstanceRole"):
        found = statement["Principal"]["Service"]
        services |= set(found if isinstance(found, list) else [found])
    assert services == {"ec2.amazonaws.com", "ssm.amazonaws.com"}


def test_adopt_role_not_trusting_the_blueprint_service_is_refused_and_untouched(aws, stack):
    # Given: a role of the default name that trusts Lambda only
    iam().create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=trust_document(service_trust("lambda.amazonaws.com")),
    )
    before = only_statement("ecsInstanceRole")
    # When
    response = stack.send("role-ecs-instance-create.json")
    # Then
    assert response["Status"] == "FAILED"
    assert "does not trust ec2.amazonaws.com" in response["Reason"]
    assert "ecsInstanceRole" in response["Reason"]
    assert response["Data"] == {}
    assert only_statement("ecsInstanceRole") == before
    assert attached("ecsInstanceRole") == set()
    assert tags("ecsInstanceRole") == {}
    assert profile_names() == set()
    assert registry().objects.read(role_key("ecsInstanceRole")) is None
    # And CloudFormation's cleanup Delete of the failed Create touches nothing
    cleanup = stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=response["PhysicalResourceId"],
    )
    assert cleanup["Status"] == "SUCCESS", cleanup["Reason"]
    assert get_role("ecsInstanceRole") is not None


def test_adopt_fills_in_empty_instance_profile_of_the_same_name(aws, stack):
    iam().create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=trust_document(service_trust("ec2.amazonaws.com")),
    )
    iam().create_instance_profile(InstanceProfileName="ecsInstanceRole")
    response = stack.send("role-ecs-instance-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]
    assert profile_names() == {"ecsInstanceRole"}


# --- update ----------------------------------------------------------------------------------


def test_update_ec2_application_swaps_policies_and_adds_tag_in_place(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    role_id = get_role("app-web")["RoleId"]
    # When (events/role-ec2-application-update.json: SSM core -> CloudWatch agent, tag app=web)
    response = stack.send(
        "role-ec2-application-update.json",
        props={"Tags": [{"Key": "app", "Value": "web"}]},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    # Then
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert response["Data"]["RoleId"] == role_id
    assert get_role("app-web")["RoleId"] == role_id
    assert attached("app-web") == {CLOUDWATCH_AGENT}
    assert tags("app-web") == {"app": "web"}
    assert profiles_holding("app-web") == ["app-web"]


def test_update_removing_policy_keeps_policies_others_attached(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    # Someone else attaches a policy outside the stack
    iam().attach_role_policy(RoleName="app-web", PolicyArn=ADMINISTRATOR)
    response = stack.send(
        "role-ec2-application-update.json", PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert attached("app-web") == {CLOUDWATCH_AGENT, ADMINISTRATOR}


def test_update_removing_tag_untags_it(aws, stack):
    tagged = {"Tags": [{"Key": "app", "Value": "web"}]}
    created = stack.send("role-ec2-application-create.json", props=tagged)
    assert tags("app-web") == {"app": "web"}
    # Someone else tags the role outside the stack
    iam().tag_role(RoleName="app-web", Tags=[{"Key": "owner", "Value": "ops"}])
    response = stack.send(
        "role-ec2-application-update.json",
        props={"Tags": [{"Key": "env", "Value": "prod"}]},
        old_props=tagged,
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert tags("app-web") == {"env": "prod", "owner": "ops"}


def test_update_sets_and_removes_permissions_boundary_in_place(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    assert boundary("app-web") is None
    # When a boundary is added
    added = stack.send(
        "role-ec2-application-update.json",
        props={"PermissionsBoundary": BOUNDARY},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert added["Status"] == "SUCCESS", added["Reason"]
    assert added["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert boundary("app-web") == BOUNDARY
    # When it is removed again
    removed = stack.send(
        "role-ec2-application-update.json",
        old_props={"PermissionsBoundary": BOUNDARY},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert removed["Status"] == "SUCCESS", removed["Reason"]
    assert removed["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert boundary("app-web") is None


def test_update_instance_profile_off_removes_profile(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    response = stack.send(
        "role-ec2-application-update.json",
        props={"InstanceProfile": "false"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert "InstanceProfileName" not in response["Data"]
    assert profile_names() == set()
    assert get_role("app-web") is not None


def test_update_role_name_change_replaces_role_and_old_stays_until_cleanup(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    old_id = get_role("app-web")["RoleId"]
    # When RoleName changes
    response = stack.send(
        "role-ec2-application-update.json",
        props={"RoleName": "app-web-v2"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    # Then a new role answers with a new physical id...
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == f"arn:aws:iam::{ACCOUNT}:role/app-web-v2"
    assert response["PhysicalResourceId"] != created["PhysicalResourceId"]
    assert response["Data"]["RoleName"] == "app-web-v2"
    assert response["Data"]["Created"] == "true"
    assert attached("app-web-v2") == {CLOUDWATCH_AGENT}
    assert profiles_holding("app-web-v2") == ["app-web-v2"]
    # ...and the old role is left as it was for CloudFormation's cleanup Delete
    assert get_role("app-web")["RoleId"] == old_id
    assert attached("app-web") == {SSM_CORE}
    assert profiles_holding("app-web") == ["app-web"]
    # When the cleanup Delete for the old physical id arrives
    cleanup = stack.send("role-ec2-application-delete.json", PhysicalResourceId=created["PhysicalResourceId"])
    assert cleanup["Status"] == "SUCCESS", cleanup["Reason"]
    assert get_role("app-web") is None
    assert profile_names() == {"app-web-v2"}
    assert get_role("app-web-v2") is not None
    assert registry().objects.read(role_key("app-web")) is None
    assert len(registry().objects.read(role_key("app-web-v2")).claims) == 1


def test_update_path_and_role_name_change_replaces_role(aws, stack):
    old = {"OnDelete": "Delete"}
    created = stack.send("role-spot-fleet-tagging-create.json", props=old)
    response = stack.send(
        "role-spot-fleet-tagging-create.json",
        props={"RoleName": "AmazonEC2SpotFleetRole", "Path": "/spot/", **old},
        old_props=old,
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == f"arn:aws:iam::{ACCOUNT}:role/spot/AmazonEC2SpotFleetRole"
    assert get_role("AmazonEC2SpotFleetRole")["Path"] == "/spot/"
    assert get_role("aws-ec2-spot-fleet-tagging-role")["Path"] == "/"
    cleanup = stack.send(
        "role-spot-fleet-tagging-create.json",
        props=old,
        RequestType="Delete",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert cleanup["Status"] == "SUCCESS", cleanup["Reason"]
    assert get_role("aws-ec2-spot-fleet-tagging-role") is None
    assert get_role("AmazonEC2SpotFleetRole") is not None


def test_update_path_change_alone_is_refused_and_role_untouched(aws, stack):
    # IAM role names are unique whatever the path, so the new role cannot exist next to the old one
    # until the cleanup Delete: the change is refused with a Reason, and the old role stays as it is.
    created = stack.send("role-ec2-application-create.json")
    role_id = get_role("app-web")["RoleId"]
    response = stack.send(
        "role-ec2-application-update.json",
        props={"Path": "/apps/"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert response["Status"] == "FAILED"
    assert "path" in response["Reason"].lower()
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert get_role("app-web")["RoleId"] == role_id
    assert get_role("app-web")["Path"] == "/"
    assert attached("app-web") == {SSM_CORE}
    assert tags("app-web") == {}


# --- delete ----------------------------------------------------------------------------------


def test_delete_with_retain_keeps_role(aws, stack):
    created = stack.send("role-ecs-instance-create.json")
    response = stack.send("role-ecs-instance-delete.json", PhysicalResourceId=created["PhysicalResourceId"])
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert get_role("ecsInstanceRole") is not None
    assert attached("ecsInstanceRole") == {ECS_INSTANCE_POLICY}
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]
    assert registry().objects.read(role_key("ecsInstanceRole")).claims == []


def test_delete_with_delete_removes_profile_policies_inline_policies_and_role(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    assert created["Status"] == "SUCCESS", created["Reason"]
    iam().put_role_policy(
        RoleName="app-web",
        PolicyName="read-bucket",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )
    response = stack.send(
        "role-ec2-application-delete.json", PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert get_role("app-web") is None
    assert get_profile("app-web") is None
    assert profile_names() == set()
    assert registry().objects.read(role_key("app-web")) is None
    # The managed policy itself is untouched
    assert iam().get_policy(PolicyArn=SSM_CORE)["Policy"]["Arn"] == SSM_CORE


def test_delete_when_profile_already_deleted_by_hand_succeeds(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    iam().remove_role_from_instance_profile(InstanceProfileName="app-web", RoleName="app-web")
    iam().delete_instance_profile(InstanceProfileName="app-web")
    response = stack.send(
        "role-ec2-application-delete.json", PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert get_role("app-web") is None
    assert registry().objects.read(role_key("app-web")) is None


def test_delete_when_role_already_deleted_by_hand_succeeds(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    iam().remove_role_from_instance_profile(InstanceProfileName="app-web", RoleName="app-web")
    iam().detach_role_policy(RoleName="app-web", PolicyArn=SSM_CORE)
    iam().delete_role(RoleName="app-web")
    response = stack.send(
        "role-ec2-application-delete.json", PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert get_role("app-web") is None
    # The profile rolekeeper made (left empty by hand) goes too
    assert profile_names() == set()
    assert registry().objects.read(role_key("app-web")) is None


def test_delete_never_removes_an_adopted_role(aws, stack):
    iam().create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=trust_document(service_trust("ec2.amazonaws.com")),
    )
    props = {"OnDelete": "Delete"}
    created = stack.send("role-ecs-instance-create.json", props=props)
    assert created["Data"]["Created"] == "false"
    response = stack.send(
        "role-ecs-instance-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert get_role("ecsInstanceRole") is not None
    assert attached("ecsInstanceRole") == {ECS_INSTANCE_POLICY}
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]


def test_delete_with_two_stacks_waits_for_last_claim(aws, stack, other_stack):
    props = {"OnDelete": "Delete"}
    created = stack.send("role-ecs-instance-create.json", props=props)
    adopted = other_stack.send("role-ecs-instance-create.json", props=props)
    assert created["Status"] == adopted["Status"] == "SUCCESS"
    assert adopted["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert adopted["Data"]["RoleId"] == created["Data"]["RoleId"]
    # When the first stack goes, the other still claims the role
    first = stack.send(
        "role-ecs-instance-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert first["Status"] == "SUCCESS", first["Reason"]
    assert get_role("ecsInstanceRole") is not None
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]
    assert attached("ecsInstanceRole") == {ECS_INSTANCE_POLICY}
    # When the last claim goes, the role rolekeeper created is deleted
    last = other_stack.send(
        "role-ecs-instance-delete.json", props=props, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert last["Status"] == "SUCCESS", last["Reason"]
    assert get_role("ecsInstanceRole") is None
    assert profile_names() == set()
    assert registry().objects.read(role_key("ecsInstanceRole")) is None


def test_delete_of_physical_id_never_produced_touches_nothing(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    response = stack.send("role-ec2-application-delete.json", PhysicalResourceId="app_WebAppRole_ABCD1234")
    assert response["Status"] == "SUCCESS", response["Reason"]
    stranger = stack.send(
        "role-ec2-application-delete.json",
        logical_id="Stranger",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert stranger["Status"] == "SUCCESS", stranger["Reason"]
    assert get_role("app-web") is not None
    assert len(registry().objects.read(role_key("app-web")).claims) == 1


# --- refusals: nothing created ------------------------------------------------------------------


def assert_refused(response: dict[str, Any], named: str) -> None:
    assert response["Status"] == "FAILED"
    assert named in response["Reason"]
    assert response["Data"] == {}
    assert_nothing_created()


def test_refusal_unknown_blueprint(aws, stack):
    response = stack.send("role-ecs-instance-create.json", props={"Blueprint": "lambda-admin"})
    assert_refused(response, "Blueprint")
    assert "ecs-instance" in response["Reason"]


def test_refusal_managed_policy_arns_on_ecs_instance(aws, stack):
    response = stack.send("role-ecs-instance-create.json", props={"ManagedPolicyArns": [SSM_CORE]})
    assert_refused(response, "ManagedPolicyArns")


def test_refusal_managed_policy_not_in_allowed_list(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"ManagedPolicyArns": [ADMINISTRATOR]})
    assert_refused(response, "ManagedPolicyArns")
    # The Reason names the refused policy and what is allowed instead
    assert ADMINISTRATOR in response["Reason"]
    assert SSM_CORE in response["Reason"]
    assert CLOUDWATCH_AGENT in response["Reason"]
    assert get_role("app-web") is None


def test_refusal_ec2_application_without_role_name(aws, stack):
    response = stack.send("role-ec2-application-create.json", drop=("RoleName",))
    assert_refused(response, "RoleName")


def test_refusal_role_name_with_bad_characters(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"RoleName": "bad name!"})
    assert_refused(response, "RoleName")


def test_refusal_role_name_of_65_characters(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"RoleName": "r" * 65})
    assert_refused(response, "RoleName")


def test_refusal_path_without_slashes(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"Path": "noslash"})
    assert_refused(response, "Path")
    assert get_role("app-web") is None


def test_refusal_permissions_boundary_not_an_arn(aws, stack):
    response = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": "not-an-arn"})
    assert_refused(response, "PermissionsBoundary")
    assert get_role("app-web") is None


def test_refusal_confused_deputy_protection_on_ecs_instance(aws, stack):
    response = stack.send("role-ecs-instance-create.json", props={"ConfusedDeputyProtection": "false"})
    assert_refused(response, "ConfusedDeputyProtection")
    assert "spot-fleet-tagging" in response["Reason"]
    assert get_role("ecsInstanceRole") is None


def test_refusal_instance_profile_on_batch_service(aws, stack):
    response = stack.send("role-batch-service-create.json", props={"InstanceProfile": "true"})
    assert_refused(response, "InstanceProfile")
    assert get_role("AWSBatchServiceRole") is None


def test_refusal_reserved_tag_key(aws, stack):
    response = stack.send("role-ecs-instance-create.json", props={"Tags": [{"Key": "aws:foo", "Value": "x"}]})
    assert_refused(response, "Tags[0].Key")
    assert "aws:" in response["Reason"]
    assert get_role("ecsInstanceRole") is None


def test_refusal_cleanup_delete_of_failed_create_succeeds(aws, stack):
    refused = stack.send("role-ec2-application-create.json", props={"Path": "noslash"})
    assert refused["Status"] == "FAILED"
    response = stack.send(
        "role-ec2-application-delete.json", PhysicalResourceId=refused["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert_nothing_created()


def test_refusal_of_update_leaves_role_as_it_was(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    response = stack.send(
        "role-ec2-application-update.json",
        props={"ManagedPolicyArns": [ADMINISTRATOR]},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert response["Status"] == "FAILED"
    assert "ManagedPolicyArns" in response["Reason"]
    assert response["PhysicalResourceId"] == created["PhysicalResourceId"]
    assert attached("app-web") == {SSM_CORE}
    assert tags("app-web") == {}


def test_refusal_policy_from_other_partition(aws, stack):
    response = stack.send(
        "role-ec2-application-create.json",
        props={"PermissionsBoundary": "arn:aws-us-gov:iam::aws:policy/PowerUserAccess"},
    )
    assert response["Status"] == "FAILED"
    assert "arn:aws-us-gov:iam::aws:policy/PowerUserAccess" in response["Reason"]
    assert "partition" in response["Reason"]
    assert_nothing_created()


# --- partition awareness -----------------------------------------------------------------------


def settings_with(*allowed: str) -> Any:
    from rolekeeper.config import settings

    return dataclasses.replace(settings(), allowed_managed_policy_arns=frozenset(allowed))


def service_role_props(**properties: Any) -> ServiceRoleProperties:
    props = parse("Custom::ServiceRole", properties)
    assert isinstance(props, ServiceRoleProperties)
    return props


def test_partition_us_gov_role_spec_uses_us_gov_arns():
    scope = Scope.from_arn(GOV_STACK_ID)
    assert scope == Scope(partition="aws-us-gov", region="us-gov-west-1", account=ACCOUNT)
    config = settings_with()
    ecs = role_spec(service_role_props(Blueprint="ecs-instance"), config, scope)
    assert ecs.policy_arns == (
        "arn:aws-us-gov:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",
    )
    batch = role_spec(service_role_props(Blueprint="batch-service"), config, scope)
    assert batch.policy_arns == ("arn:aws-us-gov:iam::aws:policy/service-role/AWSBatchServiceRole",)
    spot = role_spec(service_role_props(Blueprint="spot-fleet-tagging"), config, scope)
    assert spot.policy_arns == ("arn:aws-us-gov:iam::aws:policy/service-role/AmazonEC2SpotFleetTaggingRole",)
    assert spot.trust_statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:aws-us-gov:ec2:*:{ACCOUNT}:spot-fleet-request/sfr-*"},
    }
    assert not any("arn:aws:" in arn for spec in (ecs, batch, spot) for arn in spec.policy_arns)


def test_partition_us_gov_allows_only_us_gov_policy_arns():
    scope = Scope.from_arn(GOV_STACK_ID)
    gov_ssm = "arn:aws-us-gov:iam::aws:policy/AmazonSSMManagedInstanceCore"
    config = settings_with(gov_ssm, SSM_CORE)
    spec = role_spec(
        service_role_props(Blueprint="ec2-application", RoleName="app-web", ManagedPolicyArns=[gov_ssm]),
        config,
        scope,
    )
    assert spec.policy_arns == (gov_ssm,)
    with pytest.raises(InvalidRequest, match="partition"):
        role_spec(
            service_role_props(Blueprint="ec2-application", RoleName="app-web", ManagedPolicyArns=[SSM_CORE]),
            config,
            scope,
        )


def test_partition_us_gov_request_attaches_us_gov_policies(aws, stack, monkeypatch):
    # moto keeps IAM in the aws partition, so record the attach calls instead of making them.
    from rolekeeper.aws import iam as rk_iam

    attached_arns: list[str] = []
    monkeypatch.setattr(rk_iam, "attach", lambda _name, arn: attached_arns.append(arn))
    # The partition comes from the function's own ARN (a function in GovCloud), not from the request.
    stack.context = dataclasses.replace(
        stack.context,
        invoked_function_arn=f"arn:aws-us-gov:lambda:us-gov-west-1:{ACCOUNT}:function:rolekeeper-ProvisionerFunction",
    )
    response = stack.send("role-spot-fleet-tagging-create.json", StackId=GOV_STACK_ID)
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert attached_arns == ["arn:aws-us-gov:iam::aws:policy/service-role/AmazonEC2SpotFleetTaggingRole"]
    condition = only_statement("aws-ec2-spot-fleet-tagging-role")["Condition"]
    assert condition["ArnLike"]["aws:SourceArn"] == f"arn:aws-us-gov:ec2:*:{ACCOUNT}:spot-fleet-request/sfr-*"


# --- rollback --------------------------------------------------------------------------------


def test_rollback_when_attach_fails_leaves_no_role_or_profile(aws, stack, monkeypatch):
    from rolekeeper.aws import iam as rk_iam

    def denied(_name: str, _arn: str) -> None:
        raise access_denied("AttachRolePolicy")

    monkeypatch.setattr(rk_iam, "attach", denied)
    response = stack.send("role-ecs-instance-create.json")
    assert response["Status"] == "FAILED"
    assert "AccessDenied" in response["Reason"]
    assert "AttachRolePolicy" in response["Reason"]
    assert response["Data"] == {}
    assert_nothing_created()


def test_rollback_when_adding_role_to_profile_fails_leaves_no_role_or_profile(aws, stack, monkeypatch):
    from rolekeeper.aws import iam as rk_iam

    def denied(_profile: str, _role: str) -> None:
        raise access_denied("AddRoleToInstanceProfile")

    monkeypatch.setattr(rk_iam, "add_to_profile", denied)
    response = stack.send("role-ec2-application-create.json")
    assert response["Status"] == "FAILED"
    assert "AccessDenied" in response["Reason"]
    assert_nothing_created()


def test_rollback_when_profile_name_held_by_another_role_leaves_that_profile_alone(aws, stack):
    # Given: an instance profile named app-web already holds another role
    iam().create_role(
        RoleName="legacy", AssumeRolePolicyDocument=trust_document(service_trust("ec2.amazonaws.com"))
    )
    iam().create_instance_profile(InstanceProfileName="app-web")
    iam().add_role_to_instance_profile(InstanceProfileName="app-web", RoleName="legacy")
    # When
    response = stack.send("role-ec2-application-create.json")
    # Then: refused, the new role rolled back, the other profile as it was
    assert response["Status"] == "FAILED"
    assert "instance profile app-web" in response["Reason"]
    assert "legacy" in response["Reason"]
    assert get_role("app-web") is None
    assert [r["RoleName"] for r in get_profile("app-web")["Roles"]] == ["legacy"]
    assert registry().objects.read(role_key("app-web")) is None


def test_rollback_keeps_instance_profile_this_request_did_not_make(aws, stack, monkeypatch):
    # Given: an empty instance profile named app-web made by someone else (left over, or by other tooling)
    from rolekeeper.aws import iam as rk_iam

    iam().create_instance_profile(InstanceProfileName="app-web")

    def denied(_name: str, _arn: str) -> None:
        raise access_denied("AttachRolePolicy")

    monkeypatch.setattr(rk_iam, "attach", denied)
    # When the Create fails after CreateRole
    response = stack.send("role-ec2-application-create.json")
    # Then the role this request made is gone, the profile it did not make is not
    assert response["Status"] == "FAILED"
    assert "AccessDenied" in response["Reason"]
    assert get_role("app-web") is None
    assert profile_names() == {"app-web"}
