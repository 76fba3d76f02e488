"""rolekeeper.cfn: the response sender against a real local HTTP server, and CustomResource's
guarantees over crhelper (one response per request, no clients, no stale ResponseURL)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from crhelper import CfnResource

from rolekeeper import cfn
from rolekeeper.cfn import MAX_REASON, CustomResource, send_response, short_reason

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


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.sleep as rolekeeper.cfn sees it, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(cfn, "time", types.SimpleNamespace(sleep=recorded.append, monotonic=time.monotonic))
    return recorded


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
class Context:
    remaining_ms: int = 120_000
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    function_name: str = "rolekeeper-ProvisionerFunction"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Sender:
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, url: str, body: dict[str, Any], **kwargs: Any) -> bool:
        with self.lock:
            self.calls.append((url, json.loads(json.dumps(body)), kwargs))
        return True

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _url, body, _kw in self.calls]


def event(name: str = "slr-create.json", **overrides: Any) -> dict[str, Any]:
    loaded = json.loads((EVENTS / name).read_text())
    loaded.update(overrides)
    return loaded


@pytest.fixture
def real_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SAM_LOCAL", raising=False)


def resource(sender: Sender, *, timeout_margin: float = 8.0, physical_id: str = "pid-1") -> CustomResource:
    helper = CustomResource(timeout_margin=timeout_margin, sender=sender)
    helper.calls = []  # type: ignore[attr-defined]

    def work(event: dict[str, Any], _context: Any) -> str:
        helper.calls.append(event["RequestType"])  # type: ignore[attr-defined]
        helper.Data["Answer"] = 42
        return physical_id

    helper.create(work)
    helper.update(work)
    helper.delete(work)
    return helper


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


# --- send_response ----------------------------------------------------------------------------


def test_delivers_a_put_with_the_json_body_and_empty_content_type(server, sleeps, logs):
    assert send_response(server.url(), BODY, attempts=3, timeout=2) is True
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request["method"] == "PUT"
    assert request["path"] == f"{SECRET_PATH}?{SECRET_QUERY}"
    content_type = {k.lower(): v for k, v in request["headers"].items()}.get("content-type")
    assert content_type == ""  # the pre-signed URL was signed without one
    assert json.loads(request["body"]) == BODY
    assert sleeps == []
    assert_url_not_logged(logs())


def test_retries_a_server_error_a_bounded_number_of_times(server, sleeps, logs):
    server.statuses = [500] * 10
    assert send_response(server.url(), BODY, attempts=3, timeout=2) is False
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert all(0 < s <= 2.0 for s in sleeps)
    assert_url_not_logged(logs())


def test_a_server_error_then_success_is_delivered(server, sleeps):
    server.statuses = [503, 200]
    assert send_response(server.url(), BODY, attempts=3, timeout=2) is True
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_client_error_is_not_retried(server, sleeps, logs, status):
    server.statuses = [status] * 5
    assert send_response(server.url(), BODY, attempts=3, timeout=2) is False
    assert len(server.requests) == 1
    assert sleeps == []
    assert_url_not_logged(logs())


def test_throttling_is_retried(server, sleeps):
    server.statuses = [429, 429, 429, 429]
    assert send_response(server.url(), BODY, attempts=3, timeout=2) is False
    assert len(server.requests) == 3


def test_an_unreachable_url_gives_up_after_the_bounded_attempts(closed_port, sleeps, logs):
    url = f"http://127.0.0.1:{closed_port}{SECRET_PATH}?{SECRET_QUERY}"
    started = time.monotonic()
    assert send_response(url, BODY, attempts=3, timeout=0.5) is False
    assert time.monotonic() - started < 5
    assert len(sleeps) == 2
    assert_url_not_logged(logs())


def test_a_passed_deadline_sends_nothing(server, sleeps):
    assert send_response(server.url(), BODY, attempts=3, timeout=2, deadline=time.monotonic() - 1) is False
    assert server.requests == []


def test_delivery_logs_name_no_part_of_the_url(server, sleeps, logs):
    server.statuses = [500, 403]
    send_response(server.url(), BODY, attempts=3, timeout=2)
    send_response(server.url(), BODY, attempts=1, timeout=2)
    text = logs()
    assert "response refused" in text  # the log was captured ...
    assert_url_not_logged(text)  # ... and carries no part of the pre-signed URL


# --- CustomResource: construction -------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """crhelper's CfnResource.__init__ rewires the root logger; put it back."""
    names = ("", "boto", "boto3", "botocore", "urllib3")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


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


