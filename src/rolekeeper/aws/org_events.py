"""One view of every heal in the organization: heals, suppressions and failures as EventBridge
events to the bus named by ORG_EVENT_BUS_ARN (template parameter OrgEventBusArn).

Event: source "rolekeeper", detail-type one of DETAIL_TYPES' values, detail (schema version 1):

    {"schemaVersion": "1", "account": "111122223333", "region": "eu-west-1",
     "outcome": "healed" | "suppressed" | "failed" | "reported",
     "object": {"kind": "role" | "grant" | "object", "name": "ecsInstanceRole"},
     "summary": "role missing", "changes": ["role created", ...],
     "trigger": {"type": "cloudtrail", "eventName": "DeleteRole", "eventId": "..."}
               | {"type": "schedule", "eventId": "..."},
     "healMode": "heal" | "report", "time": "2026-11-22T20:00:00Z"}

"object" kind is "object" for what the scheduled reconcile found (its name is the registry key,
or the role name). Sending is best effort, as notify(): it never turns a heal into a failure.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import clients as aws

logger = Logger(child=True)

SOURCE = "rolekeeper"
SCHEMA_VERSION = "1"
DETAIL_TYPES = {
    "healed": "rolekeeper heal",
    "suppressed": "rolekeeper heal suppressed",
    "failed": "rolekeeper heal failed",
    "reported": "rolekeeper heal reported",
}
PUT_EVENTS_BATCH = 10  # PutEvents takes at most 10 entries per call


def bus_arn() -> str | None:
    return os.environ.get("ORG_EVENT_BUS_ARN") or None


def detail(
    outcome: str,
    kind: str,
    name: str,
    summary: str,
    changes: list[str],
    *,
    account: str,
    region: str,
    trigger: dict[str, str],
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    moment = now or datetime.datetime.now(datetime.UTC)
    return {
        "schemaVersion": SCHEMA_VERSION,
        "account": account,
        "region": region,
        "outcome": outcome,
        "object": {"kind": kind, "name": name},
        "summary": summary,
        "changes": list(changes),
        "trigger": trigger,
        "healMode": os.environ.get("HEAL_MODE", "heal"),
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def entries(details: Iterable[dict[str, Any]], bus: str) -> list[dict[str, Any]]:
    return [
        {
            "Source": SOURCE,
            "DetailType": DETAIL_TYPES[d["outcome"]],
            "Detail": json.dumps(d, sort_keys=True),
            "EventBusName": bus,
            "Resources": [],
        }
        for d in details
        if d["outcome"] in DETAIL_TYPES
    ]


def publish(details: Iterable[dict[str, Any]], bus: str | None = None) -> int:
    """Sends the heal events to the organization's bus (if one is set); returns how many it took."""
    bus = bus or bus_arn()
    if not bus:
        return 0
    pending = entries(details, bus)
    if not pending:
        return 0
    # The bus may be in another region (and account): call EventBridge in the bus's region.
    parts = bus.split(":")
    region = parts[3] if len(parts) > 5 else None
    home = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    sent = 0
    try:
        client = aws.client("events", None if region in (None, home) else region)
        for start in range(0, len(pending), PUT_EVENTS_BATCH):
            batch = pending[start : start + PUT_EVENTS_BATCH]
            response = client.put_events(Entries=batch)
            failed = [e for e in response.get("Entries", []) if e.get("ErrorCode")]
            sent += len(batch) - len(failed)
            for entry in failed:
                logger.warning(
                    "heal event not accepted by the organization's bus",
                    bus=bus,
                    error_code=entry.get("ErrorCode"),
                    error_message=entry.get("ErrorMessage"),
                )
    except Exception:  # the organization's view must never turn a heal into a failure
        logger.exception("heal events not sent to the organization's bus", bus=bus)
    return sent
