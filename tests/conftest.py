"""The tests' fixtures, on the development kit (tools/devkit)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tools.devkit import cloudformation, environment, fidelity
from tools.devkit.clock import CLOCK, FakeClock
from tools.devkit.embedded import fast_aws, moto_as_is
from tools.devkit.events import request_event, stack_id
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

# Region, fake credentials and settings, before any test module imports rolekeeper (the kit's
# modules import none of it, nor read the environment, when they are imported).
environment.apply(REGISTRY_TABLE_NAME="rolekeeper-test-registry")
fidelity.use_only_the_managed_policies_rolekeeper_needs()


@pytest.fixture
def context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture(autouse=True)
def fake_clock() -> FakeClock:
    """The clock both handlers run on in this test: every wait recorded (fake_clock.slept), none slept."""
    CLOCK[0] = FakeClock()
    return CLOCK[0]


@pytest.fixture
def deletion_tasks() -> fidelity.DeletionTasks:
    return fidelity.DeletionTasks()


@pytest.fixture
def cfn(monkeypatch: pytest.MonkeyPatch) -> cloudformation.CloudFormation:
    """The CloudFormation double (tools/devkit/cloudformation.py): the state each request is confirmed against."""
    double = cloudformation.CloudFormation()
    cloudformation.install(monkeypatch, double)
    return double


@pytest.fixture
def aws(
    monkeypatch: pytest.MonkeyPatch,
    deletion_tasks: fidelity.DeletionTasks,
    cfn: cloudformation.CloudFormation,
) -> Iterator[None]:
    """moto, made to behave as AWS (tools/devkit/fidelity), with the registry table created."""
    with fast_aws(monkeypatch, deletion_tasks):
        yield


@pytest.fixture
def raw_moto(cfn: cloudformation.CloudFormation) -> Iterator[None]:
    """moto as it is (its own SLR names and EntityAlreadyExists), for the both-behaviours tests."""
    with moto_as_is():
        yield


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
        return stack_id(self.name)

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

        event = request_event(
            event_file,
            self.name,
            logical_id=logical_id,
            props=props,
            old_props=old_props,
            drop=drop,
            **overrides,
        )
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