def test_init_sets_every_attribute_crhelper_sets(monkeypatch, restore_logging, no_clients):
    monkeypatch.setenv("AWS_SAM_LOCAL", "true")
    base = CfnResource()
    ours = CustomResource()
    missing = set(vars(base)) - set(vars(ours))
    assert not missing, f"CustomResource.__init__ does not set {sorted(missing)}"
    assert ours._sleep_on_delete == 0


def test_construction_creates_no_boto3_client(real_env, no_clients):
    CustomResource()
    CustomResource(timeout_margin=1, sender=Sender())
    assert no_clients == []


def test_construction_and_a_request_leave_the_root_logger_alone(real_env, restore_logging):
    level = logging.root.level
    handlers = list(logging.root.handlers)
    sender = Sender()
    resource(sender)(event(), Context())
    assert logging.root.level == level
    assert logging.root.handlers == handlers


# --- CustomResource: one response per request -------------------------------------------------


def test_a_request_gets_one_success_with_string_data(real_env):
    sender = Sender()
    helper = resource(sender)
    helper(event(), Context())
    assert len(sender.calls) == 1
    url, body, kwargs = sender.calls[0]
    assert url == event()["ResponseURL"]
    assert body["Status"] == "SUCCESS"
    assert body["PhysicalResourceId"] == "pid-1"
    assert body["Data"] == {"Answer": "42"}
    assert body["RequestId"] == event()["RequestId"]
    assert helper.last_response == body
    assert kwargs["deadline"] > time.monotonic()


def test_a_failure_gets_one_failed_with_a_short_reason(real_env):
    sender = Sender()
    helper = CustomResource(sender=sender)

    @helper.create
    def boom(_event: Any, _context: Any) -> str:
        raise RuntimeError("KeyId must be a key ARN; " + "detail " * 100)

    helper(event(), Context())
    assert len(sender.calls) == 1
    body = sender.bodies[0]
    assert body["Status"] == "FAILED"
    assert body["Reason"].startswith("KeyId must be a key ARN")
    assert len(body["Reason"]) <= 256
    assert body["Data"] == {}


def test_exactly_one_response_when_the_deadline_passes_while_working(real_env):
    sender = Sender()
    helper = CustomResource(timeout_margin=0.3, sender=sender)
    finished = threading.Event()

    @helper.create
    def slow(_event: Any, _context: Any) -> str:
        time.sleep(1.5)
        finished.set()
        return "late-physical-id"

    started = time.monotonic()
    helper(event(), Context(remaining_ms=1000))
    assert finished.is_set()
    assert time.monotonic() - started < 5
    assert len(sender.calls) == 1, sender.bodies
    body = sender.bodies[0]
    assert body["Status"] == "FAILED"
    assert "time" in body["Reason"].lower()
    assert body["PhysicalResourceId"] != "late-physical-id"
    assert helper.last_response == body
    assert helper.responded


def test_the_next_request_after_a_deadline_answer_is_answered(real_env):
    sender = Sender()
    helper = CustomResource(timeout_margin=0.3, sender=sender)
    delays = [1.0, 0.0]

    @helper.create
    def work(_event: Any, _context: Any) -> str:
        time.sleep(delays.pop(0))
        return "pid"

    helper(event(), Context(remaining_ms=800))
    helper(event(RequestId="second"), Context(remaining_ms=800))
    assert [b["Status"] for b in sender.bodies] == ["FAILED", "SUCCESS"]
    assert sender.bodies[1]["RequestId"] == "second"


