"""What the healer does with what EventBridge delivers: a CloudTrail record of an IAM or KMS
call (heal what it names) or the schedule (reconcile everything), reported to the log, metrics,
an optional notice and the organization's bus."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import org_events
from rolekeeper.aws.notify import notify
from rolekeeper.domain.events import IAM_EVENTS, KMS_EVENTS, ROLE_EVENTS, CloudTrailEvent
from rolekeeper.healing.schedule import reconcile_all
from rolekeeper.healing.service import Healer, Outcome, Result
from rolekeeper.observability import metrics

logger = Logger(child=True)

METRIC_FOR = {
    Outcome.HEALED: "Healed",
    Outcome.IGNORED: "EventIgnored",
    Outcome.SUPPRESSED: "HealSuppressed",
    Outcome.REPORTED: "HealReported",
    Outcome.FAILED: "HealFailed",
}


def on_schedule(healer: Healer, *, account: str, event_id: str) -> dict[str, Any]:
    done = reconcile_all(healer)
    for result in done.notable:
        _record(result, "object")
    counts = dict(done.counts)
    cycle = done.cycle
    where: dict[str, Any] = {
        "checked": done.checked,
        "resumed_after": done.resumed_after or None,
        "cycle_runs": cycle.runs if cycle else 0,
        "cycle_checked": cycle.checked if cycle else done.checked,
    }
    if done.complete:
        logger.info("reconcile finished", outcomes=counts, **where)
    else:
        # The next run resumes after done.position (the registry's reconcile cursor).
        logger.warning(
            "reconcile stopped early; the next run resumes where it stopped",
            why=done.stopped_why,
            outcomes=counts,
            stopped_after=done.position or None,
            **where,
        )
        metrics.add_metric(name="ReconcileStoppedEarly", unit="Count", value=1)
    _to_org(healer, [(r, "object") for r in done.notable], account, {"type": "schedule", "eventId": event_id})
    failed = [r for r in done.notable if r.outcome == Outcome.FAILED]
    if failed:
        notify(
            healer.settings.notification_topic_arn,
            "rolekeeper reconcile failures",
            "\n".join(f"{r.name}: {r.detail}" for r in failed),
        )
        raise RuntimeError(f"reconcile failed for {len(failed)} object(s): {failed[0].name}")
    return {
        "outcome": "reconciled" if done.complete else "stopped-early",
        **counts,
        "checked": done.checked,
        "complete": done.complete,
    }


def on_change(healer: Healer, change: CloudTrailEvent, *, account: str) -> dict[str, Any]:
    detail = change.detail
    kind = "grant" if detail.event_name in KMS_EVENTS else "role"
    trigger = {"type": "cloudtrail", "eventName": detail.event_name, "eventId": detail.event_id}
    try:
        result = _heal(healer, change)
    except Exception as error:
        # Lambda retries (twice), then FailureQueue: one event per failed attempt.
        name = detail.parameter("roleName") or detail.parameter("grantId") or ""
        _to_org(
            healer,
            [(Result(Outcome.FAILED, name, f"{type(error).__name__}: {error}"), kind)],
            account,
            trigger,
        )
        raise
    _to_org(healer, [(result, kind)], account, trigger)
    return {"outcome": str(result.outcome), "target": result.name, "detail": result.detail}


def watched(change: CloudTrailEvent) -> bool:
    return change.detail.event_name in IAM_EVENTS | KMS_EVENTS


def _heal(healer: Healer, event: CloudTrailEvent) -> Result:
    detail = event.detail
    if detail.event_name in KMS_EVENTS:
        grant_id = detail.parameter("grantId")
        if not grant_id:
            return Result(Outcome.IGNORED, detail.event_name, "no grant id in the record")
        result = healer.heal_grant(grant_id, key_arn=detail.key_arn)
        _record(result, "grant")
        return result
    role_name = detail.parameter("roleName")
    if detail.event_name == "DeleteInstanceProfile":
        role_name = detail.parameter("instanceProfileName")  # rolekeeper names profiles after their role
    if not role_name:
        return Result(Outcome.IGNORED, detail.event_name, "no role named in the record")
    slr_deleted = detail.event_name == "DeleteServiceLinkedRole"
    result = healer.heal_role(
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


def _record(result: Result, kind: str) -> None:
    log = logger.warning if result.outcome in (Outcome.SUPPRESSED, Outcome.FAILED) else logger.info
    log(f"heal {result.outcome}", target=result.name, kind=kind, detail=result.detail, changes=result.changes)
    if name := METRIC_FOR.get(result.outcome):
        metrics.add_metric(name=f"{name}{kind.title()}" if name == "Healed" else name, unit="Count", value=1)


def _to_org(healer: Healer, results: list[tuple[Result, str]], account: str, trigger: dict[str, str]) -> None:
    """Heals, suppressions and failures to the organization's bus (OrgEventBusArn), if set."""
    settings = healer.settings
    if not settings.org_event_bus_arn:
        return
    org_events.publish(
        (
            org_events.detail(
                str(r.outcome),
                kind,
                r.name,
                r.detail,
                r.changes,
                account=account,
                region=settings.region,
                trigger=trigger,
                heal_mode=settings.heal_mode,
            )
            for r, kind in results
        ),
        settings.org_event_bus_arn,
    )
