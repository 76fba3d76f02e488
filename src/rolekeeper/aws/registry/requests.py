"""What rolekeeper answered each CloudFormation request, so every request gets exactly one answer.

Lambda may deliver an asynchronous event more than once (and retries it after a function error
or a timeout); CloudFormation's RequestId tells a redelivery from a new request. Only a request
CloudFormation confirmed is written here (an invoke nobody can prove genuine leaves nothing).

A request's item: who is working on it until when (busy_by, busy_until: a redelivery while that
invocation lives gets no response; one after it died takes over), the answer once decided (in
the same transaction as the request's last registry write, or by the deadline: whichever comes
first wins, atomically), and when the answer was delivered (answered_at, with the HTTP status
CloudFormation's bucket gave). A redelivery of a decided but undelivered answer sends that
answer; one of a delivered answer sends nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rolekeeper.aws.registry.items import REQUEST, decode_item, key_of
from rolekeeper.aws.registry.table import Refused, Table, Write
from rolekeeper.domain.records import Intent

# A request item outlives any redelivery: Lambda keeps retrying an async event for at most 6 hours.
REQUEST_TTL_SECONDS = 7 * 24 * 3600


class Delivery(StrEnum):
    NEW = "new"  # work on it
    RESUME = "resume"  # decided by an invocation that died before delivering: send that answer
    BUSY = "busy"  # another invocation is working on it: send nothing
    DONE = "done"  # answered before: send nothing


@dataclass(frozen=True)
class Begun:
    delivery: Delivery
    answer: dict[str, Any] = field(default_factory=dict)
    intent: Intent | None = None


def request_key(request_id: str) -> Mapping[str, Any]:
    return key_of(f"REQUEST#{request_id}", REQUEST)


class Requests:
    def __init__(self, table: Table) -> None:
        self.table = table

    def begin(self, request_id: str, *, now: float, until: float, invocation: str = "") -> Begun:
        """Note that this invocation works on the request until `until` (its deadline)."""
        me = invocation or uuid.uuid4().hex
        try:
            item = self.table.write(
                Write(
                    key=request_key(request_id),
                    update=(
                        "SET started_at = if_not_exists(started_at, :now), expires_at = :ttl, "
                        "busy_until = :until, busy_by = :me ADD attempts :one"
                    ),
                    # busy_by: this invocation's own earlier attempt, whose answer was lost, is not another.
                    condition=(
                        "attribute_not_exists(answered_at) AND "
                        "(attribute_not_exists(busy_until) OR busy_until < :now OR busy_by = :me)"
                    ),
                    values={
                        ":now": int(now),
                        ":until": int(until),
                        ":me": me,
                        ":ttl": int(now) + REQUEST_TTL_SECONDS,
                        ":one": 1,
                    },
                ),
                returns="ALL_NEW",
            )
        except Refused as refused:
            old = decode_item(refused.old) if refused.old else {}
            return Begun(Delivery.DONE if "answered_at" in old else Delivery.BUSY)
        values = decode_item(item)
        answer, intent = values.get("answer"), values.get("intent")
        if not isinstance(answer, dict):
            return Begun(Delivery.NEW)
        where = (
            Intent(str(intent["key"]), str(intent["sk"]), request_id) if isinstance(intent, dict) else None
        )
        return Begun(Delivery.RESUME, dict(answer), where)

    def known(self, request_id: str) -> Delivery:
        """What the registry says of a request (a consistent read, no write): DONE when answered
        (or its answer decided), BUSY while an invocation works on it, NEW when never noted."""
        items = self.table.partition(f"REQUEST#{request_id}")
        item = decode_item(items[0]) if items else {}
        if "answered_at" in item or "answer" in item:
            return Delivery.DONE
        return Delivery.BUSY if item else Delivery.NEW

    def answer_write(
        self, request_id: str, answer: Mapping[str, Any], *, now: float, intent: Intent | None = None
    ) -> Write:
        """The answer, decided: one item of the request's last registry transaction, which it
        cancels when another answer (the deadline's FAILED) was decided first. intent: where the
        request left its pending change (settled once the answer's delivery is known)."""
        values: dict[str, Any] = {":answer": dict(answer), ":now": int(now)}
        update = "SET answer = :answer, decided_at = :now"
        if intent is not None:
            update += ", intent = :intent"
            values[":intent"] = {"key": intent.key, "sk": intent.sk}
        return Write(
            key=request_key(request_id),
            update=update,
            condition="attribute_not_exists(answer)",
            values=values,
        )

    def outcome(self, request_id: str) -> tuple[dict[str, Any], Intent | None, int | None, int]:
        """(The answer decided, where its intent is, the HTTP status of its delivery (None: not
        known), until when an invocation works on it) as the registry says (a consistent read)."""
        items = self.table.partition(f"REQUEST#{request_id}")
        item = decode_item(items[0]) if items else {}
        intent = item.get("intent")
        where = (
            Intent(str(intent["key"]), str(intent["sk"]), request_id) if isinstance(intent, dict) else None
        )
        status = item.get("http_status")
        return (
            dict(item.get("answer") or {}),
            where,
            int(status) if status is not None else None,
            int(item.get("busy_until", 0)),
        )

    def decide(self, request_id: str, answer: Mapping[str, Any], *, now: float) -> dict[str, Any]:
        """Decide the answer unless one was decided already; returns the answer in force."""
        try:
            self.table.write(self.answer_write(request_id, answer, now=now))
        except Refused as refused:
            decided = decode_item(refused.old).get("answer") if refused.old else None
            if isinstance(decided, dict):
                return dict(decided)
            raise
        return dict(answer)

    def delivered(self, request_id: str, *, http_status: int, now: float) -> None:
        """The answer reached CloudFormation's bucket (or was refused: http_status says)."""
        self.table.write(
            Write(
                key=request_key(request_id),
                update="SET answered_at = :now, http_status = :status",
                values={":now": int(now), ":status": http_status},
            )
        )
