"""The custom resource protocol (provisioning.answering) and the response PUT (aws.responses):
exactly one answer per request, the deadline, malformed events, bounded delivery; the work itself
is a stand-in here (the integration tests run the real one)."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest

from rolekeeper.aws import responses
from rolekeeper.aws.registry import Registry
from rolekeeper.config import settings
from rolekeeper.provisioning.answering import MAX_BODY, MAX_REASON, Answering, short_reason
from rolekeeper.provisioning.requests import Response
from rolekeeper.retry import Clock
from tools.devkit.cloudformation import genuine
from tools.devkit.lambda_context import LambdaContext as Context

EVENTS = Path(__file__).resolve().parents[2] / "events"
SECRET_PATH = "/cfn-response-bucket/arn%3Aaws%3Acloudformation%7CSecretLogicalId%7Creq-0001"
SECRET_QUERY = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=5ec12e7deadbeef"
BODY = {
    "Status": "SUCCESS",
    "PhysicalResourceId": "pid",
    "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/app/x",
    "RequestId": "r1",
    "LogicalResourceId": "L",
    "Reason": "",
    "Data": {"A": "1"},
    "NoEcho": False,
}


# --- fixtures ---------------------------------------------------------------------------------


@dataclass
class Server:
    """A stand-in for the pre-signed S3 URL: records every request, answers with scripted codes."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def url(self, path: str = SECRET_PATH, query: str = SECRET_QUERY) -> str:
        return f"http://127.0.0.1:{self.port}{path}?{query}"


def _handler_for(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": self.rfile.read(length),
                }
            )
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:  # keep the test output quiet
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)
    httpd = HTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@dataclass
class Waits:
    """A clock whose waits are recorded, not slept (its deadline bounds them as the real one's)."""

    slept: list[float] = field(default_factory=list)

    def clock(self, deadline: float = 0.0) -> Clock:
        return Clock(now=time.time, sleep=self.slept.append, deadline=deadline)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def assert_url_not_logged(text: str) -> None:
    for secret in (
        "SecretLogicalId",
        "cfn-response-bucket",
        "X-Amz-Signature",
        "5ec12e7deadbeef",
        "AKIAEXAMPLE",
    ):
        assert secret not in text, f"{secret} was logged"


@dataclass
class Sender:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0
    status: int = 200

    def __call__(self, url: str, body: dict[str, Any], _clock: Clock) -> int:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append((url, json.loads(json.dumps(body))))
        return self.status

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _url, body in self.calls]


def event(name: str = "slr-create.json", **overrides: Any) -> dict[str, Any]:
    """events/<name> as CloudFormation would send it (its ResponseURL keyed by its own ids)."""
    loaded = json.loads((EVENTS / name).read_text())
    loaded.update({k: v for k, v in overrides.items() if k != "ResponseURL"})
    if all(isinstance(loaded.get(k), str) for k in ("StackId", "LogicalResourceId", "RequestId")):
        genuine(loaded)
    if "ResponseURL" in overrides:
        loaded["ResponseURL"] = overrides["ResponseURL"]
    return loaded


Work = Callable[[Any, Any], Response]


def answering(
    sender: Sender | Callable[..., int],
    *,
    work: Work | None = None,
    timeout_margin: float = 8.0,
    sam_local: bool = False,
) -> Answering:
    """The protocol around a stand-in for the work (under moto: the request bookkeeping is real)."""
    config = dataclasses.replace(settings(), verify_requests=False, sam_local=sam_local)
    clock = Clock()

    def done(_ctx: Any, request: Any) -> Response:
        return Response("pid-1", {"Answer": "42"})

    chosen = work or done
    return Answering(
        config,
        Registry(config.registry_table_name, clock=clock),
        clock,
        sender=sender,
        timeout_margin=timeout_margin,
        converge=chosen,
        delete=chosen,
    )


# --- short_reason -----------------------------------------------------------------------------


def test_short_reason_keeps_short_text():
    assert short_reason("AWSServiceName is required") == "AWSServiceName is required"


def test_short_reason_keeps_the_start_and_fits():
    reason = "RoleName must be 1-64 characters; " + "x" * 1000 + " END"
    short = short_reason(reason)
    assert len(short) <= MAX_REASON == 256
    assert short.startswith("RoleName must be 1-64 characters; ")
    assert short.endswith("...")
    assert "END" not in short


def test_short_reason_collapses_whitespace_and_accepts_non_strings():
    assert short_reason("a\n\n  b\tc ") == "a b c"
    assert short_reason(ValueError("boom")) == "boom"  # type: ignore[arg-type]
    assert len(short_reason("é" * 300)) <= 256


