"""The files in events/ (which `sam local invoke -e` takes too) as CloudFormation and EventBridge
send them: a stack's request gets the stack's id and a fresh RequestId, and whatever a test or
tool changes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tools.devkit.environment import ACCOUNT, REGION

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    """events/<name>, with top-level fields replaced."""
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    event.update(overrides)
    return event


def healer_event(name: str, **detail: Any) -> dict[str, Any]:
    """events/<name> (an EventBridge event) with fields of its detail replaced, or merged where
    both are objects."""
    event = load_event(name)
    for key, value in detail.items():
        if isinstance(value, dict) and isinstance(event["detail"].get(key), dict):
            event["detail"][key].update(value)
        else:
            event["detail"][key] = value
    return event


def stack_id(stack: str) -> str:
    """The StackId CloudFormation gives the stack named `stack` (the same on every run)."""
    return f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/{uuid.uuid5(uuid.NAMESPACE_DNS, stack)}"


def request_event(
    event_file: str,
    stack: str,
    *,
    logical_id: str | None = None,
    props: dict[str, Any] | None = None,
    old_props: dict[str, Any] | None = None,
    drop: Iterable[str] = (),
    response_url: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """events/<event_file> as stack's CloudFormation sends it: props merged into
    ResourceProperties (drop: names taken out), old_props into OldResourceProperties, other
    overrides into the event. response_url: a function of the RequestId (Receiver.url)."""
    event = load_event(event_file)
    event["StackId"] = stack_id(stack)
    event["RequestId"] = str(uuid.uuid4())  # CloudFormation's RequestIds are unique per request
    if response_url is not None:
        event["ResponseURL"] = response_url(event["RequestId"])
    if logical_id:
        event["LogicalResourceId"] = logical_id
    event["ResourceProperties"].update(props or {})
    if old_props is not None:
        event["OldResourceProperties"] = {**event.get("OldResourceProperties", {}), **old_props}
    for name in drop:
        event["ResourceProperties"].pop(name, None)
    if response_url is None and "ResponseURL" not in overrides:
        # The URL CloudFormation gives this request (anyone can write it; only CloudFormation
        # can sign it: the double's `issued`).
        from tools.devkit.cloudformation import genuine

        genuine(event)
    event.update(overrides)
    return event
