"""AWS in this process (moto's mock_aws made AWS-like by tools/devkit/fidelity, CloudFormation's part
played by tools/devkit/cloudformation.py), every botocore call counted, and the real handlers driven as
CloudFormation and EventBridge would: requests confirmed against the CloudFormation double, answers
recorded instead of PUT, no waits slept."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tools.bench import ACCOUNT, EVENTS, REGION
from tools.bench.report import quiet

SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
ECS = "ecsInstanceRole"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
SSM_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
CW_POLICY = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
OPT_IN = [{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}]


@dataclass
class Calls:
    """Every botocore call made while `counting`, as (service, operation)."""

    active: bool = False
    made: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, model: Any = None, **_kwargs: Any) -> None:
        if self.active and model is not None:
            with self.lock:
                self.made.append((model.service_model.service_name, model.name))

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[tuple[str, str]]]:
        made: list[tuple[str, str]] = []
        self.made, self.active = made, True
        try:
            yield made
        finally:
            self.active = False


def by_service(made: list[tuple[str, str]]) -> Counter[str]:
    return Counter(service for service, _ in made)


def untrack_model_instances(patcher: Any) -> None:
    """moto keeps every model object it ever made (BaseModel.__new__ appends it to its class's
    instances_tracked, for the moto server's dashboard), and its TransactWriteItems deep-copies
    every table it touches first (its rollback copy): registering many roles kept every copy of a
    growing table alive. The bench needs no dashboard: stop the tracking."""
    from moto.core.common_models import BaseModel

    def untracked(cls: type, *_args: Any, **_kwargs: Any) -> Any:
        return object.__new__(cls)

    patcher.setattr(BaseModel, "__new__", untracked)


def serialise_moto(patcher: Any) -> None:
    """Each AWS API call is atomic (the heal lease relies on DynamoDB's conditional writes); moto
    in threads is not. Serialise moto's actions, so a concurrent measure measures rolekeeper."""
    from moto.core.responses import BaseResponse

    lock = threading.RLock()
    original = BaseResponse.call_action

    def call_action(self: Any) -> Any:
        with lock:
            return original(self)

    patcher.setattr(BaseResponse, "call_action", call_action)


@dataclass
class World:
    calls: Calls
    cloudformation: Any  # tools.devkit.cloudformation.CloudFormation
    tasks: Any  # tools.devkit.fidelity.DeletionTasks
    answers: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def mocked_aws(calls: Calls) -> Iterator[World]:
    """moto in-process, AWS-like, the registry table made, both handlers on a clock that does not
    sleep, answers recorded."""
    import boto3
    import pytest
    from moto import mock_aws

    from rolekeeper.aws import clients as aws
    from rolekeeper.aws.registry import TABLE_SCHEMA
    from rolekeeper.config import settings
    from rolekeeper.handlers import custom_resource, healer
    from rolekeeper.retry import Clock
    from tools.devkit import cloudformation, fidelity

    fidelity.use_only_the_managed_policies_rolekeeper_needs()  # moto's IAM set up in ms, not seconds
    patcher = pytest.MonkeyPatch()
    world = World(calls, cloudformation.CloudFormation(), fidelity.DeletionTasks())
    fidelity.install(patcher, world.tasks)
    cloudformation.install(patcher, world.cloudformation)
    untrack_model_instances(patcher)

    def sender(_url: str, answer: dict[str, Any], _clock: Any) -> int:
        world.answers.append(copy.deepcopy(answer))
        return 200

    clock = Clock(sleep=lambda _seconds: None)
    try:
        with mock_aws():
            boto3.setup_default_session()
            assert boto3.DEFAULT_SESSION is not None
            boto3.DEFAULT_SESSION.events.register("before-call", calls.hook)
            aws.client.cache_clear()
            settings.cache_clear()
            custom_resource.configure(sender=sender, clock=clock)
            healer.configure(clock=clock)
            boto3.client("dynamodb").create_table(
                TableName=os.environ["REGISTRY_TABLE_NAME"], **copy.deepcopy(TABLE_SCHEMA)
            )
            yield world
    finally:
        aws.client.cache_clear()
        settings.cache_clear()
        custom_resource.configure()
        healer.configure()
        patcher.undo()


def reset_moto() -> None:
    """Empty moto's backends (the embedded server shares them with this process): what one section
    made is not the next one's."""
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


def stack_id(stack: str) -> str:
    return f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/{uuid.uuid5(uuid.NAMESPACE_DNS, stack)}"


class Context:
    """The Lambda context both handlers read (remaining time, the function's ARN)."""

    def __init__(self, function: str = "ProvisionerFunction", remaining_ms: int = 120_000) -> None:
        self.function_name = f"rolekeeper-{function}"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rolekeeper-{function}"
        self.memory_limit_in_mb = 256
        self.aws_request_id = str(uuid.uuid4())
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def request(
    event_file: str,
    stack: str,
    props: dict[str, Any] | None = None,
    old_props: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """events/<event_file> as one stack's CloudFormation would send it."""
    event = json.loads((EVENTS / event_file).read_text())
    event["StackId"] = stack_id(stack)
    event["RequestId"] = str(uuid.uuid4())
    event["ResourceProperties"].update(props or {})
    if old_props is not None:
        event["OldResourceProperties"] = {**event.get("OldResourceProperties", {}), **old_props}
    event.update(overrides)
    return event


def cfn(world: World, event: dict[str, Any]) -> dict[str, Any]:
    """One custom resource request through the real handler, CloudFormation's state set around it
    as CloudFormation would; returns the answer."""
    from rolekeeper.handlers.custom_resource import lambda_handler

    world.cloudformation.before(event)
    before = len(world.answers)
    with quiet():
        lambda_handler(event, Context())
    assert len(world.answers) == before + 1, "exactly one answer per request"
    answer = world.answers[-1]
    world.cloudformation.after(event, answer)
    assert answer["Status"] == "SUCCESS", answer
    return answer


def heal_event(event_file: str, **detail: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / event_file).read_text())
    event["id"] = str(uuid.uuid4())
    if "eventID" in event["detail"]:
        event["detail"]["eventID"] = str(uuid.uuid4())
    for key, value in detail.items():
        if isinstance(value, dict) and isinstance(event["detail"].get(key), dict):
            event["detail"][key].update(value)
        else:
            event["detail"][key] = value
    return event


def heal(event: dict[str, Any], *, silent: bool = True, remaining_ms: int = 300_000) -> dict[str, Any]:
    """One event through the real healer handler. From threads pass silent=False and wrap the
    whole pool in quiet(): redirect_stdout is process-wide, not per thread."""
    from rolekeeper.handlers.healer import lambda_handler

    context = Context("HealerFunction", remaining_ms)
    with quiet() if silent else contextlib.nullcontext():
        return lambda_handler(copy.deepcopy(event), context)  # type: ignore[arg-type]


def delete_ecs_role_by_hand() -> None:
    import boto3

    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    iam.delete_instance_profile(InstanceProfileName=ECS)
    iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    iam.delete_role(RoleName=ECS)