@pytest.mark.parametrize("length", [255, 256, 257, 10_000])
def test_short_reason_boundary(length):
    assert len(short_reason("r" * length)) == min(length, 256)


# --- responses.put: the PUT to the pre-signed URL -----------------------------------------------


def test_put_delivers_the_json_body_with_an_empty_content_type(server, waits, logs):
    assert responses.put(server.url(), BODY, clock=waits.clock()) == 200
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request["method"] == "PUT"
    assert request["path"] == f"{SECRET_PATH}?{SECRET_QUERY}"
    content_type = {k.lower(): v for k, v in request["headers"].items()}.get("content-type")
    assert content_type == ""  # the pre-signed URL was signed without one
    assert json.loads(request["body"]) == BODY
    assert waits.slept == []
    assert_url_not_logged(logs())


def test_put_retries_a_server_error_a_bounded_number_of_times(server, waits, logs):
    server.statuses = [500] * 10
    assert responses.put(server.url(), BODY, clock=waits.clock()) == 500
    assert len(server.requests) == responses.DELIVERY.attempts == 3
    assert len(waits.slept) == 2
    assert all(0 < s <= 2.0 for s in waits.slept)
    assert_url_not_logged(logs())


def test_put_after_a_server_error_delivers(server, waits):
    server.statuses = [503, 200]
    assert responses.put(server.url(), BODY, clock=waits.clock()) == 200
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 403, 404])
def test_put_returns_a_client_error_without_retrying(server, waits, logs, status):
    server.statuses = [status] * 5
    assert responses.put(server.url(), BODY, clock=waits.clock()) == status
    assert len(server.requests) == 1
    assert waits.slept == []
    assert_url_not_logged(logs())


def test_put_retries_throttling(server, waits):
    server.statuses = [429, 429, 429, 429]
    assert responses.put(server.url(), BODY, clock=waits.clock()) == 429
    assert len(server.requests) == 3


def test_put_gives_up_on_an_unreachable_url_after_the_bounded_attempts(closed_port, waits, logs):
    url = f"http://127.0.0.1:{closed_port}{SECRET_PATH}?{SECRET_QUERY}"
    started = time.monotonic()
    assert responses.put(url, BODY, clock=waits.clock()) == 0
    assert time.monotonic() - started < 5
    assert len(waits.slept) == 2
    assert_url_not_logged(logs())


def test_put_sends_nothing_past_its_deadline(server, waits):
    assert responses.put(server.url(), BODY, clock=waits.clock(deadline=time.time() - 1)) == 0
    assert server.requests == []


def test_put_counts_any_exception_as_a_failed_attempt(monkeypatch, waits):
    import http.client

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise http.client.BadStatusLine("garbage")

    monkeypatch.setattr(responses.urllib.request, "urlopen", broken)
    assert responses.put("https://bucket.s3.amazonaws.com/x", {"Status": "SUCCESS"}, clock=waits.clock()) == 0


# --- one answer per request -------------------------------------------------------------------


