"""Custom::SpotFleetKmsGrant end to end."""

from __future__ import annotations

import boto3
import pytest

from rolekeeper.domain.catalog import DEFAULT_GRANT_OPERATIONS
from rolekeeper.domain.records import grant_key
from tests.integration.test_service_role import registry
from tools.devkit.environment import OPT_IN
from tools.devkit.handlers import rebuild_handlers

SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"


@pytest.fixture
def key_arn(aws) -> str:
    return boto3.client("kms").create_key(Description="AMI key", Tags=OPT_IN)["KeyMetadata"]["Arn"]


@pytest.fixture
def spot_fleet_role(aws) -> dict:
    iam = boto3.client("iam")
    iam.create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    return iam.get_role(RoleName=SPOT_FLEET)["Role"]


def grants(key_arn: str) -> list[dict]:
    return boto3.client("kms").list_grants(KeyId=key_arn)["Grants"]


def test_grant_defaults_to_the_eight_documented_operations(key_arn, spot_fleet_role, stack):
    response = stack.send("grant-create.json", props={"KeyId": key_arn})
    assert response["Status"] == "SUCCESS", response["Reason"]
    (grant,) = grants(key_arn)
    assert sorted(grant["Operations"]) == sorted(DEFAULT_GRANT_OPERATIONS)
    assert len(DEFAULT_GRANT_OPERATIONS) == 8
    assert grant["GranteePrincipal"] == spot_fleet_role["Arn"]
    assert response["PhysicalResourceId"] == f"{key_arn}#{grant['GrantId']}"
    assert response["Data"]["GrantId"] == grant["GrantId"]
    assert response["Data"]["KeyArn"] == key_arn
    assert response["Data"]["GranteePrincipal"] == spot_fleet_role["Arn"]
    assert response["Data"]["GrantToken"]
    assert spot_fleet_role["RoleId"] in grant["Name"]


def test_key_id_in_this_account_resolves_to_key_arn(key_arn, spot_fleet_role, stack):
    key_id = key_arn.rsplit("/", 1)[1]
    response = stack.send("grant-create.json", props={"KeyId": key_id})
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["KeyArn"] == key_arn


def test_retried_create_returns_the_same_grant(key_arn, spot_fleet_role, stack):
    first = stack.send("grant-create.json", props={"KeyId": key_arn})
    second = stack.send("grant-create.json", props={"KeyId": key_arn})
    assert first["PhysicalResourceId"] == second["PhysicalResourceId"]
    assert len(grants(key_arn)) == 1


def test_property_change_makes_new_grant_and_cleanup_delete_retires_old(key_arn, spot_fleet_role, stack):
    first = stack.send("grant-create.json", props={"KeyId": key_arn})
    updated = stack.send(
        "grant-update.json",
        props={"KeyId": key_arn},
        old_props={"KeyId": key_arn},
        PhysicalResourceId=first["PhysicalResourceId"],
    )
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert updated["PhysicalResourceId"] != first["PhysicalResourceId"]
    assert len(grants(key_arn)) == 2
    # CloudFormation's cleanup Delete for the old physical id
    cleanup = stack.send(
        "grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId=first["PhysicalResourceId"]
    )
    assert cleanup["Status"] == "SUCCESS"
    (left,) = grants(key_arn)
    assert left["GrantId"] == updated["Data"]["GrantId"]
    assert "GenerateDataKey" not in left["Operations"]


def test_delete_of_already_retired_grant_succeeds(key_arn, spot_fleet_role, stack):
    created = stack.send("grant-create.json", props={"KeyId": key_arn})
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=created["Data"]["GrantId"])
    response = stack.send(
        "grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert response["Status"] == "SUCCESS", response["Reason"]


def test_delete_of_unknown_grant_physical_id_touches_nothing(key_arn, spot_fleet_role, stack):
    created = stack.send("grant-create.json", props={"KeyId": key_arn})
    response = stack.send(
        "grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId="app_SpotFleetAmiKeyGrant_XY12AB34"
    )
    assert response["Status"] == "SUCCESS"
    other = stack.send(
        "grant-delete.json",
        logical_id="NotMine",
        props={"KeyId": key_arn},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert other["Status"] == "SUCCESS"
    assert len(grants(key_arn)) == 1


def test_grant_needs_the_spot_fleet_role(key_arn, stack):
    response = stack.send("grant-create.json", props={"KeyId": key_arn})
    assert response["Status"] == "FAILED"
    assert "AWSServiceRoleForEC2SpotFleet does not exist" in response["Reason"]
    assert grants(key_arn) == []


def test_grant_refuses_aws_managed_key(aws, spot_fleet_role, stack, monkeypatch):
    from rolekeeper.aws import kms

    real = kms.describe_key
    monkeypatch.setattr(kms, "describe_key", lambda k: {**real(k), "KeyManager": "AWS"})
    key = boto3.client("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
    response = stack.send("grant-create.json", props={"KeyId": key})
    assert response["Status"] == "FAILED"
    assert "customer managed key" in response["Reason"]


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"KeyId": "not-a-key"}, "KeyId must be a KMS key ARN"),
        (
            {"KeyId": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"},
            "was not found",
        ),
        ({"Operations": ["Decrypt", "Administer"]}, "Administer is not one"),
        ({"Operations": []}, "Operations"),
        (
            {"GranteePrincipal": "arn:aws:iam::123456789012:role/Admin"},
            "GranteePrincipal must be this account's",
        ),
        (
            {"GranteePrincipal": "arn:aws:iam::999999999999:role/AWSServiceRoleForEC2SpotFleet"},
            "GranteePrincipal must be",
        ),
        ({"Heal": "maybe"}, "Heal must be true or false"),
        ({"Constraints": {"EncryptionContextSubset": "x"}}, "Constraints.EncryptionContextSubset"),
    ],
)
def test_bad_grant_input_fails_and_creates_nothing(key_arn, spot_fleet_role, stack, props, expected):
    response = stack.send("grant-create.json", props={"KeyId": key_arn, **props})
    assert response["Status"] == "FAILED"
    assert expected in response["Reason"]
    assert grants(key_arn) == []


