"""The custom resource must not become a way to create privileged roles or grants."""

from __future__ import annotations

import boto3
import pytest

from tools.devkit.environment import OPT_IN
from tools.devkit.handlers import rebuild_handlers

ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def role_names() -> set[str]:
    return {r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]}


@pytest.mark.parametrize(
    ("event_file", "props", "reason"),
    [
        (
            "role-ec2-application-create.json",
            {"ManagedPolicyArns": [ADMIN]},
            "not in AllowedManagedPolicyArns",
        ),
        (
            "role-ec2-application-create.json",
            {"ManagedPolicyArns": ["arn:aws:iam::123456789012:policy/MyPowerUser"]},
            "not in AllowedManagedPolicyArns",
        ),
        (
            "role-ecs-instance-create.json",
            {"ManagedPolicyArns": [ADMIN]},
            "only for Blueprint ec2-application",
        ),
        (
            "role-ec2-application-create.json",
            {"AssumeRolePolicyDocument": {"Statement": [{"Principal": {"AWS": "*"}}]}},
            "AssumeRolePolicyDocument is not a known property",
        ),
        (
            "role-ec2-application-create.json",
            {"Principal": "lambda.amazonaws.com"},
            "Principal is not a known property",
        ),
        (
            "role-ec2-application-create.json",
            {"Policies": [{"PolicyName": "x"}]},
            "Policies is not a known property",
        ),
        ("role-ec2-application-create.json", {"RoleName": "Admin"}, "RoleName Admin is not allowed"),
        ("role-ecs-instance-create.json", {"RoleName": "OrganizationAccountAccessRole"}, "is not allowed"),
        (
            "role-ec2-application-create.json",
            {"Path": "/aws-service-role/x/"},
            "Path must not be a path AWS reserves",
        ),
        ("role-ec2-application-create.json", {"Blueprint": "admin"}, "Blueprint must be one of"),
        ("slr-create.json", {"AWSServiceName": "lambda.amazonaws.com"}, "AWSServiceName must be one of"),
        ("slr-create.json", {"AWSServiceName": "iam.amazonaws.com"}, "AWSServiceName must be one of"),
    ],
)
def test_escalation_attempt_is_refused_and_creates_nothing(aws, stack, event_file, props, reason):
    before = role_names()
    response = stack.send(event_file, props=props)
    assert response["Status"] == "FAILED"
    assert reason in response["Reason"]
    assert len(response["Reason"]) <= 256
    assert role_names() == before


def test_escalation_service_outside_allowed_list_is_refused(aws, stack, monkeypatch):
    from rolekeeper.config import settings

    monkeypatch.setenv("ALLOWED_SERVICE_NAMES", "spot.amazonaws.com")
    settings.cache_clear()
    rebuild_handlers()
    response = stack.send("slr-create.json")
    assert response["Status"] == "FAILED"
    assert "not allowed by this stack" in response["Reason"]
    assert "AWSServiceRoleForEC2SpotFleet" not in role_names()


def test_escalation_grant_to_another_principal_is_refused(aws, stack):
    iam = boto3.client("iam")
    iam.create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
    iam.create_role(RoleName="attacker", AssumeRolePolicyDocument="{}")
    key_arn = boto3.client("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
    for grantee in ("arn:aws:iam::123456789012:role/attacker", "arn:aws:iam::123456789012:root"):
        response = stack.send("grant-create.json", props={"KeyId": key_arn, "GranteePrincipal": grantee})
        assert response["Status"] == "FAILED"
        assert "GranteePrincipal must be" in response["Reason"]
    assert boto3.client("kms").list_grants(KeyId=key_arn)["Grants"] == []


def test_escalation_trust_policy_is_fixed_by_blueprint(aws, stack):
    response = stack.send("role-ec2-application-create.json")
    assert response["Status"] == "SUCCESS", response["Reason"]
    trust = boto3.client("iam").get_role(RoleName="app-web")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