@pytest.fixture
def no_clients(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []

    def refuse(*args: Any, **_kwargs: Any) -> Any:
        made.append(str(args[:2]))
        raise AssertionError("a boto3 client was created")

    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(botocore.session.Session, "create_client", refuse)
    return made


def test_building_the_handlers_creates_no_aws_client(no_clients):
    from rolekeeper.handlers import custom_resource, healer

    custom_resource.configure()
    custom_resource.answering()
    healer.configure()
    healer.healer()
    assert no_clients == []


def test_a_request_leaves_the_root_logger_alone(aws):
    level, handlers = logging.root.level, list(logging.root.handlers)
    answering(Sender())(event(), Context())
    assert (logging.root.level, logging.root.handlers) == (level, handlers)


def test_a_request_gets_one_success_with_string_data(aws):
    sender = Sender()
    sent = answering(sender)(event(), Context())
    assert len(sender.calls) == 1
    url, body = sender.calls[0]
    assert url == event()["ResponseURL"]
    assert body["Status"] == "SUCCESS"
    assert body["PhysicalResourceId"] == "pid-1"
    assert body["Data"] == {"Answer": "42"}
    assert body["RequestId"] == event()["RequestId"]
    assert sent == body


def test_a_failure_gets_one_failed_with_a_short_reason(aws):
    sender = Sender()

    def boom(_ctx: Any, _request: Any) -> Response:
        raise RuntimeError("KeyId must be a key ARN; " + "detail " * 100)

    answering(sender, work=boom)(event(), Context())
    assert len(sender.calls) == 1
    body = sender.bodies[0]
    assert body["Status"] == "FAILED"
    assert "KeyId must be a key ARN" in body["Reason"]
    assert len(body["Reason"]) <= 256
    assert body["Data"] == {}


def test_exactly_one_answer_when_the_deadline_passes_while_working(aws):
    sender = Sender()
    finished = threading.Event()

    def slow(_ctx: Any, _request: Any) -> Response:
        time.sleep(1.5)
        finished.set()
        return Response("late-physical-id")

    started = time.monotonic()
    answering(sender, work=slow, timeout_margin=0.3)(event(), Context(remaining_ms=1000))
    assert finished.is_set()
    assert time.monotonic() - started < 5
    assert len(sender.calls) == 1, sender.bodies
    body = sender.bodies[0]
    assert body["Status"] == "FAILED"
    assert "time" in body["Reason"].lower()
    assert body["PhysicalResourceId"] != "late-physical-id"


def test_the_next_request_after_a_deadline_answer_is_answered(aws):
    sender = Sender()
    delays = [1.0, 0.0]

    def work(_ctx: Any, _request: Any) -> Response:
        time.sleep(delays.pop(0))
        return Response("pid")

    handle = answering(sender, work=work, timeout_margin=0.3)
    handle(event(), Context(remaining_ms=800))
    handle(event(RequestId="second"), Context(remaining_ms=800))
    assert [b["Status"] for b in sender.bodies] == ["FAILED", "SUCCESS"]
    assert sender.bodies[1]["RequestId"] == "second"


def test_a_redelivered_answered_request_gets_no_second_answer(aws):
    sender = Sender()
    handle = answering(sender)
    handle(event(), Context())
    assert handle(event(), Context(aws_request_id="another-invocation")) is None
    assert len(sender.calls) == 1


def test_delete_does_not_sleep(aws):
    sender = Sender()
    started = time.monotonic()
    answering(sender)(event("slr-delete.json"), Context(remaining_ms=900_000))
    assert time.monotonic() - started < 2
    assert sender.bodies[0]["Status"] == "SUCCESS"


def test_the_handler_does_not_return_while_the_deadline_answer_is_still_being_sent(aws):
    delivered: list[float] = []

    def slow_sender(_url: str, body: dict[str, Any], _clock: Clock) -> int:
        time.sleep(0.5)  # the PUT of the deadline FAILED takes a while
        delivered.append(time.monotonic())
        return 200

    def work(_ctx: Any, _request: Any) -> Response:
        time.sleep(0.3)  # the timer (0.1 s) fires first and starts sending
        return Response("pid-1")

    answering(slow_sender, work=work, timeout_margin=1.9)(event(), Context(remaining_ms=2_000))
    returned = time.monotonic()
    assert delivered, "the handler returned before its one answer was delivered"
    assert delivered[0] <= returned


# --- malformed events ---------------------------------------------------------------------------


def _without(key: str, name: str = "slr-create.json") -> dict[str, Any]:
    broken = event(name)
    broken.pop(key)
    return broken


MALFORMED = [
    pytest.param(_without("ResponseURL"), "ResponseURL", False, id="no-ResponseURL"),
    pytest.param(event(ResponseURL=""), "ResponseURL", False, id="empty-ResponseURL"),
    pytest.param(_without("RequestId"), "RequestId", True, id="no-RequestId"),
    pytest.param(_without("StackId"), "StackId", True, id="no-StackId"),
    pytest.param(_without("LogicalResourceId"), "LogicalResourceId", True, id="no-LogicalResourceId"),
    pytest.param(_without("ResourceType"), "ResourceType", True, id="no-ResourceType"),
    pytest.param(event(RequestType="Bogus"), "RequestType", True, id="RequestType-Bogus"),
    pytest.param(event(RequestId=7), "RequestId", True, id="RequestId-not-string"),
    pytest.param(
        event(ResponseURL="http://example.com/x?X-Amz-Signature=1"), "ResponseURL", False, id="plain-http"
    ),
    pytest.param(event(ResponseURL="ftp://example.com/x"), "ResponseURL", False, id="ftp"),
    pytest.param(event(ResponseURL="https:///no-host"), "ResponseURL", False, id="https-no-host"),
    pytest.param(
        _without("PhysicalResourceId", "slr-update.json"), "PhysicalResourceId", True, id="Update-no-pid"
    ),
    pytest.param(
        event("slr-update.json", PhysicalResourceId=None), "PhysicalResourceId", True, id="Update-null-pid"
    ),
    pytest.param(event(ResourceProperties=["AWSServiceName"]), "ResourceProperties", True, id="props-list"),
]


@pytest.mark.parametrize(("bad", "names", "deliverable"), MALFORMED)
def test_a_malformed_event_gets_a_failed_answer_naming_the_problem(aws, bad, names, deliverable):
    sender = Sender()
    worked: list[str] = []

    def work(_ctx: Any, request: Any) -> Response:
        worked.append(request.request_type)
        return Response("pid")

    body = answering(sender, work=work)(bad, Context())
    assert body is not None
    assert body["Status"] == "FAILED"
    assert names in body["Reason"], body["Reason"]
    assert len(body["Reason"]) <= 256
    assert worked == []
    if deliverable:
        assert [url for url, _b in sender.calls] == [bad["ResponseURL"]]
    else:
        assert sender.calls == []  # no https URL to answer: nothing is sent anywhere


@pytest.mark.parametrize(
    ("request_type", "reason"),
    [
        ("Update", "Malformed request: an Update request must carry PhysicalResourceId"),
        ("Delete", "Malformed request: a Delete request must carry PhysicalResourceId"),
    ],
)
def test_a_request_without_physical_id_is_refused_in_plain_english(aws, request_type, reason):
    body = answering(Sender())(
        _without("PhysicalResourceId", "slr-update.json") | {"RequestType": request_type}, Context()
    )
    assert body is not None
    assert body["Reason"] == reason


@pytest.mark.parametrize("bad", ["not an event", None, [event()]], ids=["string", "None", "list"])
def test_an_event_that_is_not_a_request_is_refused_without_sending_anything(aws, bad):
    sender = Sender()
    body = answering(sender)(bad, Context())
    assert body is not None and body["Status"] == "FAILED" and "not a CloudFormation" in body["Reason"]
    assert sender.calls == []


def test_a_malformed_event_never_uses_the_previous_response_url(aws):
    sender = Sender()
    handle = answering(sender)
    good = event()
    handle(good, Context())
    handle(_without("ResponseURL"), Context())
    handle(event(ResponseURL="http://example.com/x"), Context())
    handle("garbage", Context())
    assert [url for url, _b in sender.calls] == [good["ResponseURL"]]
    assert sender.bodies[0]["Status"] == "SUCCESS"


def test_sam_local_prints_the_answer_instead_of_sending_it(aws, capsys):
    sender = Sender()
    sent = answering(sender, sam_local=True)(event(), Context())
    assert sender.calls == []
    out = capsys.readouterr().out
    start = out.index('{\n  "Status"')
    printed, _end = json.JSONDecoder().raw_decode(out[start:])
    assert printed == sent
    assert printed["Status"] == "SUCCESS"


# --- bounds: body size, unusable URLs, crhelper's polling keys -----------------------------------


def test_a_body_over_4096_bytes_drops_the_largest_attributes_and_keeps_the_rest(aws):
    sender = Sender()

    def work(_ctx: Any, _request: Any) -> Response:
        return Response("pid-1", {"GrantToken": "t" * 5000, "GrantId": "g" * 64, "KeyArn": "arn:aws:kms:k"})

    answering(sender, work=work)(event(), Context())
    body = sender.bodies[0]
    assert len(json.dumps(body).encode()) <= MAX_BODY
    assert body["Status"] == "SUCCESS"
    assert body["Data"] == {"GrantId": "g" * 64, "KeyArn": "arn:aws:kms:k"}


def test_escaped_characters_count_toward_the_4096_bytes(aws):
    sender = Sender()
    physical_id = "arn:aws:iam::123456789012:role/" + "\\" * 500 + "/x"

    def work(_ctx: Any, _request: Any) -> Response:
        return Response(physical_id, {"Arn": "\\" * 1500, "InstanceProfileArn": "\\" * 1400, "RoleName": "x"})

    answering(sender, work=work)(event(), Context())
    body = sender.bodies[0]
    assert len(json.dumps(body).encode()) <= MAX_BODY
    assert body["Data"]["RoleName"] == "x"


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket.s3.amazonaws.com/x\n?X-Amz-Signature=secret",
        "https://bucket.s3.amazonaws.com/x y?X-Amz-Signature=secret",
        "https://bucket.s3.amazonaws.com:99999/x?X-Amz-Signature=secret",
        "https://[bucket/x?X-Amz-Signature=secret",
    ],
)
def test_a_response_url_that_cannot_be_used_is_refused_without_raising_or_logging_it(aws, url, logs):
    sender = Sender()
    worked: list[str] = []

    def work(_ctx: Any, request: Any) -> Response:
        worked.append(request.request_type)
        return Response("pid")

    answering(sender, work=work)(event(ResponseURL=url), Context())  # must not raise
    assert sender.calls == []
    assert worked == []
    assert "secret" not in logs()


@pytest.mark.parametrize("key", ["CrHelperPoll", "CrHelperData", "CrHelperPermission", "CrHelperRule"])
def test_crhelpers_polling_keys_are_ignored(aws, key):
    sender = Sender()
    answering(sender)(event(**{key: {"Forged": "yes"}}), Context())
    assert sender.bodies[0]["Data"] == {"Answer": "42"}
