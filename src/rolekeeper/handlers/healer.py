"""HealerFunction: IAM and KMS CloudTrail events and the schedule (healing.events)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parser import ValidationError, parse

from rolekeeper.aws.registry import Registry
from rolekeeper.config import settings
from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.events import CloudTrailEvent, ScheduledEvent
from rolekeeper.healing import events
from rolekeeper.healing.service import Healer
from rolekeeper.observability import logger, metrics
from rolekeeper.retry import Clock

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

_built: list[Healer] = []  # once per execution environment, on first use
_overrides: dict[str, Any] = {}
# The healer stops starting work this long before Lambda's deadline: what is under way is bounded
# by the same clock, and the reconcile's cursor, the log, metrics and notices still fit.
TIMEOUT_MARGIN = 10.0


def configure(**overrides: Any) -> None:
    """What this environment's healer is built with besides the settings (a clock: tests pass
    their own); rebuilt on next use. No overrides: back to the defaults."""
    _overrides.update(overrides) if overrides else _overrides.clear()
    _built.clear()


def healer() -> Healer:
    if not _built:
        config = _overrides.get("settings") or settings()
        clock = _overrides.get("clock") or Clock()
        _built.append(Healer(config, Registry(config.registry_table_name, clock=clock), clock))
    return _built[0]


def within(context: LambdaContext) -> Healer:
    """This environment's healer on a clock bounded by the invocation's deadline less the margin."""
    base = healer()
    deadline = base.clock.now() + context.get_remaining_time_in_millis() / 1000.0 - TIMEOUT_MARGIN
    clock = base.clock.until(deadline)
    return Healer(base.settings, Registry(base.settings.registry_table_name, clock=clock), clock)


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_metric(name="EventReceived", unit="Count", value=1)
    account = Scope.from_arn(context.invoked_function_arn).account
    if isinstance(event, dict) and event.get("detail-type") == "Scheduled Event":
        try:
            parse(event=event, model=ScheduledEvent)
        except ValidationError:
            return _drop("malformed scheduled event", event)
        return events.on_schedule(within(context), account=account, event_id=str(event.get("id")))
    try:
        change = parse(event=event, model=CloudTrailEvent)
    except (ValidationError, TypeError, ValueError):
        return _drop("malformed or unexpected event", event)
    logger.set_correlation_id(change.detail.event_id)
    if change.account != account or change.detail.recipient_account_id not in (None, account):
        return _drop("event for another account", event)
    if change.detail.error_code:
        return _drop("failed call, nothing changed", event)
    if not events.watched(change):
        return _drop("event name not watched", event)
    return events.on_change(within(context), change, account=account)


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
