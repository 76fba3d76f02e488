"""AWS faults injected where botocore sends a request, so its standard retry mode is exercised.

A handler on a rolekeeper client's `before-send.<service>` event answers the armed operation with
an error response (the status and body the service would send) or raises ReadTimeoutError, for
the first N attempts or for every attempt. Every attempt is recorded with botocore's own attempt
number (the `amz-sdk-request: attempt=N; max=M` header standard mode adds).

Besides the four classic faults, the two that concurrency and lost answers bring (DESIGN.md,
"Concurrency and lost answers are normal"):
- CONFLICT: DynamoDB refuses a write because another transaction holds one of its items.
  TransactWriteItems is cancelled (TransactionCanceledException, one item's reason
  TransactionConflict, the others None); a single-item write (UpdateItem, PutItem, DeleteItem)
  gets TransactionConflictException. Neither is retried by botocore.
- applied but answer lost: time_out_after_applying() lets the service carry the call out, then
  raises ReadTimeoutError (botocore retries it: the retry meets the applied call's effects).
`skip` lets the first N calls of the operation through, so any occurrence in a request can be hit.

moto answers requests from a less specific `before-send` handler that botocore calls after ours
whatever ours returned; a faulted request's URL is pointed away from AWS so moto leaves it alone
(a throttled or refused call must not also have happened).
"""

from __future__ import annotations

import json
import re
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

THROTTLING = "throttling"
UNAVAILABLE = "5xx"
DENIED = "access-denied"
TIMEOUT = "read-timeout"
CONFLICT = "transaction-conflict"  # DynamoDB writes only
FAULTS = (THROTTLING, UNAVAILABLE, DENIED, TIMEOUT)
TRANSIENT = (THROTTLING, UNAVAILABLE, TIMEOUT)

# status, error code per service (IAM speaks the query protocol, KMS and DynamoDB JSON).
ERRORS: dict[str, tuple[int, dict[str, str]]] = {
    THROTTLING: (400, {"iam": "Throttling", "kms": "ThrottlingException", "dynamodb": "ThrottlingException"}),
    UNAVAILABLE: (
        503,
        {"iam": "ServiceUnavailable", "kms": "ServiceUnavailable", "dynamodb": "ServiceUnavailable"},
    ),
    DENIED: (
        403,
        {"iam": "AccessDenied", "kms": "AccessDeniedException", "dynamodb": "AccessDeniedException"},
    ),
}

SERVICE = {
    **dict.fromkeys(
        (
            "GetRole",
            "CreateServiceLinkedRole",
            "UpdateRole",
            "DeleteServiceLinkedRole",
            "GetServiceLinkedRoleDeletionStatus",
            "CreateRole",
            "UpdateAssumeRolePolicy",
            "ListAttachedRolePolicies",
            "AttachRolePolicy",
            "DetachRolePolicy",
            "TagRole",
            "PutRolePermissionsBoundary",
            "GetInstanceProfile",
            "CreateInstanceProfile",
            "AddRoleToInstanceProfile",
            "RemoveRoleFromInstanceProfile",
            "DeleteInstanceProfile",
            "ListInstanceProfilesForRole",
            "ListRolePolicies",
            "DeleteRolePolicy",
            "DeleteRolePermissionsBoundary",
            "UntagRole",
            "DeleteRole",
            "GetAccountAuthorizationDetails",
        ),
        "iam",
    ),
    **dict.fromkeys(("DescribeKey", "ListResourceTags", "CreateGrant", "ListGrants", "RevokeGrant"), "kms"),
    **dict.fromkeys(("UpdateItem", "DeleteItem", "Query", "Scan", "TransactWriteItems"), "dynamodb"),
}

# Reads: every other operation in SERVICE changes something (what the lost-answer fault is for).
READS = frozenset(
    op for op in SERVICE if op.startswith(("Get", "List", "Describe")) or op in ("Query", "Scan")
)
WRITES = frozenset(SERVICE) - READS
REGISTRY_WRITES = frozenset(op for op in WRITES if SERVICE[op] == "dynamodb")

NOWHERE = "https://fault-injected.invalid/"
CALLER = "arn:aws:sts::123456789012:assumed-role/rolekeeper-ProvisionerFunctionRole-1A2B3C4D5E6F/rolekeeper-ProvisionerFunction-Q1w2E3r4T5y6"


