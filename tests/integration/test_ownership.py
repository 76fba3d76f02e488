"""Ownership: rolekeeper is a privileged deputy, and nothing a stack author sends may widen, weaken
or remove what someone else owns. Each test here is a case reproduced against the release before
these rules (it passed the attack then); see the README's Security section."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from rolekeeper.domain.records import role_key
from tests.integration.test_service_role import (
    ADMINISTRATOR,
    CLOUDWATCH_AGENT,
    ECS_INSTANCE_POLICY,
    SSM_CORE,
    all_tags,
    attached,
    boundary,
    get_profile,
    get_role,
    iam,
    profile_names,
    profiles_holding,
    registry,
    role_names,
    service_trust,
    statements,
    trust_document,
)
from tools.devkit.environment import ACCOUNT
from tools.devkit.events import load_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext

APP_BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/app-boundary"
# Another boundary the deployer allows (tools/devkit/environment.py): a stack may name it, and
# still must not replace what someone else set.
POWER_USER = "arn:aws:iam::aws:policy/PowerUserAccess"
OWNER_TRUST = {
    "Effect": "Allow",
    "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole",
    "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
}


def owner_boundary(action: str) -> None:
    """The owner's permissions boundary policy (APP_BOUNDARY), allowing one service's actions."""
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}],
    }
    iam().create_policy(PolicyName="app-boundary", PolicyDocument=json.dumps(document))


def hand_made(name: str, *, trust: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A role someone made outside rolekeeper."""
    iam().create_role(
        RoleName=name,
        AssumeRolePolicyDocument=trust_document(trust or service_trust("ec2.amazonaws.com")),
        **extra,
    )
    return get_role(name)


def snapshot(name: str) -> dict[str, Any]:
    role = get_role(name)
    assert role is not None
    return {
        "id": role["RoleId"],
        "trust": statements(name),
        "boundary": boundary(name),
        "tags": all_tags(name),
        "policies": attached(name),
        "profiles": profiles_holding(name),
    }


def claims(name: str) -> list[Any]:
    record = registry().objects.read(role_key(name))
    return record.claims if record else []


@pytest.fixture
def payments(aws) -> dict[str, Any]:
    """Case 1's role: app-payments, hand-made, with its owner's boundary, tag, trust condition and policy."""
    owner_boundary("s3:*")
    hand_made(
        "app-payments",
        trust=OWNER_TRUST,
        PermissionsBoundary=APP_BOUNDARY,
        Tags=[{"Key": "team", "Value": "payments"}],
    )
    iam().attach_role_policy(RoleName="app-payments", PolicyArn=ADMINISTRATOR)
    return snapshot("app-payments")


# --- 1. escalation through adoption --------------------------------------------------------------


def test_ec2_application_on_a_role_rolekeeper_did_not_create_is_refused_and_changes_nothing(payments, stack):
    response = stack.send(
        "role-ec2-application-create.json",
        props={
            "RoleName": "app-payments",
            "PermissionsBoundary": POWER_USER,
            "Tags": [{"Key": "team", "Value": "attacker"}],
        },
    )
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith(
        "RoleName: role app-payments exists and was not created by rolekeeper"
    )
    assert snapshot("app-payments") == payments
    assert profile_names() == set()
    assert claims("app-payments") == []


def test_ec2_application_on_a_hand_made_role_is_refused_even_without_changes(payments, stack):
    response = stack.send(
        "role-ec2-application-create.json", props={"RoleName": "app-payments"}, drop=("ManagedPolicyArns",)
    )
    assert response["Status"] == "FAILED"
    assert "was not created by rolekeeper" in response["Reason"]
    assert snapshot("app-payments") == payments


