"""crhelper's CfnResource with its traps closed.

crhelper (2.0.x) builds lambda/events/logs clients at import for a polling mode rolekeeper does
not use, rewires the root logger at DEBUG and logs whole events (ResponseURL included), sleeps
120 s on every Delete, can send a second response when its timeout timer fires while the handler
is still working, reuses the previous request's ResponseURL when an event is malformed, speaks
only HTTPS, and retries an unreachable ResponseURL forever. Each is replaced here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger
from crhelper import CfnResource

logger = Logger(child=True)
# crhelper's own logger logs whole events (ResponseURL included) at DEBUG: keep it quiet.
logging.getLogger("crhelper").setLevel(logging.WARNING)

FAILED = "FAILED"
REQUEST_TYPES = ("Create", "Update", "Delete")
REQUIRED = ("RequestType", "ResponseURL", "StackId", "RequestId", "LogicalResourceId", "ResourceType")
MAX_REASON = 256
# CloudFormation rejects a response body over 4096 bytes (the resource then waits out its timeout).
MAX_BODY = 4096


def short_reason(reason: str) -> str:
    """CloudFormation keeps at most 256 characters of Reason; keep the start, where the fix is named."""
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def _url_allowed(url: str) -> bool:
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return False  # control characters or spaces: no pre-signed URL has them, and urllib raises
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    # Plain HTTP only to this machine: the local stand-in for CloudFormation used by the demo/tests.
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def send_response(
    url: str, body: dict[str, Any], *, attempts: int = 3, timeout: float = 5.0, deadline: float | None = None
) -> bool:
    """PUT the response to the pre-signed URL; bounded attempts, never logs the URL."""
    data = json.dumps(body).encode()
    host = urlsplit(url).hostname or "?"
    for attempt in range(1, attempts + 1):
        remaining = (deadline - time.monotonic()) if deadline else timeout
        if remaining <= 0.2:
            break
        request = urllib.request.Request(  # noqa: S310 - scheme checked by _url_allowed
            url, data=data, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(data))}
        )
        try:
            with urllib.request.urlopen(request, timeout=min(timeout, remaining)) as reply:  # noqa: S310
                if reply.status < 300:
                    logger.info(
                        "response delivered", status=body["Status"], http_status=reply.status, attempt=attempt
                    )
                    return True
                logger.warning("response refused", http_status=reply.status, host=host, attempt=attempt)
        except urllib.error.HTTPError as error:
            logger.warning("response refused", http_status=error.code, host=host, attempt=attempt)
            if 400 <= error.code < 500 and error.code != 429:
                return False  # an expired or wrong pre-signed URL does not get better
        except Exception as error:
            logger.warning("response not delivered", error=type(error).__name__, host=host, attempt=attempt)
        if attempt < attempts:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 2.0))
    logger.error("giving up delivering the response", host=host, attempts=attempts)
    return False


def _size(body: dict[str, Any]) -> int:
    return len(json.dumps(body).encode())


def _fit(body: dict[str, Any]) -> None:
    """Keep the body within MAX_BODY: drop the largest attributes first (logged), then shorten Reason."""
    data: dict[str, str] = body["Data"]
    while _size(body) > MAX_BODY and data:
        largest = max(data, key=lambda k: len(json.dumps(data[k])))
        del data[largest]
        logger.warning("attribute dropped: the response would exceed 4096 bytes", attribute=largest)
    if _size(body) > MAX_BODY:
        body["Reason"] = body["Reason"][:64]
        body["PhysicalResourceId"] = body["PhysicalResourceId"][:1024]


class CustomResource(CfnResource):
    """Dispatches Create/Update/Delete to registered functions; exactly one response per request."""

    _event: dict[str, Any]
    _context: Any
    _timer: threading.Timer | None
    _response_url: str
    _sam_local: str | None
    _ssl_verify: Any
    _sleep_on_delete: int
    RequestType: str

    def __init__(self, *, timeout_margin: float = 8.0, sender: Callable[..., bool] = send_response) -> None:
        # CfnResource.__init__ is not called: see the module docstring. These are the attributes
        # crhelper's request path reads (tests/unit/test_cfn.py checks they match the base's).
        self._sleep_on_delete = 0
        self._create_func = None
        self._update_func = None
        self._delete_func = None
        self._poll_create_func = None
        self._poll_update_func = None
        self._poll_delete_func = None
        self._timer = None
        self._init_failed = None
        self._json_logging = False
        self._log_level = "INFO"
        self._boto_level = "ERROR"
        self._send_response = False
        self._polling_interval = 2
        self.Status = ""
        self.Reason = ""
        self.PhysicalResourceId = ""
        self.StackId = ""
        self.RequestId = ""
        self.LogicalResourceId = ""
        self.Data = {}
        self.NoEcho = False
        self._event = {}
        self._context = None
        self._response_url = ""
        self._sam_local = os.getenv("AWS_SAM_LOCAL")
        self._region = os.getenv("AWS_REGION")
        self._ssl_verify = None
        self.timeout_margin = timeout_margin
        self.sender = sender
        self.last_response: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._responded = False
        self._deadline: float | None = None

    @property
    def responded(self) -> bool:
        return self._responded

    def answered_before(self) -> None:
        """This request was answered by an earlier delivery: send nothing for it now."""
        with self._lock:
            self._responded = True

    def __call__(self, event: Any, context: Any) -> None:
        self.last_response = None
        self._responded = False
        self._deadline = None
        problem = self._malformed(event)
        if problem is not None:
            self._reject(event, problem)
            return
        # crhelper's polling keys (CrHelperPoll, CrHelperData, ...) are for its polling mode, which
        # rolekeeper does not use: a request carrying them must not skip rolekeeper or set its Data.
        super().__call__({k: v for k, v in event.items() if not k.startswith("CrHelper")}, context)
        # The deadline answer is sent from the timer's thread; Lambda freezes the environment once
        # the handler returns, so wait (bounded by the deadline) for that send to finish.
        timer = self._timer
        if timer is not None and timer.is_alive():
            remaining = (self._deadline - time.monotonic()) if self._deadline else 1.0
            timer.join(timeout=max(remaining, 0.0))

    @staticmethod
    def _malformed(event: Any) -> str | None:
        if not isinstance(event, dict):
            return "the event is not a CloudFormation custom resource request"
        for key in REQUIRED:
            if not isinstance(event.get(key), str) or not event[key]:
                return f"the request has no {key}"
        if event["RequestType"] not in REQUEST_TYPES:
            return f"RequestType must be one of {', '.join(REQUEST_TYPES)}"
        if not _url_allowed(event["ResponseURL"]):
            return "ResponseURL must be an https URL"
        if event["RequestType"] != "Create" and not isinstance(event.get("PhysicalResourceId"), str):
            article = "an" if event["RequestType"] == "Update" else "a"
            return f"{article} {event['RequestType']} request must carry PhysicalResourceId"
        if not isinstance(event.get("ResourceProperties", {}), dict):
            return "ResourceProperties must be an object"
        return None

    def _reject(self, event: Any, problem: str) -> None:
        event = event if isinstance(event, dict) else {}
        self._event = event
        self.Status = FAILED
        self.Data = {}
        self.StackId = str(event.get("StackId", ""))
        self.RequestId = str(event.get("RequestId", ""))
        self.LogicalResourceId = str(event.get("LogicalResourceId", ""))
        self.PhysicalResourceId = str(
            event.get("PhysicalResourceId") or f"rolekeeper-rejected-{self.RequestId[:36]}"
        )
        url = event.get("ResponseURL")
        self._response_url = url if isinstance(url, str) and _url_allowed(url) else ""
        logger.error("malformed request", problem=problem)
        self._send(FAILED, short_reason(f"Malformed request: {problem}"))

    # crhelper hooks -------------------------------------------------------------------------------

    def _log_setup(self, event: Any, context: Any) -> None:
        """Powertools' logger is configured by the handler; the root logger is left alone."""

    def _wait_for_cwlogs(self, sleep: Any = None) -> None:
        """No sleep on Delete: logs reach CloudWatch without it."""

    def _set_timeout(self) -> None:
        remaining = self._context.get_remaining_time_in_millis() / 1000.0
        self._deadline = time.monotonic() + remaining
        self._timer = threading.Timer(max(remaining - self.timeout_margin, 0.1), self._timeout)
        self._timer.daemon = True
        self._timer.start()

    def _timeout(self) -> None:
        logger.error("about to time out; answering FAILED")
        self._send(
            FAILED, "rolekeeper ran out of time waiting for AWS (see its log); retry the stack operation"
        )

    def _send(self, status: str | None = None, reason: str = "", send_response: Any = None) -> None:
        with self._lock:
            if self._responded:
                logger.warning("a response was already sent for this request; not sending another")
                return
            self._responded = True
        body = {
            "Status": status or self.Status,
            "PhysicalResourceId": str(
                self.PhysicalResourceId
                or self._event.get("PhysicalResourceId")
                or f"rolekeeper-failed-{self.RequestId[:36]}"
            ),
            "StackId": self.StackId,
            "RequestId": self.RequestId,
            "LogicalResourceId": self.LogicalResourceId,
            "Reason": short_reason(reason if status else self.Reason),
            "Data": {k: str(v) for k, v in (self.Data or {}).items()}
            if (status or self.Status) != FAILED
            else {},
            "NoEcho": self.NoEcho,
        }
        _fit(body)
        self.last_response = body
        logger.info(
            "responding",
            status=body["Status"],
            reason=body["Reason"],
            physical_resource_id=body["PhysicalResourceId"],
        )
        if not self._response_url:
            logger.error("no usable ResponseURL; the response cannot be delivered")
            return
        if self._sam_local:
            # sam local invoke: the ResponseURL in events/ is not a real pre-signed URL.
            print(json.dumps(body, indent=2))
            return
        deadline = self._deadline - 0.5 if self._deadline else None
        self.sender(self._response_url, body, deadline=deadline)