def test_the_timer_is_cancelled_when_the_work_finishes(real_env):
    sender = Sender()
    helper = resource(sender, timeout_margin=0.5)
    helper(event(), Context(remaining_ms=1000))
    assert helper._timer is not None
    helper._timer.join(timeout=2)
    assert not helper._timer.is_alive()
    assert len(sender.calls) == 1
    assert sender.bodies[0]["Status"] == "SUCCESS"


def test_delete_does_not_sleep(real_env):
    sender = Sender()
    helper = resource(sender)
    started = time.monotonic()
    helper(event("slr-delete.json"), Context(remaining_ms=900_000))
    assert time.monotonic() - started < 2
    assert sender.bodies[0]["Status"] == "SUCCESS"


# --- CustomResource: malformed events ---------------------------------------------------------


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
    pytest.param("not an event", "event", False, id="string"),
    pytest.param(None, "event", False, id="None"),
    pytest.param([event()], "event", False, id="list"),
]


@pytest.mark.parametrize(("bad", "names", "deliverable"), MALFORMED)
def test_a_malformed_event_gets_a_failed_response_naming_the_problem(real_env, bad, names, deliverable):
    sender = Sender()
    helper = resource(sender)
    helper(bad, Context())
    body = helper.last_response
    assert body is not None
    assert body["Status"] == "FAILED"
    assert names in body["Reason"], body["Reason"]
    assert len(body["Reason"]) <= 256
    assert helper.calls == []  # type: ignore[attr-defined]
    if deliverable:
        assert [url for url, _b, _k in sender.calls] == [bad["ResponseURL"]]
    else:
        assert sender.calls == []  # no https URL to answer: nothing is sent anywhere


@pytest.mark.parametrize(
    ("request_type", "reason"),
    [
        ("Update", "Malformed request: an Update request must carry PhysicalResourceId"),
        ("Delete", "Malformed request: a Delete request must carry PhysicalResourceId"),
    ],
)
def test_a_request_without_physical_id_is_refused_in_plain_english(real_env, request_type, reason):
    helper = resource(Sender())
    helper(_without("PhysicalResourceId", "slr-update.json") | {"RequestType": request_type}, Context())
    assert helper.last_response is not None
    assert helper.last_response["Reason"] == reason


def test_a_malformed_event_never_reuses_the_previous_response_url(real_env):
    sender = Sender()
    helper = resource(sender)
    good = event()
    helper(good, Context())
    helper(_without("ResponseURL"), Context())
    helper(event(ResponseURL="http://example.com/x"), Context())
    helper("garbage", Context())
    assert len(sender.calls) == 1
    assert sender.calls[0][0] == good["ResponseURL"]
    assert sender.bodies[0]["Status"] == "SUCCESS"
    assert helper.last_response is not None
    assert helper.last_response["Status"] == "FAILED"


def test_a_malformed_event_is_answered_after_an_earlier_request_s_deadline_passed(real_env, server):
    # A warm container: the previous request's deadline is long gone when the next one arrives.
    helper = resource(Sender())
    helper.sender = send_response
    helper(event(ResponseURL=server.url(query="first=1")), Context(remaining_ms=900))
    time.sleep(0.45)  # the first request's deadline (less its margins) has now passed
    helper(
        _without("RequestId") | {"ResponseURL": server.url(query="second=1")}, Context(remaining_ms=120_000)
    )
    assert [r["path"].rsplit("?", 1)[1] for r in server.requests] == ["first=1", "second=1"]


def test_sam_local_prints_the_response_instead_of_sending_it(monkeypatch, capsys):
    monkeypatch.setenv("AWS_SAM_LOCAL", "true")
    sender = Sender()
    helper = resource(sender)
    helper(event(), Context())
    assert sender.calls == []
    out = capsys.readouterr().out
    start = out.index('{\n  "Status"')
    printed, _end = json.JSONDecoder().raw_decode(out[start:])
    assert printed == helper.last_response
    assert printed["Status"] == "SUCCESS"