def test_grantee_without_path_is_accepted(key_arn, spot_fleet_role, stack):
    response = stack.send(
        "grant-create.json",
        props={
            "KeyId": key_arn,
            "GranteePrincipal": "arn:aws:iam::123456789012:role/AWSServiceRoleForEC2SpotFleet",
        },
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["GranteePrincipal"] == spot_fleet_role["Arn"]


def test_constraints_and_retiring_principal_are_passed(key_arn, spot_fleet_role, stack):
    response = stack.send(
        "grant-create.json",
        props={
            "KeyId": key_arn,
            "Constraints": {"EncryptionContextSubset": {"purpose": "ami"}},
            "RetiringPrincipal": "arn:aws:iam::123456789012:role/platform-admin",
        },
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    (grant,) = grants(key_arn)
    assert grant["Constraints"] == {"EncryptionContextSubset": {"purpose": "ami"}}
    assert grant["RetiringPrincipal"] == "arn:aws:iam::123456789012:role/platform-admin"


def test_an_update_that_only_changes_heal_after_a_re_issue_keeps_the_live_grant(
    key_arn, spot_fleet_role, stack
):
    from rolekeeper.handlers import healer

    first = stack.send("grant-create.json", props={"KeyId": key_arn})
    g1 = first["Data"]["GrantId"]
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=g1)  # by hand
    rebuild_handlers()
    healed = healer.healer().heal_grant(g1)
    assert healed.outcome == "healed", healed
    (g2,) = (g["GrantId"] for g in grants(key_arn))
    # Only Heal changes: KMS's Name idempotency returns the re-issued grant, which the record of
    # the physical id CloudFormation holds already names: the same physical id (no replacement,
    # so no cleanup Delete, and no two records ever hold one grant).
    updated = stack.send(
        "grant-create.json",
        props={"KeyId": key_arn, "Heal": "false"},
        RequestType="Update",
        PhysicalResourceId=first["PhysicalResourceId"],
    )
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert updated["PhysicalResourceId"] == first["PhysicalResourceId"]
    assert updated["Data"]["GrantId"] == g2
    assert [g["GrantId"] for g in grants(key_arn)] == [g2], "the live grant was revoked"
    (claim,) = registry().objects.read(grant_key(first["PhysicalResourceId"])).claims
    assert claim.heal is False


def test_a_grant_delete_whose_forget_applied_but_answer_was_lost_leaves_no_skeleton(
    key_arn, spot_fleet_role, stack, monkeypatch, context
):
    from botocore.exceptions import ClientError

    from rolekeeper.aws.registry import Objects, Registry
    from rolekeeper.handlers.healer import lambda_handler
    from tools.devkit.events import load_event

    created = stack.send("grant-create.json", props={"KeyId": key_arn})
    original = Objects.finish_delete

    def applied_then_lost(self, key, *args, **kwargs):
        original(self, key, *args, **kwargs)
        raise ClientError({"Error": {"Code": "RequestTimeout", "Message": "answer lost"}}, "DeleteItem")

    monkeypatch.setattr(Objects, "finish_delete", applied_then_lost)
    failed = stack.send(
        "grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId=created["PhysicalResourceId"]
    )
    # The answer went out before the release's last write (the request's second phase).
    assert failed["Status"] == "SUCCESS"
    monkeypatch.setattr(Objects, "finish_delete", original)
    items = boto3.client("dynamodb").scan(TableName=Registry("rolekeeper-test-registry").table.name)["Items"]
    left = [i for i in items if not i["pk"]["S"].startswith("REQUEST#")]
    assert left == [], f"left behind: {left}"
    result = lambda_handler(load_event("heal-scheduled.json"), context)
    assert "failed" not in str(result)
    retried = stack.send(
        "grant-delete.json", props={"KeyId": key_arn}, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert retried["Status"] == "SUCCESS", retried["Reason"]