def error_code(operation: str, fault: str) -> str:
    return ERRORS[fault][1][SERVICE[operation]]


def message(operation: str, fault: str) -> str:
    service = SERVICE[operation]
    if fault == DENIED:
        # As long as AWS writes it: the Reason must still fit in 256 characters.
        return (
            f"User: {CALLER} is not authorized to perform: {service}:{operation} on resource: "
            f"arn:aws:{service}::123456789012:* because no identity-based policy allows the "
            f"{service}:{operation} action"
        )
    if fault == THROTTLING:
        return "Rate exceeded"
    return "Service is unavailable. Please try again later."


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self._data


def error_response(url: str, operation: str, fault: str, text: str | None = None) -> AWSResponse:
    status, codes = ERRORS[fault]
    service = SERVICE[operation]
    code = codes[service]
    text = message(operation, fault) if text is None else text
    if service == "iam":
        kind = "Sender" if status < 500 else "Receiver"
        body = (
            '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{text}</Message></Error>"
            "<RequestId>0c9d7a4e-6f1b-4e3a-9b2d-fa017e5c3b21</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml", "x-amzn-RequestId": "0c9d7a4e-6f1b-4e3a-9b2d-fa017e5c3b21"}
    else:
        version = "1.1" if service == "kms" else "1.0"
        body = json.dumps({"__type": code, "message": text}).encode()
        headers = {
            "Content-Type": f"application/x-amz-json-{version}",
            "x-amzn-RequestId": "0c9d7a4e-6f1b-4e3a-9b2d-fa017e5c3b21",
        }
    return AWSResponse(url, status, headers, _Body(body))  # type: ignore[arg-type]


DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"
CONFLICT_MESSAGE = "Transaction is ongoing for the item"


def _json_response(url: str, status: int, body: dict[str, Any]) -> AWSResponse:
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "x-amzn-RequestId": "7TQ4C9R2J8N6M5L1K3H0G2F4D6S8A9P7O5I3U1Y0T2R4E6W8Q9VV",
    }
    return AWSResponse(url, status, headers, _Body(json.dumps(body).encode()))  # type: ignore[arg-type]


def conflict_response(url: str, operation: str, body: bytes | str | None, item: int | None) -> AWSResponse:
    """What DynamoDB answers when another transaction holds an item the call writes.

    TransactWriteItems: HTTP 400, TransactionCanceledException with one CancellationReason per
    TransactItem in order, "None" for the items that were fine (Code only) and TransactionConflict
    for the held one; the Message lists the codes. item: which TransactItem conflicts (default:
    the one on an OBJECT item, where two stacks' transactions meet; else the last).
    UpdateItem/PutItem/DeleteItem: HTTP 400, TransactionConflictException."""
    if operation != "TransactWriteItems":
        return _json_response(
            url,
            400,
            {"__type": f"{DYNAMODB_ERROR}TransactionConflictException", "message": CONFLICT_MESSAGE},
        )
    items = json.loads(body or "{}").get("TransactItems", [])
    if item is None:
        item = len(items) - 1
        for i, entry in enumerate(items):
            action: dict[str, Any] = next(iter(entry.values()), {})
            if action.get("Key", {}).get("sk", {}).get("S") == "OBJECT":
                item = i
                break
    codes = ["TransactionConflict" if i == item else "None" for i in range(len(items))]
    reasons = [
        {"Code": code, "Message": CONFLICT_MESSAGE} if code != "None" else {"Code": "None"} for code in codes
    ]
    return _json_response(
        url,
        400,
        {
            "__type": f"{DYNAMODB_ERROR}TransactionCanceledException",
            "CancellationReasons": reasons,
            "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
            f"[{', '.join(codes)}]",
        },
    )


@dataclass
class Attempt:
    operation: str
    attempt: int
    max_attempts: int
    injected: str | None  # the fault, or None when the call went through
    at: float


@dataclass
class Armed:
    fault: str
    remaining: int | None  # None: every attempt
    hang: float = 0.0  # "hang": sleep, then let the call through
    applied: bool = False  # TIMEOUT after the service carried the call out
    skip: int = 0  # let this many calls through first
    item: int | None = None  # CONFLICT on TransactWriteItems: which TransactItem