@pytest.fixture
def owned_ecs(aws) -> dict[str, Any]:
    """ecsInstanceRole made by its owner: a trust condition, a boundary and a tag of theirs."""
    owner_boundary("ecs:*")
    hand_made(
        "ecsInstanceRole",
        trust=OWNER_TRUST,
        PermissionsBoundary=APP_BOUNDARY,
        Tags=[{"Key": "team", "Value": "ops"}],
    )
    return snapshot("ecsInstanceRole")


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        (
            {"PermissionsBoundary": POWER_USER},
            "PermissionsBoundary: role ecsInstanceRole was not created by rolekeeper",
        ),
        (
            {"Tags": [{"Key": "team", "Value": "attacker"}]},
            "Tags: role ecsInstanceRole was not created by rolekeeper",
        ),
        (
            {"Tags": [{"Key": "owner", "Value": "attacker"}]},
            "Tags: role ecsInstanceRole was not created by rolekeeper",
        ),
    ],
)
def test_adopting_a_documented_role_never_replaces_its_owners_boundary_or_tags(
    owned_ecs, stack, props, reason
):
    response = stack.send("role-ecs-instance-create.json", props=props)
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith(reason)
    assert snapshot("ecsInstanceRole") == owned_ecs
    assert claims("ecsInstanceRole") == []


def test_adoption_only_adds_the_blueprint_and_a_later_update_removes_nothing_of_the_owners(owned_ecs, stack):
    same = {"PermissionsBoundary": APP_BOUNDARY, "Tags": [{"Key": "team", "Value": "ops"}]}
    adopted = stack.send("role-ecs-instance-create.json", props=same)
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]
    assert adopted["Data"]["Created"] == "false"
    after = snapshot("ecsInstanceRole")
    assert after["trust"] == owned_ecs["trust"], "the owner's trust condition must stay"
    assert (after["boundary"], after["tags"]) == (APP_BOUNDARY, {"team": "ops"})
    assert after["policies"] == {ECS_INSTANCE_POLICY}
    assert after["profiles"] == ["ecsInstanceRole"]
    # An Update that drops the boundary and the tags: they are the owner's, not rolekeeper's.
    updated = stack.send(
        "role-ecs-instance-create.json",
        old_props=same,
        RequestType="Update",
        PhysicalResourceId=adopted["PhysicalResourceId"],
    )
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert (boundary("ecsInstanceRole"), all_tags("ecsInstanceRole")) == (APP_BOUNDARY, {"team": "ops"})
    assert statements("ecsInstanceRole") == owned_ecs["trust"]


def test_the_healer_never_strips_an_adopted_roles_trust_condition(owned_ecs, stack, context):
    from rolekeeper.handlers.healer import lambda_handler

    adopted = stack.send("role-ecs-instance-create.json", props={"PermissionsBoundary": APP_BOUNDARY})
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]
    scheduled = load_event("heal-scheduled.json")
    lambda_handler(scheduled, context)
    assert statements("ecsInstanceRole") == owned_ecs["trust"]


def test_spot_fleet_protection_asked_of_an_adopted_role_without_it_is_refused(aws, stack):
    hand_made("aws-ec2-spot-fleet-tagging-role", trust=service_trust("spotfleet.amazonaws.com"))
    before = snapshot("aws-ec2-spot-fleet-tagging-role")
    response = stack.send("role-spot-fleet-tagging-create.json", props={"ConfusedDeputyProtection": "true"})
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith("ConfusedDeputyProtection: role aws-ec2-spot-fleet-tagging-role")
    assert snapshot("aws-ec2-spot-fleet-tagging-role") == before
    # Left to its default the console's role is adopted as it is.
    adopted = stack.send("role-spot-fleet-tagging-create.json")
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]
    assert statements("aws-ec2-spot-fleet-tagging-role") == before["trust"]


# --- 2. forged requests --------------------------------------------------------------------------


@pytest.fixture
def held(aws, stack) -> dict[str, Any]:
    """ecsInstanceRole created by stack `app` with OnDelete: Retain."""
    created = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Retain"})
    assert created["Status"] == "SUCCESS", created["Reason"]
    return created


def test_forged_delete_of_another_stacks_resource_is_refused(held, stack, other_stack):
    forged = other_stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=held["PhysicalResourceId"],
        StackId=stack.stack_id,
        confirmed=False,
    )
    assert forged["Status"] == "FAILED"
    assert "not confirmed" in forged["Reason"]
    assert get_role("ecsInstanceRole") is not None
    assert len(claims("ecsInstanceRole")) == 1


def test_a_confirmed_delete_acts_on_the_stored_claim_not_the_requests_on_delete(held, stack):
    response = stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=held["PhysicalResourceId"],
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert get_role("ecsInstanceRole") is not None, "the claim said Retain"
    assert claims("ecsInstanceRole") == []


