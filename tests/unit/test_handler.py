"""The provisioner's Lambda handler with input that is refused before any AWS call."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def load(name: str, resource_type: str | None = None, **props: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / name).read_text())
    if resource_type:
        event["ResourceType"] = resource_type
    event["ResourceProperties"].update(props)
    return event


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to a client is closed and recorded: these requests must fail before AWS."""
    from rolekeeper.aws import clients as aws

    made: list[str] = []

    def refuse(*args: Any, **_kwargs: Any) -> Any:
        made.append(repr(args[:2]))
        raise AssertionError("an AWS client was requested")

    monkeypatch.setattr(aws, "client", refuse)
    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(botocore.session.Session, "create_client", refuse)
    monkeypatch.delenv("AWS_SAM_LOCAL", raising=False)
    return made


def assert_url_not_logged(text: str, event: dict[str, Any]) -> None:
    query = urlsplit(event["ResponseURL"]).query
    assert query
    assert query not in text
    assert "X-Amz-Signature" not in text
    assert "X-Amz-Credential" not in text


def bad(event: dict[str, Any], named: str, case_id: str) -> Any:
    return pytest.param((event, named), id=case_id)


BAD_INPUT = [
    bad(load("slr-create.json", "Custom::Nope"), "Custom::Nope", "unknown-type"),
    bad(load("slr-update.json", "Custom::Nope"), "Custom::Nope", "unknown-type-update"),
    bad(load("slr-create.json", AWSServiceName="evil.amazonaws.com"), "AWSServiceName", "evil-service"),
    bad(load("slr-create.json", Heal="yes"), "Heal", "heal-yes"),
    bad(load("slr-spot-create.json", CustomSuffix="x"), "CustomSuffix", "suffix-not-accepted"),
    bad(load("role-ec2-application-create.json", ManagedPolicyArns=[ADMIN]), "AdministratorAccess", "admin"),
    bad(
        load("role-ec2-application-update.json", ManagedPolicyArns=[ADMIN]),
        "AdministratorAccess",
        "admin-update",
    ),
    bad(load("role-ecs-instance-create.json", Blueprint="AdministratorAccess"), "Blueprint", "blueprint"),
    bad(
        load("role-batch-service-create.json", ManagedPolicyArns=[ADMIN]),
        "ManagedPolicyArns",
        "batch-policies",
    ),
    bad(load("role-ec2-application-create.json", RoleName=None), "RoleName", "no-role-name"),
    bad(load("grant-create.json", KeyId="alias/aws/ebs"), "KeyId", "key-alias"),
    bad(load("grant-create.json", Operations=["Decrypt", "Everything"]), "Operations", "operation"),
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_answered_failed_before_any_aws_call(no_aws, sent, context, logs, case):
    from rolekeeper.handlers.custom_resource import lambda_handler

    event, named = case

    if event["ResourceProperties"].get("RoleName", "") is None:
        del event["ResourceProperties"]["RoleName"]
    response = lambda_handler(event, context)
    assert len(sent.responses) == 1
    assert response == sent.last
    assert response["Status"] == "FAILED"
    assert named in response["Reason"], response["Reason"]
    assert len(response["Reason"]) <= 256
    assert response["Data"] == {}
    assert response["RequestId"] == event["RequestId"]
    assert no_aws == []
    assert_url_not_logged(logs(), event)


def test_a_long_reason_is_cut_to_256_keeping_the_start(no_aws, sent, context):
    from rolekeeper.handlers.custom_resource import lambda_handler

    wrong = {"Blueprint": "nope", "Heal": "maybe", "OnDelete": "Keep", "Path": "x", "Tags": "team"}
    event = load("role-ecs-instance-create.json", **wrong)
    response = lambda_handler(event, context)
    assert response["Status"] == "FAILED"
    assert len(response["Reason"]) == 256
    assert response["Reason"].startswith("Blueprint must be one of spot-fleet-tagging, ecs-instance")
    assert no_aws == []


def test_unknown_properties_are_logged_once_each_with_the_known_list_once(no_aws, sent, context, caplog):
    """2,000 unknown properties once made a 354 KB log line: the known list repeated per key."""
    from rolekeeper.handlers.custom_resource import lambda_handler
    from rolekeeper.observability import logger

    caplog.set_level(logging.INFO, logger="rolekeeper")
    event = load("role-ecs-instance-create.json", **{f"Unknown{i:04d}": "x" for i in range(2000)})
    response = lambda_handler(event, context)
    assert response["Reason"] == (
        "Unknown0000, Unknown0001, Unknown0002, Unknown0003, Unknown0004 and 1,995 more are not known "
        "properties (known: Blueprint, RoleName, Path, ManagedPolicyArns, InstanceProfile, "
        "ConfusedDeputyProtection, PermissionsBoundary, Tags, OnDelete, Heal)"
    )
    # Each record as Powertools writes it to CloudWatch Logs: one JSON line.
    lines = [logger.registered_formatter.format(r) for r in caplog.records if r.name.startswith("rolekeeper")]
    refused = [line for line in lines if '"request refused"' in line]
    assert len(refused) == 1
    assert refused[0].count("known:") == 1
    assert max(len(line) for line in lines) < 2000
    assert no_aws == []


def test_a_failed_create_keeps_a_physical_id_rolekeeper_never_deletes(no_aws, sent, context):
    from rolekeeper.domain.records import GRANT_PHYSICAL_ID, ROLE_ARN
    from rolekeeper.handlers.custom_resource import lambda_handler

    response = lambda_handler(load("slr-create.json", "Custom::Nope"), context)
    physical_id = response["PhysicalResourceId"]
    assert physical_id
    assert not ROLE_ARN.match(physical_id)
    assert not GRANT_PHYSICAL_ID.match(physical_id)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.parametrize("event", ["not an event", None, [], {"RequestType": "Create"}])
def test_a_malformed_event_returns_failed_and_sends_nothing(no_aws, sent, context, event):
    from rolekeeper.handlers.custom_resource import lambda_handler

    response = lambda_handler(event, context)
    assert response is not None
    assert response["Status"] == "FAILED"
    assert response["Reason"].startswith("Malformed request")
    assert sent.responses == []


@pytest.mark.parametrize(
    "name", sorted(p.name for p in EVENTS.glob("*.json") if not p.name.startswith("heal-"))
)
def test_the_response_url_is_not_logged_for_any_event(no_aws, sent, context, logs, name):
    # The real event with an unknown type, so it is refused before AWS whatever its request type.
    from rolekeeper.handlers.custom_resource import lambda_handler

    event = load(name, "Custom::Nope")
    lambda_handler(event, context)
    assert len(sent.responses) == 1
    assert_url_not_logged(logs(), event)


def test_the_response_url_is_not_logged_at_debug_level(no_aws, sent, context, logs, caplog):
    # Lambda's ApplicationLogLevel=DEBUG sets the root logger to DEBUG; crhelper logs whole events
    # (ResponseURL included) at DEBUG on its own stdlib logger.
    from rolekeeper.handlers.custom_resource import lambda_handler

    caplog.set_level(logging.DEBUG)
    event = load("slr-create.json", "Custom::Nope")
    lambda_handler(event, context)
    assert_url_not_logged(logs(), event)


def test_importing_the_handler_creates_no_aws_client():
    code = textwrap.dedent(
        """
        import botocore.session

        calls = []
        original = botocore.session.Session.create_client

        def counting(self, *args, **kwargs):
            calls.append(args[:1] or kwargs.get("service_name"))
            return original(self, *args, **kwargs)

        botocore.session.Session.create_client = counting
        import rolekeeper.handlers.custom_resource  # noqa: F401

        print(len(calls))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_SAM_LOCAL"}
    env.update({"PYTHONPATH": "src", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0", result.stdout