@dataclass
class Faults:
    """Arms faults per operation on rolekeeper's (per-test cached) clients; records every attempt."""

    attempts: list[Attempt] = field(default_factory=list)
    armed: dict[str, Armed] = field(default_factory=dict)
    backoff: list[float] = field(default_factory=list)
    # IAM, KMS or DynamoDB operations called that SERVICE does not list (CloudFormation's reads,
    # confirming a request, are not faulted)
    unknown: set[str] = field(default_factory=set)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Faults:
        """Hook every client rolekeeper.aws makes from now on (aws.iam(), aws.kms(), aws.dynamodb()),
        as it makes it: a test that never touches KMS does not pay for a KMS client."""
        from rolekeeper.aws import clients as aws

        make = aws.client.__wrapped__  # the uncached function: the cache below replaces it

        @cache
        def client(service: str, *args: Any) -> Any:
            made = make(service, *args)
            service_id = made.meta.service_model.service_id.hyphenize()
            made.meta.events.register(f"before-send.{service_id}", self._before_send)
            return made

        monkeypatch.setattr(aws, "client", client)
        # botocore's retry backoff (endpoint.py calls time.sleep): record it, do not wait.
        import botocore.endpoint

        monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=self.backoff.append))
        return self

    def arm(self, operation: str, fault: str, times: int | None = None) -> None:
        assert operation in SERVICE, operation
        self.armed[operation] = Armed(fault, times)

    def hang(self, operation: str, seconds: float, times: int | None = 1) -> None:
        self.armed[operation] = Armed("hang", times, hang=seconds)

    def time_out_after_applying(self, operation: str, times: int | None = 1, *, skip: int = 0) -> None:
        """The service carries the call out, the answer is lost (ReadTimeoutError): botocore retries."""
        self.armed[operation] = Armed(TIMEOUT, times, applied=True, skip=skip)

    def conflict(
        self, operation: str, times: int | None = 1, *, skip: int = 0, item: int | None = None
    ) -> None:
        """DynamoDB refuses the write for an ongoing transaction on one of its items (see
        conflict_response); nothing is applied."""
        assert SERVICE.get(operation) == "dynamodb" and operation in WRITES, operation
        self.armed[operation] = Armed(CONFLICT, times, skip=skip, item=item)

    def disarm(self) -> None:
        self.armed.clear()

    def forget(self) -> None:
        """Drop what was recorded so far (the setup's calls)."""
        self.attempts.clear()
        self.backoff.clear()

    @contextmanager
    def only(self, operation: str, fault: str, times: int | None = None) -> Iterator[None]:
        self.arm(operation, fault, times)
        try:
            yield
        finally:
            self.disarm()

    def calls(self, operation: str) -> list[Attempt]:
        return [a for a in self.attempts if a.operation == operation]

    def injected(self, operation: str) -> list[Attempt]:
        return [a for a in self.calls(operation) if a.injected]

    def operations(self) -> list[str]:
        return [a.operation for a in self.attempts]

    def _before_send(self, request: Any, event_name: str, **_kwargs: Any) -> AWSResponse | None:
        operation = event_name.split(".")[2]
        if operation not in SERVICE and event_name.split(".")[1] in ("iam", "kms", "dynamodb"):
            self.unknown.add(operation)
        header = request.headers.get("amz-sdk-request", b"")
        header = header.decode() if isinstance(header, bytes) else str(header)
        match = re.search(r"attempt=(\d+); max=(\d+)", header)
        attempt, most = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        armed = self.armed.get(operation)
        if armed is not None and armed.skip and attempt == 1:
            armed.skip -= 1  # counts calls, not botocore's retries of one call
            armed = None
        elif armed is not None and armed.skip:
            armed = None
        fire = armed is not None and (armed.remaining is None or armed.remaining > 0)
        record = Attempt(operation, attempt, most, armed.fault if fire and armed else None, time.monotonic())
        self.attempts.append(record)
        if not fire or armed is None:
            return None
        if armed.remaining is not None:
            armed.remaining -= 1
        if armed.hang:
            record.injected = None
            time.sleep(armed.hang)
            return None
        if armed.fault == TIMEOUT:
            if armed.applied:
                from moto.core.models import botocore_stubber

                botocore_stubber(event_name, request)  # the service does it; the answer is lost
            raise ReadTimeoutError(endpoint_url=request.url)
        url = request.url
        request.url = NOWHERE
        if armed.fault == CONFLICT:
            return conflict_response(url, operation, request.body, armed.item)
        return error_response(url, operation, armed.fault)
