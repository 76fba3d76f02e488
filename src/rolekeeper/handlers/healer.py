from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parser import ValidationError, parse

from rolekeeper.aws.notify import notify
from rolekeeper.aws.registry import Registry
from rolekeeper.config import settings
from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.events import IAM_EVENTS, KMS_EVENTS, ROLE_EVENTS, CloudTrailEvent, ScheduledEvent
from rolekeeper.healing.service import Healer, Result
from rolekeeper.observability import logger, metrics

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

METRIC_FOR = {
    "healed": "Healed",
    "ignored": "EventIgnored",
    "suppressed": "HealSuppressed",
    "reported": "HealReported",
    "failed": "HealFailed",
}


@cache
def healer() -> Healer:
    config = settings()
    return Healer(config, Registry(config.registry_table_name))


def _record(result: Result, kind: str) -> None:
    log = logger.warning if result.outcome in ("suppressed", "failed") else logger.info
    log("heal " + result.outcome, target=result.name, kind=kind, detail=result.detail, changes=result.changes)
    if name := METRIC_FOR.get(result.outcome):
        metrics.add_metric(name=f"{name}{kind.title()}" if name == "Healed" else name, unit="Count", value=1)


def _to_org(results: list[tuple[Result, str]], account: str, trigger: dict[str, str]) -> None:
    """Heals, suppressions and failures to the organization's bus (OrgEventBusArn), if set."""
    from rolekeeper.aws import org_events

    if not org_events.bus_arn():
        return
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    org_events.publish(
        org_events.detail(
            r.outcome, kind, r.name, r.detail, r.changes, account=account, region=region, trigger=trigger
        )
        for r, kind in results
    )


def _on_change(event: CloudTrailEvent) -> Result:
    detail = event.detail
    if detail.event_name in KMS_EVENTS:
        grant_id = detail.parameter("grantId")
        if not grant_id:
            return Result("ignored", detail.event_name, "no grant id in the record")
        result = healer().heal_grant(grant_id, key_arn=detail.key_arn)
        _record(result, "grant")
        return result
    role_name = detail.parameter("roleName")
    if detail.event_name == "DeleteInstanceProfile":
        # rolekeeper names every instance profile after its role.
        role_name = detail.parameter("instanceProfileName")
    if not role_name:
        return Result("ignored", detail.event_name, "no role named in the record")
    slr_deleted = detail.event_name == "DeleteServiceLinkedRole"
    result = healer().heal_role(
        role_name,
        aspects=ROLE_EVENTS[detail.event_name],
        # DetachRolePolicy names the policy: only that one is checked (one list, one attach).
        policy_arn=detail.parameter("policyArn") if detail.event_name == "DetachRolePolicy" else None,
        slr_deleted=slr_deleted,
        # Real records often lack responseElements.deletionTaskId: the healer then waits for the
        # role to disappear instead.
        deletion_task_id=detail.parameter("deletionTaskId") if slr_deleted else None,
        requested_at=_event_time(event),
    )
    _record(result, "role")
    return result


def _event_time(event: CloudTrailEvent) -> datetime | None:
    """When the call was made: CloudTrail's eventTime, else EventBridge's time."""
    raw = (event.detail.model_extra or {}).get("eventTime")
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return event.time if event.time.tzinfo is not None else event.time.replace(tzinfo=UTC)


@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_metric(name="EventReceived", unit="Count", value=1)
    account = Scope.from_arn(context.invoked_function_arn).account
    if isinstance(event, dict) and event.get("detail-type") == "Scheduled Event":
        try:
            parse(event=event, model=ScheduledEvent)
        except ValidationError:
            return _drop("malformed scheduled event", event)
        logger.set_correlation_id(str(event.get("id")))
        results = healer().reconcile_all()
        for result in results:
            if result.outcome != "healthy":
                _record(result, "object")
        counts = Counter(r.outcome for r in results)
        logger.info("reconcile finished", outcomes=dict(counts))
        _to_org(
            [(r, "object") for r in results if r.outcome != "healthy"],
            account,
            {"type": "schedule", "eventId": str(event.get("id"))},
        )
        failed = [r for r in results if r.outcome == "failed"]
        if failed:
            notify(
                settings().notification_topic_arn,
                "rolekeeper reconcile failures",
                "\n".join(f"{r.name}: {r.detail}" for r in failed),
            )
            raise RuntimeError(f"reconcile failed for {len(failed)} object(s): {failed[0].name}")
        return {"outcome": "reconciled", **counts}
    try:
        change = parse(event=event, model=CloudTrailEvent)
    except (ValidationError, TypeError, ValueError):
        return _drop("malformed or unexpected event", event)
    logger.set_correlation_id(change.detail.event_id)
    if change.account != account or (change.detail.recipient_account_id not in (None, account)):
        return _drop("event for another account", event)
    if change.detail.error_code:
        return _drop("failed call, nothing changed", event)
    if change.detail.event_name not in IAM_EVENTS | KMS_EVENTS:
        return _drop("event name not watched", event)
    trigger = {
        "type": "cloudtrail",
        "eventName": change.detail.event_name,
        "eventId": change.detail.event_id,
    }
    try:
        result = _on_change(change)
    except Exception as error:
        # Lambda retries (twice), then FailureQueue: one event per failed attempt.
        name = change.detail.parameter("roleName") or change.detail.parameter("grantId") or ""
        failure = Result("failed", name, f"{type(error).__name__}: {error}")
        _to_org([(failure, "grant" if change.detail.event_name in KMS_EVENTS else "role")], account, trigger)
        raise
    kind = "grant" if change.detail.event_name in KMS_EVENTS else "role"
    _to_org([(result, kind)], account, trigger)
    return {"outcome": result.outcome, "target": result.name, "detail": result.detail}


def _drop(why: str, event: Any) -> dict[str, Any]:
    """Logged and dropped without raising: a retry would not make it any better."""
    summary = (
        {k: event.get(k) for k in ("id", "source", "detail-type", "account")}
        if isinstance(event, dict)
        else {}
    )
    logger.warning("event dropped", reason=why, event_summary=summary)
    metrics.add_metric(name="EventIgnored", unit="Count", value=1)
    return {"outcome": "dropped", "detail": why}
