"""The demo's session: send a request or an event through the real handlers and print the answer,
run a step and print what it changed; and main, which runs the story on an embedded AWS."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from tools.demo.snapshot import Snapshot, changes, short, snapshot
from tools.demo.story import SPOT_FLEET, build, heal_and_delete
from tools.devkit.embedded import moto_server
from tools.devkit.events import healer_event, request_event
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Receiver

__all__ = ["SPOT_FLEET", "Demo", "main", "snapshot"]

NEXT_STEPS = """\
Next: deploy it to your AWS account (SAM CLI; Python 3.13 on PATH, or add --use-container):
  sam build && sam deploy --guided
then give one of your templates a resource with ServiceToken: !ImportValue <stack name>-ServiceToken.
One example per resource type: README.md, "Resource types"; every property: docs/resource-reference.md"""


class Demo:
    def __init__(self, receiver: Receiver, out: TextIO) -> None:
        self.receiver = receiver
        self.out = out
        self.failures = 0
        self.keys: tuple[str, ...] = ()
        self.last: Snapshot = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def step(self, title: str, action: Callable[[], None]) -> None:
        """Run one step and print what it changed."""
        self.say(title)
        action()
        now = snapshot(self.keys)
        found = changes(self.last, now)
        self.say("   changed:" if found else "   changed: nothing")
        for line in found:
            self.say(f"     {line}")
        self.say()
        self.last = now

    def request(self, event_file: str, stack: str, **overrides: Any) -> dict[str, Any]:
        """Send events/<event_file> as stack's CloudFormation would (props and old_props merged
        into the properties, other overrides into the event) and print the answer."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        event = request_event(event_file, stack, response_url=self.receiver.url, **overrides)
        with contextlib.redirect_stdout(io.StringIO()):  # the handler's JSON logs
            lambda_handler(event, LambdaContext())
        body = self.receiver.bodies[event["RequestId"]]
        sent = ", ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}"
            for k, v in event["ResourceProperties"].items()
            if k != "ServiceToken"
        )
        data = body.get("Data") or {}
        said = (
            f"Created: {data['Created']}"
            if "Created" in data
            else (f"GrantId {short(data['GrantId'])}" if "GrantId" in data else "")
        )
        answer = f"-> {body['Status']}" + (f" ({said})" if said else "")
        self.say(
            f"   {event['RequestType']} {event['ResourceType']} {stack}/{event['LogicalResourceId']} {answer}"
        )
        if event["RequestType"] != "Delete":  # a Delete acts on the stored claim, not on its properties
            self.say(f"     properties: {sent}")
        if body["Status"] != "SUCCESS":
            self.say(f"     Reason: {body['Reason']}")
            self.failures += 1
        return body

    def heal(self, event_file: str, **detail: Any) -> dict[str, Any]:
        from rolekeeper.handlers.healer import lambda_handler

        event = healer_event(event_file, **detail)
        with contextlib.redirect_stdout(io.StringIO()):
            result: dict[str, Any] = lambda_handler(
                event, LambdaContext(function_name="rolekeeper-HealerFunction")
            )
        self.say(f"   healer: {result.get('outcome')} ({result.get('detail')})")
        if result.get("outcome") != "healed":
            self.failures += 1
        return result

    def status(self) -> None:
        from rolekeeper import cli
        from rolekeeper.config import settings

        table = settings().registry_table_name
        self.say("   $ rolekeeper status")
        for line in cli.render(cli.status(table), table).splitlines():
            self.say(f"     {line}" if line else "")
        self.say()


def main(out: TextIO = sys.stdout) -> int:
    import boto3

    from rolekeeper.retry import Clock

    receiver = Receiver().start()
    try:
        # The handlers on the real clock, as deployed.
        with moto_server(clock=Clock(), POWERTOOLS_LOG_LEVEL="WARNING"):
            demo = Demo(receiver, out)
            demo.say(
                f"rolekeeper demo: AWS is moto at {boto3.client('iam').meta.endpoint_url}, CloudFormation's\n"
                f"responses go to 127.0.0.1:{receiver.port}. Every request sets OnDelete: Delete, so the last\n"
                "claim's Delete removes what rolekeeper created. After each step: what changed in AWS and in\n"
                "rolekeeper's registry (+ appeared, - went away, ~ changed).\n"
            )
            demo.last = snapshot()
            heal_and_delete(demo, build(demo))
    finally:
        receiver.stop()
    if demo.failures:
        demo.say(f"demo finished with {demo.failures} unexpected result(s)")
        return 1
    demo.say("demo finished: every request was answered once, as expected.\n")
    demo.say(NEXT_STEPS)
    return 0
