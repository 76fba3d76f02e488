"""The organization hub (examples/org-hub.yaml): heal events reach it; only the organization may send.

moto's EventBridge resolves a bus ARN in the caller's account (no cross-account PutEvents), does
not evaluate bus policies, and its CloudFormation skips AWS::Events::EventBusPolicy: the hub
receives events from its own account here, and the organization condition is checked in the
policy document. moto's EventBridge does not deliver to SNS targets; `sns_targets` below delivers
them (as EventBridge does: the event as the message) so the topic is exercised too.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml

from tests.integration.test_org import REGION, _CfnLoader, parameters
from tools.devkit.events import ROOT, healer_event
from tools.devkit.handlers import rebuild_handlers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_hub_bus_policy_accepts_only_the_organization() -> None:
    hub = yaml.load((ROOT / "examples" / "org-hub.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506
    statement = hub["Resources"]["OrgEventBusPolicy"]["Properties"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "events:PutEvents"
    assert statement["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": {"Ref": "OrganizationId"}}}
    assert hub["Parameters"]["OrganizationId"]["AllowedPattern"] == "^o-[a-z0-9]{10,32}$"
    assert hub["Resources"]["HealRule"]["Properties"]["EventPattern"] == {"source": ["rolekeeper"]}


@pytest.fixture
def sns_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.events import models as events_models
    from moto.sns import sns_backends

    original = events_models.Rule.send_to_targets

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        if not self.event_pattern.matches_event(original_event):
            return
        topics = [t for t in self.targets if t["Arn"].split(":")[2] == "sns"]
        for target in topics:
            arn = target["Arn"]
            backend = sns_backends[arn.split(":")[4]][arn.split(":")[3]]
            backend.publish(message=json.dumps(original_event, default=str), arn=arn)
        others = [t for t in self.targets if t not in topics]
        saved, self.targets = self.targets, others
        try:
            original(self, original_event, transform_input)
        finally:
            self.targets = saved

    monkeypatch.setattr(events_models.Rule, "send_to_targets", send_to_targets)


@pytest.fixture
def hub(aws: None, sns_targets: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """examples/org-hub.yaml deployed with moto's CloudFormation, and the healer pointed at it."""
    org_id = boto3.client("organizations").create_organization(FeatureSet="ALL")["Organization"]["Id"]
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName="rolekeeper-org-hub",
        TemplateBody=(ROOT / "examples" / "org-hub.yaml").read_text(),
        Parameters=parameters(OrganizationId=org_id),
    )
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cloudformation.describe_stacks(StackName="rolekeeper-org-hub")["Stacks"][0]["Outputs"]
    }
    monkeypatch.setenv("ORG_EVENT_BUS_ARN", outputs["OrgEventBusArn"])
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="topic-reader")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    boto3.client("sns").subscribe(TopicArn=outputs["HealTopicArn"], Protocol="sqs", Endpoint=queue_arn)
    yield {**outputs, "QueueUrl": queue}


def test_heals_reach_the_hub(hub: dict[str, str], stack: Any, context: Any) -> None:
    from rolekeeper.handlers.healer import lambda_handler

    assert stack.send("role-ecs-instance-create.json")["Status"] == "SUCCESS"
    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    iam.delete_instance_profile(InstanceProfileName="ecsInstanceRole")
    result = lambda_handler(healer_event("heal-delete-instance-profile.json"), context)
    assert result["outcome"] == "healed"
    logged = boto3.client("logs").filter_log_events(logGroupName=hub["HealLogGroupName"])["events"]
    assert len(logged) == 1
    event = json.loads(logged[0]["message"])
    assert event["source"] == "rolekeeper"
    assert event["detail-type"] == "rolekeeper heal"
    detail = event["detail"]
    assert detail["schemaVersion"] == "1"
    assert (detail["outcome"], detail["object"]) == ("healed", {"kind": "role", "name": "ecsInstanceRole"})
    assert detail["trigger"]["type"] == "cloudtrail"
    assert detail["trigger"]["eventName"] == "DeleteInstanceProfile"
    assert detail["account"] == context.invoked_function_arn.split(":")[4]
    assert detail["changes"]
    messages = boto3.client("sqs").receive_message(QueueUrl=hub["QueueUrl"], MaxNumberOfMessages=10)
    (message,) = messages["Messages"]
    assert json.loads(json.loads(message["Body"])["Message"])["detail"]["outcome"] == "healed"


def test_nothing_is_sent_for_healthy_or_ignored(hub: dict[str, str], context: Any) -> None:
    from rolekeeper.handlers.healer import lambda_handler

    assert lambda_handler(healer_event("heal-delete-role.json"), context)["outcome"] == "ignored"
    assert lambda_handler(healer_event("heal-scheduled.json"), context)["outcome"] == "reconciled"
    assert boto3.client("logs").filter_log_events(logGroupName=hub["HealLogGroupName"])["events"] == []


def test_an_unreachable_bus_never_fails_a_heal(
    aws: None, stack: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolekeeper.handlers.healer import lambda_handler

    monkeypatch.setenv("ORG_EVENT_BUS_ARN", f"arn:aws:events:{REGION}:123456789012:event-bus/missing")
    assert stack.send("role-ecs-instance-create.json")["Status"] == "SUCCESS"
    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    iam.delete_instance_profile(InstanceProfileName="ecsInstanceRole")
    assert lambda_handler(healer_event("heal-delete-instance-profile.json"), context)["outcome"] == "healed"


def test_publish_batches_and_reports_what_was_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    from rolekeeper.aws import org_events

    calls: list[int] = []

    class Client:
        meta = types.SimpleNamespace(region_name="us-east-1")

        def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            calls.append(len(Entries))
            return {"Entries": [{"EventId": "x"} for _ in Entries], "FailedEntryCount": 0}

    monkeypatch.setattr(org_events.aws, "client", lambda *_a: Client())
    details = [
        org_events.detail(
            "healed", "role", f"app-{i}", "role missing", [], account="1", region="r", trigger={}
        )
        for i in range(23)
    ]
    details.append(org_events.detail("healthy", "role", "x", "", [], account="1", region="r", trigger={}))
    assert org_events.publish(details, bus="arn:aws:events:us-east-1:123456789012:event-bus/b") == 23
    assert calls == [10, 10, 3]


def test_a_failed_heal_is_sent_before_lambda_retries(
    aws: None, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolekeeper.aws import org_events
    from rolekeeper.handlers import healer

    sent: list[dict[str, Any]] = []
    monkeypatch.setenv("ORG_EVENT_BUS_ARN", f"arn:aws:events:{REGION}:123456789012:event-bus/rolekeeper-org")
    monkeypatch.setattr(org_events, "publish", lambda details, bus=None: sent.extend(details) or 1)
    rebuild_handlers()

    def broken(_healer: Any, _event: Any) -> Any:
        raise RuntimeError("IAM is down")

    from rolekeeper.healing import events

    monkeypatch.setattr(events, "_heal", broken)
    with pytest.raises(RuntimeError):
        healer.lambda_handler(healer_event("heal-delete-role.json"), context)
    (failure,) = sent
    assert (failure["outcome"], failure["object"]) == ("failed", {"kind": "role", "name": "ecsInstanceRole"})
    assert failure["summary"] == "RuntimeError: IAM is down"
    assert org_events.entries(sent, "bus")[0]["DetailType"] == "rolekeeper heal failed"
