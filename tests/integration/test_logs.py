"""Issue 17 item 5: the logs are what the README says. Every line an invocation writes is one JSON
object, a refused request carries no traceback (a user's typo is not a crash), and each invocation
has its own correlation id (a malformed event is never logged under the previous request's)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tools.devkit.events import request_event


class Log:
    """What the function writes to its log stream: Powertools' handler, and every other record at
    WARNING or above (another library's plain text, a traceback) as it would reach the stream."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.stream = io.StringIO()
        self.caplog = caplog

    def take(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        self.stream.seek(0)
        self.stream.truncate()
        others = [
            r
            for r in self.caplog.records
            if r.levelno >= logging.WARNING and not r.name.startswith("rolekeeper")
        ]
        self.caplog.clear()
        assert not others, [r.getMessage() for r in others]
        # json.loads raises on a plain-text line: the test fails there
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[Log]:
    from rolekeeper.observability import logger

    captured = Log(caplog)
    handler = logger.registered_handler
    previous = handler.setStream(captured.stream)  # type: ignore[attr-defined]
    yield captured
    handler.setStream(previous)  # type: ignore[attr-defined]


def test_a_refused_request_logs_json_only_and_no_traceback(aws, stack, log):
    answer = stack.send("role-ec2-application-create.json", props={"Blueprint": "ec2-aplication"})
    assert answer["Status"] == "FAILED"
    logged = log.take()
    assert logged, "the refusal is logged"
    assert not [entry for entry in logged if "exception" in entry or "stack_trace" in entry]
    refused = [entry for entry in logged if entry.get("message") == "request refused"]
    assert refused and refused[0]["reason"] == answer["Reason"]


def test_a_malformed_event_gets_its_own_correlation_id_not_the_previous_requests(aws, stack, context, log):
    from rolekeeper.handlers.custom_resource import lambda_handler

    created = stack.send("role-ec2-application-create.json")
    assert created["Status"] == "SUCCESS", created["Reason"]
    first = log.take()
    previous = {entry.get("correlation_id") for entry in first} - {None}
    assert len(previous) == 1
    malformed = request_event("role-ec2-application-create.json", stack.name)
    for key in ("RequestId", "StackId", "LogicalResourceId"):
        malformed.pop(key)
    lambda_handler(malformed, context)
    logged = log.take()
    assert logged, "the malformed event is logged"
    for entry in logged:
        assert entry.get("correlation_id") not in previous, entry
        assert entry.get("stack_id") is None, entry
        assert "exception" not in entry, entry