def test_forged_delete_during_the_stacks_update_cleanup_of_its_current_id_is_refused(held, stack, cfn):
    cfn.stacks[stack.stack_id] = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
    forged = stack.send(
        "role-ecs-instance-delete.json", PhysicalResourceId=held["PhysicalResourceId"], confirmed=False
    )
    assert forged["Status"] == "FAILED"
    assert len(claims("ecsInstanceRole")) == 1


@pytest.mark.parametrize(
    "stack_id",
    [
        "arn:aws:cloudformation:us-east-1:999999999999:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f",
        f"arn:aws:cloudformation:eu-west-1:{ACCOUNT}:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f",
        f"arn:aws-cn:cloudformation:us-east-1:{ACCOUNT}:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f",
        "not-an-arn",
    ],
)
def test_a_stack_id_of_another_account_region_or_partition_is_refused(aws, stack, stack_id):
    response = stack.send("role-spot-fleet-tagging-create.json", StackId=stack_id)
    assert response["Status"] == "FAILED"
    assert role_names() == set()
    assert list(registry().objects.all()) == []


def test_a_direct_invoke_cloudformation_never_made_is_refused_and_creates_nothing(aws, stack, cfn):
    response = stack.send("role-ecs-instance-create.json", confirmed=False)
    assert response["Status"] == "FAILED"
    assert "not confirmed" in response["Reason"]
    assert "DescribeStackResource" in cfn.calls
    assert role_names() == set()


def test_an_update_replayed_after_cloudformation_finished_is_refused(held, stack):
    replay = stack.send(
        "role-ecs-instance-create.json",
        props={"InstanceProfile": "false"},
        old_props={"Blueprint": "ecs-instance"},  # CloudFormation sends the previous properties
        RequestType="Update",
        PhysicalResourceId=held["PhysicalResourceId"],
        confirmed=False,
    )
    assert replay["Status"] == "FAILED"
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]


def test_an_update_rollback_is_confirmed(held, stack, cfn):
    cfn.set(
        stack.stack_id,
        "EcsInstanceRole",
        "UPDATE_IN_PROGRESS",
        held["PhysicalResourceId"],
        stack_status="UPDATE_ROLLBACK_IN_PROGRESS",
    )
    rollback = stack.send(
        "role-ecs-instance-create.json",
        RequestType="Update",
        PhysicalResourceId=held["PhysicalResourceId"],
        confirmed=False,  # the state is set above, as CloudFormation has it in a rollback
        signed=True,
    )
    assert rollback["Status"] == "SUCCESS", rollback["Reason"]


def test_verify_requests_false_is_the_operators_escape_hatch(aws, stack, monkeypatch):
    from rolekeeper.config import settings

    monkeypatch.setenv("VERIFY_REQUESTS", "false")
    settings.cache_clear()
    rebuild_handlers()
    response = stack.send("role-ecs-instance-create.json", confirmed=False, signed=True)
    assert response["Status"] == "SUCCESS", response["Reason"]
    settings.cache_clear()


# --- 3. a second claimant cannot damage the first ------------------------------------------------


def test_second_stack_turning_instance_profile_off_keeps_the_first_stacks_profile(aws, stack, other_stack):
    stack.send("role-ecs-instance-create.json")
    theirs = other_stack.send("role-ecs-instance-create.json")
    assert theirs["Status"] == "SUCCESS", theirs["Reason"]
    off = other_stack.send(
        "role-ecs-instance-create.json",
        props={"InstanceProfile": "false"},
        old_props={"Blueprint": "ecs-instance"},  # CloudFormation sends the previous properties
        RequestType="Update",
        PhysicalResourceId=theirs["PhysicalResourceId"],
    )
    assert off["Status"] == "SUCCESS", off["Reason"]
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]


