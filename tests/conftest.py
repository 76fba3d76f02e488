"""Region, fake credentials and settings are set before any rolekeeper module is imported."""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.update(
    {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        "REGISTRY_TABLE_NAME": "rolekeeper-test-registry",
        "ALLOWED_SERVICE_NAMES": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
        "ecs.amazonaws.com,autoscaling.amazonaws.com",
        "ALLOWED_MANAGED_POLICY_ARNS": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore,"
        "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy",
        "ALLOWED_ROLE_NAMES": "aws-ec2-spot-fleet-tagging-role,AmazonEC2SpotFleetRole,AmazonEC2SpotFleetTaggingRole,"
        "ecsInstanceRole,AWSBatchServiceRole,app-*",
        "ALLOWED_TAG_KEYS": "team,env,owner,app,a,cost-center",
        "HEAL_MODE": "heal",
        "POWERTOOLS_SERVICE_NAME": "rolekeeper",
        "POWERTOOLS_METRICS_NAMESPACE": "rolekeeper",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)

import boto3
import pytest
from moto import mock_aws

from tests import cloudformation, fidelity

fidelity.use_only_the_managed_policies_rolekeeper_needs()

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
ACCOUNT = "123456789012"
# The tag by which an operator opts a customer managed key in to Custom::SpotFleetKmsGrant.
OPT_IN = [{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}]


def healer_event(name: str, **detail: Any) -> dict[str, Any]:
    """events/<name> (an EventBridge event) with fields of its detail replaced or merged."""
    data = json.loads((EVENTS / name).read_text())
    for key, value in detail.items():
        if isinstance(value, dict) and isinstance(data["detail"].get(key), dict):
            data["detail"][key].update(value)
        else:
            data["detail"][key] = value
    return data


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / name).read_text())
    for key, value in overrides.items():
        event[key] = value
    return event


@dataclass
class LambdaContext:
    function_name: str = "rolekeeper-ProvisionerFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:rolekeeper-ProvisionerFunction"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    remaining_ms: int = 120_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def context() -> LambdaContext:
    return LambdaContext()


class FakeClock:
    """Time that moves only when waited on: every wait rolekeeper makes is recorded, none is slept
    (on_sleep: what a test does meanwhile, such as another writer finishing its work)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []
        self.on_sleep: Any = None

    def now(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def clock(self) -> Any:
        from rolekeeper.retry import Clock

        return Clock(now=self.now, sleep=self.sleep)


CLOCK = [FakeClock()]  # the test's clock (the fake_clock fixture makes a new one per test)


@pytest.fixture(autouse=True)
def fake_clock() -> FakeClock:
    """The clock both handlers run on in this test: every wait recorded (fake_clock.slept), none slept."""
    CLOCK[0] = FakeClock()
    return CLOCK[0]


def rebuild_handlers() -> None:
    """Both handlers rebuilt on next use from the settings as the environment says now."""
    from rolekeeper.config import settings
    from rolekeeper.handlers import custom_resource, healer

    settings.cache_clear()
    custom_resource.configure(clock=CLOCK[0].clock())
    healer.configure(clock=CLOCK[0].clock())


def reset_clients() -> None:
    """Fresh AWS clients and settings; both handlers rebuilt on them on next use, on the test's
    clock (what a test configured besides, a sender say, stays)."""
    from rolekeeper.aws import clients as aws
    from rolekeeper.config import settings
    from rolekeeper.handlers import custom_resource, healer

    aws.client.cache_clear()
    settings.cache_clear()
    custom_resource.configure(clock=CLOCK[0].clock())
    healer.configure(clock=CLOCK[0].clock())


def create_registry_table() -> None:
    from rolekeeper.aws.registry import TABLE_SCHEMA

    boto3.client("dynamodb").create_table(
        TableName=os.environ["REGISTRY_TABLE_NAME"], **copy.deepcopy(TABLE_SCHEMA)
    )


@pytest.fixture
def deletion_tasks() -> fidelity.DeletionTasks:
    return fidelity.DeletionTasks()


@pytest.fixture
def cfn(monkeypatch: pytest.MonkeyPatch) -> cloudformation.CloudFormation:
    """The CloudFormation double (tests/cloudformation.py): the state each request is confirmed against."""
    double = cloudformation.CloudFormation()
    cloudformation.install(monkeypatch, double)
    return double


@pytest.fixture
def aws(
    monkeypatch: pytest.MonkeyPatch,
    deletion_tasks: fidelity.DeletionTasks,
    cfn: cloudformation.CloudFormation,
) -> Iterator[None]:
    """moto, made to behave as AWS (tests/fidelity.py), with the registry table created."""
    fidelity.install(monkeypatch, deletion_tasks)
    with mock_aws():
        reset_clients()
        create_registry_table()
        yield
    reset_clients()


@pytest.fixture
def raw_moto(monkeypatch: pytest.MonkeyPatch, cfn: cloudformation.CloudFormation) -> Iterator[None]:
    """moto as it is (its own SLR names and EntityAlreadyExists), for the both-behaviours tests."""
    with mock_aws():
        reset_clients()
        create_registry_table()
        yield
    reset_clients()


@dataclass
class Sent:
    """Stands in for CloudFormation's pre-signed ResponseURL."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    # The URLs CloudFormation signed (tests/cloudformation.py): the bucket refuses any other (403),
    # as S3 refuses a forged signature. None: every PUT accepted.
    issued: set[str] | None = None

    def __call__(self, url: str, body: dict[str, Any], *_args: Any, **_kwargs: Any) -> int:
        self.responses.append(copy.deepcopy(body))
        return 200 if self.issued is None or url in self.issued else 403

    @property
    def last(self) -> dict[str, Any]:
        assert self.responses, "no response was sent"
        return self.responses[-1]


