"""The CloudFormation custom resource protocol: every request gets exactly one answer.

    event -> shape checked (malformed: FAILED where the URL allows, nothing else)
          -> Request (identity from the function) -> validated (no AWS call)
          -> confirmed by CloudFormation (refused: FAILED, nothing written anywhere)
          -> noted in the registry (a redelivery of an answered request: no answer; of a
             decided but undelivered one: that answer)
          -> the work, whose last registry write carries the answer; the deadline decides FAILED
             `timeout_margin` seconds before Lambda's: whichever is decided first is the answer,
             atomically, and a late finish is undone
          -> the answer in force, PUT once to the ResponseURL, its delivery noted.

rolekeeper speaks the protocol itself rather than through crhelper: crhelper 2.x sends its
response with a function that never reads the HTTP status (so a refused PUT looks delivered),
retries an unreachable URL without bound, speaks only HTTPS, and answers FAILED from its own
timer 0.5 s before the deadline with no way to make that decision atomic with the registry's
commit; its public surface offers no hook for any of these (see docs/design-notes.md).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import clients, responses
from rolekeeper.aws.registry import Delivery, Registry
from rolekeeper.config import Settings
from rolekeeper.domain.errors import AnsweredElsewhere, RolekeeperError, Unconfirmed
from rolekeeper.domain.records import object_key
from rolekeeper.domain.validation import validate
from rolekeeper.observability import metrics
from rolekeeper.provisioning import confirm, service
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request, Response
from rolekeeper.retry import Clock

logger = Logger(child=True)

SUCCESS, FAILED = "SUCCESS", "FAILED"
REQUEST_TYPES = ("Create", "Update", "Delete")
REQUIRED = ("RequestType", "ResponseURL", "StackId", "RequestId", "LogicalResourceId", "ResourceType")
MAX_REASON = 256
# CloudFormation rejects a response body over 4096 bytes (the resource then waits out its timeout).
MAX_BODY = 4096
OUT_OF_TIME = "rolekeeper ran out of time waiting for AWS (see its log); retry the stack operation"


def short_reason(reason: str) -> str:
    """CloudFormation keeps at most 256 characters of Reason; keep the start, where the fix is named."""
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def malformed(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "the event is not a CloudFormation custom resource request"
    for key in REQUIRED:
        if not isinstance(event.get(key), str) or not event[key]:
            return f"the request has no {key}"
    if event["RequestType"] not in REQUEST_TYPES:
        return f"RequestType must be one of {', '.join(REQUEST_TYPES)}"
    if not responses.url_allowed(event["ResponseURL"]):
        return "ResponseURL must be an https URL"
    if event["RequestType"] != "Create" and not isinstance(event.get("PhysicalResourceId"), str):
        kind = event["RequestType"]
        return f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind} request must carry PhysicalResourceId"
    if not isinstance(event.get("ResourceProperties", {}), dict):
        return "ResourceProperties must be an object"
    return None


def body(
    event: dict[str, Any], status: str, *, reason: str = "", response: Response | None = None
) -> dict[str, Any]:
    """The response body: string attributes only, within 4096 bytes (the largest attributes are
    dropped first, logged), Reason at most 256 characters."""
    request_id = str(event.get("RequestId", ""))
    physical_id = (response.physical_id if response else "") or str(
        event.get("PhysicalResourceId") or f"rolekeeper-failed-{request_id[:36]}"
    )
    data: dict[str, str] = {
        k: str(v) for k, v in (response.data if response and status == SUCCESS else {}).items()
    }
    answer: dict[str, Any] = {
        "Status": status,
        "PhysicalResourceId": physical_id,
        "StackId": str(event.get("StackId", "")),
        "RequestId": request_id,
        "LogicalResourceId": str(event.get("LogicalResourceId", "")),
        "Reason": short_reason(reason),
        "Data": data,
        "NoEcho": False,
    }
    while _size(answer) > MAX_BODY and data:
        largest = max(data, key=lambda k: len(json.dumps(data[k])))
        del data[largest]
        logger.warning("attribute dropped: the response would exceed 4096 bytes", attribute=largest)
    if _size(answer) > MAX_BODY:
        answer["Reason"] = answer["Reason"][:64]
        answer["PhysicalResourceId"] = answer["PhysicalResourceId"][:1024]
    return answer


def _size(answer: dict[str, Any]) -> int:
    return len(json.dumps(answer).encode())


def reason_of(error: Exception) -> str:
    """Every failure as a short Reason: rolekeeper's own say what to fix; AWS's name the call."""
    if isinstance(error, RolekeeperError):
        return str(error)
    if (failure := clients.failure_of(error)) is not None:
        return failure
    return f"rolekeeper could not complete the request ({type(error).__name__}: {error})"


Sender = Callable[[str, dict[str, Any], Clock], int]
Work = Callable[[Context, Request], Response]


def _put(url: str, answer: dict[str, Any], clock: Clock) -> int:
    return responses.put(url, answer, clock=clock)


@dataclass
class Answering:
    """Answers custom resource requests for one execution environment."""

    settings: Settings
    registry: Registry
    clock: Clock
    sender: Sender = _put
    timeout_margin: float = 8.0
    converge: Work = service.converge  # Create and Update
    delete: Work = service.delete

    def __call__(self, event: Any, context: Any) -> dict[str, Any] | None:
        """Handle one invocation; returns the answer sent (None: none was due)."""
        problem = malformed(event)
        if problem is not None:
            logger.error("malformed request", problem=problem)
            answer = body(
                event if isinstance(event, dict) else {}, FAILED, reason=f"Malformed request: {problem}"
            )
            if not isinstance(event, dict):
                return answer  # nowhere to send it: the invocation's result is all there is
            url = event.get("ResponseURL")
            return _Invocation(self, event, context).deliver(answer, url if isinstance(url, str) else "")
        return _Invocation(self, event, context).run()


class _Invocation:
    """One request in one invocation: at most one answer sent, by the work or by the deadline."""

    def __init__(self, answering: Answering, event: dict[str, Any], context: Any) -> None:
        self.a = answering
        self.event = {k: v for k, v in event.items() if not str(k).startswith("CrHelper")}
        self.context = context
        self.request_id = str(event.get("RequestId", ""))
        remaining = context.get_remaining_time_in_millis() / 1000.0
        self.deadline = answering.clock.now() + remaining
        # The work stops waiting where the deadline's answer begins.
        self.clock = answering.clock.until(self.deadline - answering.timeout_margin)
        self.lock = threading.Lock()
        self.sent: dict[str, Any] | None = None
        self.noted = False  # the request is noted in the registry (its answer is recorded there)
        self.answer_written = False  # the work's last registry write carried the answer
        self.response: Response | None = None
        self.http_status: int | None = None  # what CloudFormation's bucket answered the PUT
        self.timer: threading.Timer | None = None

    # --- the request's life --------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        try:
            request = self._request()
            validate(request.resource_type, request.properties, self.a.settings, request.scope)
            if not self.a.settings.sam_local:
                confirm.response_url(
                    self.event["ResponseURL"],
                    request.scope,
                    request.stack_id,
                    request.logical_id,
                    request.request_id,
                    local=self.a.settings.local_response_urls,
                )
            if self.a.settings.verify_requests and service.acts_on(request):
                confirm.confirm(
                    request.request_type,
                    request.resource_type,
                    request.stack_id,
                    request.logical_id,
                    request.physical_id,
                    object_key,
                )
        except Exception as error:
            # Refused before anything was written: the answer is not recorded either (a request
            # nobody proved genuine leaves no trace in the registry). A redelivery of a request
            # answered before is refused too once CloudFormation moved on: it gets no second answer.
            if isinstance(error, Unconfirmed) and self._answered_before():
                logger.warning("request answered before (a redelivery); no second answer")
                metrics.add_metric(name="RequestRedelivered", unit="Count", value=1)
                return None
            return self._refused(error)
        delivery = self._note()
        if delivery.delivery in (Delivery.BUSY, Delivery.DONE):
            logger.warning("request answered before or being answered (a redelivery); no second answer")
            metrics.add_metric(name="RequestRedelivered", unit="Count", value=1)
            return None
        if delivery.delivery == Delivery.RESUME:
            logger.info("answer decided by an invocation that stopped before sending it; sending it")
            sent = self.deliver(delivery.answer)
            self._settle(delivery.intent, delivery.answer)
            return sent
        self._start_timer()
        try:
            answer = self._work(request)
        finally:
            if self.timer is not None:
                self.timer.cancel()
        sent = self.deliver(answer)
        if self.timer is not None and self.timer.is_alive():
            # The deadline's answer is on its way from the timer's thread: Lambda freezes the
            # environment once the handler returns, so wait for it (bounded by the deadline).
            self.timer.join(timeout=max(self.deadline - self.a.clock.now(), 0.0))
        self._settle(
            self.response.intent if self.response else None,
            self.sent or answer,
            known=self.response.record if self.response else None,
        )
        return sent or self.sent

    def _settle(self, intent: Any, answer: dict[str, Any], *, known: Any = None) -> None:
        """The request's second phase: what it asked that takes away happens now that its answer's
        delivery is known (accepted by CloudFormation's bucket), or is withdrawn. known: the
        object as the work's last write left it (None: read it)."""
        if intent is None or answer.get("Status") != SUCCESS:
            return
        accepted = self.a.settings.sam_local or (
            self.http_status is not None and 200 <= self.http_status < 300
        )
        ctx = Context(self.a.settings, self.a.registry, self.a.clock.until(self.deadline - 1.0))
        try:
            service.settle(ctx, intent, accepted=accepted, known=known)
        except Exception:
            # The answer is out; what is left is the schedule's to finish (intents.finish_abandoned).
            logger.exception("the request's change is not settled yet; the schedule finishes it")

    def _request(self) -> Request:
        event = self.event
        return Request(
            request_type=event["RequestType"],
            resource_type=event["ResourceType"],
            stack_id=event["StackId"],
            logical_id=event["LogicalResourceId"],
            properties=event.get("ResourceProperties") or {},
            old_properties=event.get("OldResourceProperties"),
            physical_id=event.get("PhysicalResourceId"),
            request_id=self.request_id or uuid.uuid4().hex,
            identity=confirm.identity_for(
                self.context.invoked_function_arn, event["StackId"], sam_local=self.a.settings.sam_local
            ),
        )

    def _answered_before(self) -> bool:
        if self.a.settings.sam_local or not self.request_id:
            return False
        try:
            return self.a.registry.requests.known(self.request_id) != Delivery.NEW
        except Exception:
            logger.exception("could not read the request's record; answering it")
            return False

    def _note(self) -> Any:
        from rolekeeper.aws.registry import Begun

        if self.a.settings.sam_local:
            return Begun(Delivery.NEW)
        try:
            begun = self.a.registry.requests.begin(
                self.request_id,
                now=self.a.clock.now(),
                until=self.deadline,
                invocation=str(getattr(self.context, "aws_request_id", "") or ""),
            )
        except Exception:
            # A registry that cannot be read must not cost the request its one answer: it is
            # answered (at worst a second time, for a redelivery).
            logger.exception("could not note the request in the registry; answering it")
            return Begun(Delivery.NEW)
        self.noted = True
        return begun

    def _work(self, request: Request) -> dict[str, Any]:
        ctx = Context(self.a.settings, self.a.registry, self.clock, answer=self._answer_items)
        try:
            work = self.a.delete if request.request_type == "Delete" else self.a.converge
            response = self.response = work(ctx, request)
            metrics.add_metric(name="RequestSucceeded", unit="Count", value=1)
            answer = body(self.event, SUCCESS, response=response)
            # Decided already when the answer went with the request's last registry write.
            return answer if self.answer_written else self._decide(answer)
        except AnsweredElsewhere:
            logger.warning("the deadline answered first; what this request did is undone")
            return self._decide(body(self.event, FAILED, reason=OUT_OF_TIME))
        except Exception as error:
            return self._failed(error)

    def _answer_items(self, response: Response) -> list[Any]:
        """The answer joins the request's last registry write (claims.py, through ctx.answer)."""
        if not self.noted:
            return []
        answer = body(self.event, SUCCESS, response=response)
        self.answer_written = (
            True  # the write that carries it is the work's last: if it fails, so does the work
        )
        return [
            self.a.registry.requests.answer_write(
                self.request_id, answer, now=self.a.clock.now(), intent=response.intent
            )
        ]

    def _decide(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The answer in force: this one, unless one was decided before (then that one)."""
        if not self.noted:
            return answer
        try:
            return self.a.registry.requests.decide(self.request_id, answer, now=self.a.clock.now())
        except Exception:
            logger.exception("could not record the answer; sending it")
            return answer

    # --- failures ------------------------------------------------------------------------------

    def _refused(self, error: Exception) -> dict[str, Any] | None:
        if isinstance(error, RolekeeperError):
            logger.warning("request refused", reason=str(error))
        else:
            logger.error("request could not be checked", reason=reason_of(error), exc_info=error)
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        return self.deliver(body(self.event, FAILED, reason=reason_of(error)))

    def _failed(self, error: Exception) -> dict[str, Any]:
        if isinstance(error, RolekeeperError):
            logger.warning("request refused", reason=str(error))
        else:
            logger.error("request failed", operation=clients.operation_of(error), exc_info=error)
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        return self._decide(body(self.event, FAILED, reason=reason_of(error)))

    # --- the deadline and the one answer ---------------------------------------------------------

    def _start_timer(self) -> None:
        wait = max(self.deadline - self.a.timeout_margin - self.a.clock.now(), 0.1)
        self.timer = threading.Timer(wait, self._at_deadline)
        self.timer.daemon = True
        self.timer.start()

    def _at_deadline(self) -> None:
        logger.error("about to time out; answering FAILED unless the work's answer was decided")
        self.deliver(self._decide(body(self.event, FAILED, reason=OUT_OF_TIME)))

    def deliver(self, answer: dict[str, Any], url: str | None = None) -> dict[str, Any] | None:
        """Send the answer unless this invocation sent one already; note its delivery."""
        with self.lock:
            if self.sent is not None:
                return None
            self.sent = answer
        logger.info(
            "responding",
            status=answer["Status"],
            reason=answer["Reason"],
            physical_resource_id=answer["PhysicalResourceId"],
        )
        url = self.event.get("ResponseURL", "") if url is None else url
        if not url or not responses.url_allowed(url):
            logger.error("no usable ResponseURL; the answer cannot be delivered")
            return answer
        if self.a.settings.sam_local:
            # sam local invoke: the ResponseURL in events/ is not a real pre-signed URL.
            print(json.dumps(answer, indent=2))
            return answer
        status = self.http_status = self.a.sender(url, answer, self.a.clock.until(self.deadline - 0.5))
        if self.noted:
            try:
                self.a.registry.requests.delivered(
                    self.request_id, http_status=status, now=self.a.clock.now()
                )
            except Exception:
                logger.exception("could not note the answer as delivered")
        return answer