def test_second_stack_dropping_a_policy_keeps_it_for_the_first_and_the_healer_keeps_it_too(
    aws, stack, other_stack, context
):
    from rolekeeper.handlers.healer import lambda_handler

    first = stack.send("role-ec2-application-create.json", props={"RoleName": "app-web"})
    assert first["Status"] == "SUCCESS", first["Reason"]
    both = {"RoleName": "app-web", "ManagedPolicyArns": [SSM_CORE, CLOUDWATCH_AGENT]}
    second = other_stack.send("role-ec2-application-create.json", props=both)
    assert second["Status"] == "SUCCESS", second["Reason"]
    assert attached("app-web") == {SSM_CORE, CLOUDWATCH_AGENT}
    dropped = other_stack.send(
        "role-ec2-application-create.json",
        props={"RoleName": "app-web", "ManagedPolicyArns": []},
        old_props=both,
        RequestType="Update",
        PhysicalResourceId=second["PhysicalResourceId"],
    )
    assert dropped["Status"] == "SUCCESS", dropped["Reason"]
    # SSM is still the first stack's want; CloudWatch was only the second's, and rolekeeper added it.
    assert attached("app-web") == {SSM_CORE}
    iam().detach_role_policy(RoleName="app-web", PolicyArn=SSM_CORE)
    lambda_handler(load_event("heal-scheduled.json"), context)
    assert attached("app-web") == {SSM_CORE}, "the healer must restore the union of the claims' wants"


def test_releasing_a_claim_takes_away_only_what_that_claim_alone_wanted(aws, stack, other_stack):
    first = stack.send("role-ec2-application-create.json", props={"RoleName": "app-web"})
    second = other_stack.send(
        "role-ec2-application-create.json",
        props={"RoleName": "app-web", "ManagedPolicyArns": [SSM_CORE, CLOUDWATCH_AGENT]},
    )
    assert (first["Status"], second["Status"]) == ("SUCCESS", "SUCCESS")
    gone = other_stack.send(
        "role-ec2-application-delete.json",
        props={"RoleName": "app-web"},
        PhysicalResourceId=second["PhysicalResourceId"],
    )
    assert gone["Status"] == "SUCCESS", gone["Reason"]
    assert attached("app-web") == {SSM_CORE}
    assert profiles_holding("app-web") == ["app-web"]


def test_a_hand_made_roles_own_instance_profile_is_never_removed(aws, stack):
    hand_made("ecsInstanceRole")
    iam().create_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam().add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    adopted = stack.send("role-ecs-instance-create.json")
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]
    off = stack.send(
        "role-ecs-instance-create.json",
        props={"InstanceProfile": "false"},
        old_props={"Blueprint": "ecs-instance"},  # CloudFormation sends the previous properties
        RequestType="Update",
        PhysicalResourceId=adopted["PhysicalResourceId"],
    )
    assert off["Status"] == "SUCCESS", off["Reason"]
    assert get_profile("ecsInstanceRole") is not None
    assert profiles_holding("ecsInstanceRole") == ["ecsInstanceRole"]


def test_conflicting_wants_from_a_second_stack_are_refused(aws, stack, other_stack):
    stack.send(
        "role-ec2-application-create.json",
        props={"RoleName": "app-web", "Tags": [{"Key": "team", "Value": "web"}]},
    )
    clash = other_stack.send(
        "role-ec2-application-create.json",
        props={"RoleName": "app-web", "Tags": [{"Key": "team", "Value": "evil"}]},
    )
    assert clash["Status"] == "FAILED"
    assert clash["Reason"].startswith("Tags: another stack holds role app-web with team=web")
    boundary_clash = other_stack.send(
        "role-ec2-application-create.json",
        props={"RoleName": "app-web", "PermissionsBoundary": POWER_USER},
    )
    assert boundary_clash["Status"] == "FAILED"
    assert boundary_clash["Reason"].startswith("PermissionsBoundary: another stack holds role app-web")
    assert all_tags("app-web") == {"team": "web", "rolekeeper:managed": "true"}
    assert boundary("app-web") is None
    assert len(claims("app-web")) == 1


# --- 4. documented names are bound to their blueprint ---------------------------------------------


@pytest.mark.parametrize(
    ("event_file", "props", "reason"),
    [
        (
            "role-ec2-application-create.json",
            {"RoleName": "ecsInstanceRole"},
            "documented name for Blueprint ecs-instance",
        ),
        (
            "role-batch-service-create.json",
            {"RoleName": "aws-ec2-spot-fleet-tagging-role"},
            "documented name for Blueprint spot-fleet-tagging",
        ),
        (
            "role-ecs-instance-create.json",
            {"RoleName": "AWSBatchServiceRole"},
            "documented name for Blueprint batch-service",
        ),
    ],
)
def test_documented_names_work_only_with_their_own_blueprint(aws, stack, event_file, props, reason):
    response = stack.send(event_file, props=props)
    assert response["Status"] == "FAILED"
    assert reason in response["Reason"]
    assert role_names() == set()


