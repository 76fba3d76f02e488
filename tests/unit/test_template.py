"""template.yaml keeps the documented contract (README) and the least-privilege promises."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
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


def _tagged(node: Any) -> tuple[str, Any]:
    return node.tag, node.value


def test_heal_latency_output_is_computed_from_the_region_the_schedule_and_the_mode(template):
    # Deployed and read back under moto in tests/unit/test_release_package.py; here its inputs.
    conditions = {name: _tagged(value) for name, value in template["Conditions"].items()}
    tag, (region, literal) = conditions["ReceivesIamEvents"]
    assert (tag, _tagged(region), literal) == ("Equals", ("Ref", "AWS::Region"), "us-east-1")
    tag, (mode, literal) = conditions["ReportsOnly"]
    assert (tag, _tagged(mode), literal) == ("Equals", ("Ref", "HealMode"), "report")
    tag, (condition, report, regional) = _tagged(template["Outputs"]["HealLatency"]["Value"])
    assert (tag, condition) == ("If", "ReportsOnly")
    assert report.startswith("never")
    tag, (condition, here, elsewhere) = _tagged(regional)
    assert (tag, condition, here) == ("If", "ReceivesIamEvents", "seconds (IAM events)")
    assert _tagged(elsewhere) == (
        "Sub",
        "up to ${ReconcileSchedule} (scheduled reconcile); deploy the forwarder for seconds",
    )
    # Every name an output already had is kept.
    assert {"ServiceToken", "RegistryTableName", "HealLatency"} <= set(template["Outputs"])


def _make_forwarder(*variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REGION", "BUS"}
    }
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "forwarder", *variables],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _forwarder_command(*variables: str) -> list[str]:
    result = _make_forwarder(*variables)
    assert result.returncode == 0, result.stderr
    (command,) = [
        shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()
    ]
    return command


def test_make_forwarder_deploys_the_example_in_us_east_1_for_the_given_region():
    forwarder = yaml.load((ROOT / "examples" / "iam-events-forwarder.yaml").read_text(), Loader=Loader)  # noqa: S506
    command = _forwarder_command("REGION=eu-west-1")
    assert command[:3] == ["aws", "cloudformation", "deploy"]
    options = dict(zip(command[3::2], command[4::2], strict=False))
    assert options["--region"] == "us-east-1"
    assert options["--template-file"] == "examples/iam-events-forwarder.yaml"
    assert options["--capabilities"] == "CAPABILITY_IAM"  # the forwarder makes an IAM role
    overrides = dict(o.split("=", 1) for o in command[command.index("--parameter-overrides") + 1 :])
    assert overrides == {"TargetRegion": "eu-west-1"}
    required = {name for name, p in forwarder["Parameters"].items() if "Default" not in p}
    assert required <= set(overrides) <= set(forwarder["Parameters"])
    assert re.fullmatch(forwarder["Parameters"]["TargetRegion"]["AllowedPattern"], overrides["TargetRegion"])

    bus = "arn:aws:events:eu-west-1:123456789012:event-bus/rolekeeper"
    command = _forwarder_command("REGION=eu-west-1", f"BUS={bus}")
    overrides = dict(o.split("=", 1) for o in command[command.index("--parameter-overrides") + 1 :])
    assert overrides == {"TargetRegion": "eu-west-1", "TargetEventBusArn": bus}
    assert re.fullmatch(forwarder["Parameters"]["TargetEventBusArn"]["AllowedPattern"], bus)


@pytest.mark.parametrize(
    ("variables", "says"), [((), "REGION is the region"), (("REGION=us-east-1",), "no forwarder")]
)
def test_make_forwarder_refuses_without_a_region_or_for_us_east_1(variables, says):
    result = _make_forwarder(*variables)
    assert result.returncode != 0 and says in result.stderr, result.stderr
    assert "aws cloudformation" not in result.stdout


def test_forwarder_template_refuses_other_regions_before_creating_anything():
    forwarder = yaml.load((ROOT / "examples" / "iam-events-forwarder.yaml").read_text(), Loader=Loader)  # noqa: S506
    asserts = {name: _tagged(rule["Assertions"][0]["Assert"]) for name, rule in forwarder["Rules"].items()}
    tag, (region, literal) = asserts["DeployedInUsEast1"]
    assert (tag, _tagged(region), literal) == ("Equals", ("Ref", "AWS::Region"), "us-east-1")
    tag, (inner,) = asserts["ForwardsToAnotherRegion"]
    tag_inner, (target, literal) = _tagged(inner)
    assert (tag, tag_inner, _tagged(target), literal) == (
        "Not",
        "Equals",
        ("Ref", "TargetRegion"),
        "us-east-1",
    )
