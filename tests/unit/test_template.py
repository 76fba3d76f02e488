"""template.yaml keeps the documented contract (README) and the least-privilege promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rolekeeper.aws.registry import TABLE_SCHEMA
from rolekeeper.domain.events import IAM_EVENTS, KMS_EVENTS
from tools.policies import Loader, Resolver, template_policies

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)  # noqa: S506


@pytest.fixture(scope="module")
def resolved(template) -> dict[str, Any]:
    return Resolver(template)(template)


def test_template_functions_use_design_entry_points(resolved):
    functions = {k: v for k, v in resolved["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    handlers = {name: f["Properties"]["Handler"] for name, f in functions.items()}
    assert handlers == {
        "ProvisionerFunction": "rolekeeper.handlers.custom_resource.lambda_handler",
        "HealerFunction": "rolekeeper.handlers.healer.lambda_handler",
    }
    globals_ = resolved["Globals"]["Function"]
    assert globals_["CodeUri"] == "src/"
    assert globals_["Runtime"] == "python3.13"
    assert globals_["Architectures"] == ["arm64"]
    for name in (
        "REGISTRY_TABLE_NAME",
        "ALLOWED_SERVICE_NAMES",
        "ALLOWED_MANAGED_POLICY_ARNS",
        "HEAL_MODE",
        "NOTIFICATION_TOPIC_ARN",
    ):
        assert name in globals_["Environment"]["Variables"]


def test_template_exports_service_token(template):
    output = template["Outputs"]["ServiceToken"]
    condition, named, default = output["Export"]["Name"].value
    assert (condition, named.value, default.value) == (
        "HasServiceTokenExportName",
        "ServiceTokenExportName",
        "${AWS::StackName}-ServiceToken",
    )


def test_template_registry_table_matches_code(resolved):
    table = resolved["Resources"]["RegistryTable"]["Properties"]
    for key in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode"):
        assert table[key] == TABLE_SCHEMA[key], key
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_template_rules_match_the_events_the_healer_handles(resolved):
    events = resolved["Resources"]["HealerFunction"]["Properties"]["Events"]
    iam = events["IamChanges"]["Properties"]["Pattern"]
    kms = events["KmsGrantChanges"]["Properties"]["Pattern"]
    assert set(iam["detail"]["eventName"]) == IAM_EVENTS
    assert set(kms["detail"]["eventName"]) == KMS_EVENTS
    assert iam["detail"]["errorCode"] == [{"exists": False}] == kms["detail"]["errorCode"]
    assert iam["detail"]["eventSource"] == ["iam.amazonaws.com"]
    assert events["Reconcile"]["Type"] == "Schedule"


def test_the_us_east_1_forwarder_forwards_every_event_the_healer_handles():
    forwarder = yaml.load((ROOT / "examples" / "iam-events-forwarder.yaml").read_text(), Loader=Loader)  # noqa: S506
    pattern = forwarder["Resources"]["IamEventsForwardRule"]["Properties"]["EventPattern"]
    assert set(pattern["detail"]["eventName"]) == IAM_EVENTS


def test_every_attribute_a_claim_wants_has_an_event_reporting_its_removal():
    # Issue 9: each part of a role's desired state (reconcile.ASPECTS) is checked by the
    # schedule (healing.drift) and has at least one watched event that names it.
    from rolekeeper.domain.drift import ASPECTS
    from rolekeeper.domain.events import ALL, ROLE_EVENTS

    assert ALL == ASPECTS
    partial = {name: aspects for name, aspects in ROLE_EVENTS.items() if aspects != ALL}
    assert set().union(*partial.values()) == ASPECTS
    assert {"PutRolePermissionsBoundary", "DeleteRolePermissionsBoundary", "UntagRole"} <= IAM_EVENTS


def _statements() -> dict[str, list[dict[str, Any]]]:
    return {name: doc["Statement"] for name, doc in template_policies(ROOT / "template.yaml").items()}


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else actions


def test_template_policies_name_no_wildcard_actions():
    # Wildcards only ever take away (a Deny); every Allow lists its actions.
    for name, statements in _statements().items():
        for statement in statements:
            if statement["Effect"] == "Allow":
                assert all("*" not in a for a in _actions(statement)), (name, statement)


def test_template_privileged_actions_are_conditioned():
    for statements in _statements().values():
        for statement in statements:
            actions = _actions(statement)
            if "iam:CreateServiceLinkedRole" in actions:
                assert set(statement["Condition"]["StringEquals"]["iam:AWSServiceName"]) == {
                    "spot.amazonaws.com",
                    "spotfleet.amazonaws.com",
                    "batch.amazonaws.com",
                    "ecs.amazonaws.com",
                    "autoscaling.amazonaws.com",
                }
            if "iam:AttachRolePolicy" in actions:
                allowed = statement["Condition"]["ArnEquals"]["iam:PolicyARN"]
                assert "arn:aws:iam::aws:policy/AdministratorAccess" not in allowed
            if "kms:CreateGrant" in actions:
                assert statement["Condition"]["StringEquals"]["kms:GranteePrincipal"].endswith(
                    ":role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet"
                )
            if any(a.startswith(("iam:Create", "iam:Delete", "iam:Attach", "iam:PassRole")) for a in actions):
                resources = statement["Resource"]
                resources = [resources] if isinstance(resources, str) else resources
                assert all(":role/" in r or ":instance-profile/" in r for r in resources), statement
                assert not any(r.endswith((":role/*", ":instance-profile/*")) for r in resources), statement


def test_template_healer_never_deletes():
    statements = _statements()
    healer = [
        s
        for name, group in statements.items()
        if "HealerFunction" in name or "ConvergePolicy" in name
        for s in group
        if s["Effect"] == "Allow"
    ]
    for statement in healer:
        for action in _actions(statement):
            assert not action.startswith(("iam:Delete", "iam:Detach", "iam:Untag")), action


def test_template_registry_access_is_own_table_only():
    for statements in _statements().values():
        for statement in statements:
            if any(a.startswith("dynamodb:") for a in _actions(statement)):
                resources = statement["Resource"]
                resources = [resources] if isinstance(resources, str) else resources
                assert all(":table/rolekeeper-RegistryTable" in r for r in resources)