def test_the_batch_guides_spot_fleet_role_name_is_accepted(aws, stack):
    response = stack.send(
        "role-spot-fleet-tagging-create.json", props={"RoleName": "AmazonEC2SpotFleetTaggingRole"}
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert get_role("AmazonEC2SpotFleetTaggingRole") is not None


# --- tags and keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("costcentre", "Tags: key costcentre is not in AllowedTagKeys"),
        ("rolekeeper:managed", "reserved for rolekeeper"),
    ],
)
def test_tag_keys_come_from_allowed_tag_keys_only(aws, stack, key, reason):
    response = stack.send("role-ec2-application-create.json", props={"Tags": [{"Key": key, "Value": "x"}]})
    assert response["Status"] == "FAILED"
    assert reason in response["Reason"]
    assert role_names() == set()


def test_a_grant_on_a_key_that_has_not_opted_in_is_refused(aws, stack):
    boto3.client("iam").create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    key_arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    response = stack.send("grant-create.json", props={"KeyId": key_arn})
    assert response["Status"] == "FAILED"
    assert "has not opted in: tag the key rolekeeper:spot-fleet-grants=allow" in response["Reason"]
    assert boto3.client("kms").list_grants(KeyId=key_arn)["Grants"] == []


# --- 6. bounds -------------------------------------------------------------------------------------


def test_a_long_path_of_backslashes_gives_a_response_within_4096_bytes(aws, stack):
    path = "/" + "\\" * 508 + "/"
    response = stack.send("role-ecs-instance-create.json", props={"Path": path})
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert len(json.dumps(response).encode()) <= 4096
    assert response["Data"]["RoleName"] == "ecsInstanceRole"


def test_a_response_url_with_a_control_character_raises_nothing_and_logs_no_signature(aws, stack, capsys):
    from rolekeeper.handlers.custom_resource import lambda_handler

    event = load_event("role-ecs-instance-create.json", StackId=stack.stack_id)
    event["ResponseURL"] = "https://bucket.s3.amazonaws.com/x\n?X-Amz-Signature=topsecretsignature"
    lambda_handler(event, LambdaContext())  # must not raise
    out = capsys.readouterr()
    assert "topsecretsignature" not in out.out + out.err
    assert role_names() == set()


def test_crhelper_polling_keys_are_ignored(held, stack):
    delete = stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=held["PhysicalResourceId"],
        CrHelperPoll=True,
    )
    assert delete["Status"] == "SUCCESS", delete["Reason"]
    assert claims("ecsInstanceRole") == [], "rolekeeper must have run (released the claim)"
    created = stack.send("role-ec2-application-create.json", CrHelperData={"Injected": "forged"})
    assert created["Status"] == "SUCCESS", created["Reason"]
    assert "Injected" not in created["Data"]


def test_registry_records_each_claims_wants(aws, stack):
    stack.send("role-ec2-application-create.json", props={"RoleName": "app-web"})
    (claim,) = registry().objects.read(role_key("app-web")).claims
    assert claim.wants is not None and claim.wants["policy_arns"] == [SSM_CORE]


# --- review findings: each reproduced against the first version of these rules ------------------


@pytest.mark.parametrize(
    "spelling",
    [
        f"arn:aws:iam::{ACCOUNT}:role/x/ecsInstanceRole",
        f"arn:aws-cn:iam::{ACCOUNT}:role/ecsInstanceRole",
        f"arn:aws:iam::{ACCOUNT}:role/ECSINSTANCEROLE",
    ],
)
def test_a_forged_delete_during_cleanup_cannot_name_the_current_role_spelled_differently(
    aws, stack, cfn, spelling
):
    held = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    assert held["Status"] == "SUCCESS", held["Reason"]
    cfn.stacks[stack.stack_id] = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"  # some other resource replaced
    forged = stack.send("role-ecs-instance-delete.json", PhysicalResourceId=spelling, confirmed=False)
    assert forged["Status"] in ("FAILED", "SUCCESS")
    assert get_role("ecsInstanceRole") is not None
    assert len(claims("ecsInstanceRole")) == 1, "the stack's claim must survive"