# --- bounds: body size, malformed URLs, crhelper's polling keys ----------------------------------


def test_a_body_over_4096_bytes_drops_the_largest_attributes_and_keeps_the_rest(real_env):
    sender = Sender()
    helper = CustomResource(sender=sender)

    def work(_event: dict[str, Any], _context: Any) -> str:
        helper.Data.update({"GrantToken": "t" * 5000, "GrantId": "g" * 64, "KeyArn": "arn:aws:kms:k"})
        return "pid-1"

    helper.create(work)
    helper(event(), Context())
    (_url, body, _kwargs) = sender.calls[0]
    assert len(json.dumps(body).encode()) <= cfn.MAX_BODY
    assert body["Status"] == "SUCCESS"
    assert body["Data"] == {"GrantId": "g" * 64, "KeyArn": "arn:aws:kms:k"}


def test_escaped_characters_count_toward_the_4096_bytes(real_env):
    sender = Sender()
    helper = resource(sender, physical_id="arn:aws:iam::123456789012:role/" + "\\" * 500 + "/x")
    helper.Data.clear()

    def work(_event: dict[str, Any], _context: Any) -> str:
        helper.Data.update({"Arn": "\\" * 1500, "InstanceProfileArn": "\\" * 1400, "RoleName": "x"})
        return "arn:aws:iam::123456789012:role/" + "\\" * 500 + "/x"

    helper.create(work)
    helper(event(), Context())
    (_url, body, _kwargs) = sender.calls[0]
    assert len(json.dumps(body).encode()) <= cfn.MAX_BODY
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
def test_a_response_url_that_cannot_be_used_is_refused_without_raising_or_logging_it(real_env, url, logs):
    sender = Sender()
    helper = resource(sender)
    helper(event(ResponseURL=url), Context())  # must not raise
    assert sender.calls == []
    assert helper.calls == []  # type: ignore[attr-defined]
    assert "secret" not in logs()


def test_any_exception_while_sending_is_a_failed_attempt(monkeypatch, sleeps):
    import http.client

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise http.client.BadStatusLine("garbage")

    monkeypatch.setattr(cfn.urllib.request, "urlopen", broken)
    body = {"Status": "SUCCESS", "Data": {}}
    assert send_response("https://bucket.s3.amazonaws.com/x", body, attempts=3) is False


@pytest.mark.parametrize("key", ["CrHelperPoll", "CrHelperData", "CrHelperPermission", "CrHelperRule"])
def test_crhelpers_polling_keys_are_ignored(real_env, key):
    sender = Sender()
    helper = resource(sender)
    helper(event(**{key: {"Forged": "yes"}}), Context())
    (_url, body, _kwargs) = sender.calls[0]
    assert helper.calls == ["Create"]  # type: ignore[attr-defined]
    assert body["Data"] == {"Answer": "42"}


def test_the_handler_does_not_return_while_the_deadline_answer_is_still_being_sent(real_env):
    delivered: list[float] = []

    def slow_sender(_url: str, body: dict[str, Any], **_kwargs: Any) -> bool:
        time.sleep(0.5)  # the PUT of the deadline FAILED takes a while
        delivered.append(time.monotonic())
        return True

    helper = CustomResource(
        timeout_margin=1.9, sender=slow_sender
    )  # fires 0.1 s in, 1.9 s before the deadline

    def work(_event: dict[str, Any], _context: Any) -> str:
        time.sleep(0.3)  # the timer (0.1 s) fires first and starts sending
        return "pid-1"

    helper.create(work)
    helper(event(), Context(remaining_ms=2_000))
    returned = time.monotonic()
    assert delivered, "the handler returned before its one response was delivered"
    assert delivered[0] <= returned