@pytest.fixture
def sent() -> Iterator[Sent]:
    from rolekeeper.handlers import custom_resource

    recorder = Sent()
    custom_resource.configure(sender=recorder, clock=CLOCK[0].clock())
    yield recorder
    custom_resource.configure()


@dataclass
class Stack:
    """Sends custom resource requests as one CloudFormation stack would."""

    name: str
    sent: Sent
    context: LambdaContext
    cfn: cloudformation.CloudFormation

    @property
    def stack_id(self) -> str:
        return f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/{self.name}/0f1e2d3c-{abs(hash(self.name)) % 10**8:08d}"

    def send(
        self,
        event_file: str,
        logical_id: str | None = None,
        props: dict[str, Any] | None = None,
        old_props: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        confirmed: bool = True,
        signed: bool | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Send events/<event_file> from this stack; props merge into ResourceProperties.
        CloudFormation's state is set as it would be for the request (confirmed=False: a forged
        request that CloudFormation never made). The ResponseURL has CloudFormation's shape for
        the request (anyone can write that); signed (default: confirmed) says whether
        CloudFormation signed it, so that its bucket accepts the answer."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        event = load_event(event_file)
        event["StackId"] = self.stack_id
        event["RequestId"] = str(uuid.uuid4())  # CloudFormation's RequestIds are unique per request
        if logical_id:
            event["LogicalResourceId"] = logical_id
        event["ResourceProperties"].update(props or {})
        if old_props is not None:
            event["OldResourceProperties"] = {**event.get("OldResourceProperties", {}), **old_props}
        for name in drop:
            event["ResourceProperties"].pop(name, None)
        if all(isinstance(event.get(k), str) for k in ("StackId", "LogicalResourceId", "RequestId")):
            cloudformation.genuine(event)
        for key, value in overrides.items():
            event[key] = value
        if confirmed if signed is None else signed:
            self.cfn.issued.add(event["ResponseURL"])
        before = len(self.sent.responses)
        if confirmed:
            self.cfn.before(event)
        lambda_handler(event, self.context)
        assert len(self.sent.responses) == before + 1, "exactly one response per request"
        if confirmed:
            self.cfn.after(event, self.sent.last)
        return self.sent.last


@pytest.fixture
def stack(sent: Sent, context: LambdaContext, cfn: cloudformation.CloudFormation) -> Stack:
    sent.issued = cfn.issued
    return Stack("app", sent, context, cfn)


@pytest.fixture
def other_stack(sent: Sent, context: LambdaContext, cfn: cloudformation.CloudFormation) -> Stack:
    return Stack("other", sent, context, cfn)