def test_a_create_is_confirmed_only_for_a_resource_of_the_requests_type(aws, stack, cfn):
    # Someone's slow resource (an RDS instance, say) is CREATE_IN_PROGRESS under that logical id.
    cfn.set(stack.stack_id, "EcsInstanceRole", "CREATE_IN_PROGRESS", resource_type="AWS::RDS::DBInstance")
    forged = stack.send("role-ecs-instance-create.json", confirmed=False)
    assert forged["Status"] == "FAILED"
    assert role_names() == set()


def test_an_emptied_added_set_is_not_read_as_everything_being_rolekeepers(aws, stack, other_stack):
    bare = {"RoleName": "app-web", "ManagedPolicyArns": [], "InstanceProfile": "false"}
    first = stack.send("role-ec2-application-create.json", props=bare)
    assert first["Status"] == "SUCCESS", first["Reason"]
    iam().attach_role_policy(RoleName="app-web", PolicyArn=CLOUDWATCH_AGENT)  # by hand
    joined = other_stack.send(
        "role-ec2-application-create.json", props={**bare, "ManagedPolicyArns": [CLOUDWATCH_AGENT]}
    )
    assert joined["Status"] == "SUCCESS", joined["Reason"]
    gone = other_stack.send(
        "role-ec2-application-delete.json", props=bare, PhysicalResourceId=joined["PhysicalResourceId"]
    )
    assert gone["Status"] == "SUCCESS", gone["Reason"]
    assert attached("app-web") == {CLOUDWATCH_AGENT}, "rolekeeper did not attach it, so it stays"


def test_a_role_recreated_by_someone_else_is_not_rolekeepers_to_rewrite_or_delete(
    aws, stack, owned_ecs_later
):
    created, owner = owned_ecs_later
    before = snapshot("ecsInstanceRole")
    update = stack.send(
        "role-ecs-instance-create.json",
        props={"OnDelete": "Delete"},
        old_props={"OnDelete": "Delete"},
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert update["Status"] == "SUCCESS", update["Reason"]
    assert snapshot("ecsInstanceRole")["trust"] == before["trust"]
    assert boundary("ecsInstanceRole") == APP_BOUNDARY
    deleted = stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert deleted["Status"] == "SUCCESS", deleted["Reason"]
    assert get_role("ecsInstanceRole") is not None, "the new owner's role must not be deleted"
    assert get_role("ecsInstanceRole")["RoleId"] == owner


@pytest.fixture
def owned_ecs_later(aws, stack, monkeypatch) -> tuple[dict[str, Any], str]:
    """ecsInstanceRole created by rolekeeper (Heal false), then deleted and made again by hand
    with a trust condition and a boundary of its new owner."""
    created = stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete", "Heal": "false"})
    assert created["Status"] == "SUCCESS", created["Reason"]
    client = iam()
    client.remove_role_from_instance_profile(
        InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole"
    )
    client.detach_role_policy(RoleName="ecsInstanceRole", PolicyArn=ECS_INSTANCE_POLICY)
    client.delete_role(RoleName="ecsInstanceRole")
    owner_boundary("ecs:*")
    role = hand_made("ecsInstanceRole", trust=OWNER_TRUST, PermissionsBoundary=APP_BOUNDARY)
    return created, role["RoleId"]


def test_releasing_a_claim_never_fails_on_what_the_owner_did_to_an_adopted_role(aws, stack, other_stack):
    hand_made("ecsInstanceRole")
    first = stack.send("role-ecs-instance-create.json")
    second = other_stack.send("role-ecs-instance-create.json")
    assert (first["Status"], second["Status"]) == ("SUCCESS", "SUCCESS")
    # The owner now trusts only ECS tasks (their role, their call).
    iam().update_assume_role_policy(
        RoleName="ecsInstanceRole", PolicyDocument=trust_document(service_trust("ecs-tasks.amazonaws.com"))
    )
    gone = other_stack.send("role-ecs-instance-delete.json", PhysicalResourceId=second["PhysicalResourceId"])
    assert gone["Status"] == "SUCCESS", gone["Reason"]
    assert statements("ecsInstanceRole") == [service_trust("ecs-tasks.amazonaws.com")]
    assert len(claims("ecsInstanceRole")) == 1
