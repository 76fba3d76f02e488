"""ProvisionerFunction: CloudFormation custom resource requests (provisioning.answering)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rolekeeper.aws.registry import Registry
from rolekeeper.config import settings
from rolekeeper.observability import logger, metrics
from rolekeeper.provisioning import intents
from rolekeeper.provisioning.answering import Answering
from rolekeeper.provisioning.context import Context
from rolekeeper.retry import Clock

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

_built: list[Answering] = []  # once per execution environment, on first use
_overrides: dict[str, Any] = {}


def configure(**overrides: Any) -> None:
    """What this environment's request handling is built with besides the settings (a clock,
    a sender: tests pass their own); rebuilt on next use. No overrides: back to the defaults."""
    _overrides.update(overrides) if overrides else _overrides.clear()
    _built.clear()


def answering() -> Answering:
    if not _built:
        options = dict(_overrides)
        config = options.pop("settings", None) or settings()
        clock = options.pop("clock", None) or Clock()
        _built.append(Answering(config, Registry(config.registry_table_name, clock=clock), clock, **options))
    return _built[0]


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path="RequestId", clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any] | None:
    if (
        isinstance(event, dict)
        and event.get("detail-type") == "Scheduled Event"
        and event.get("source") == "aws.events"
    ):
        # The schedule: settle what ended invocations left pending (intents.finish_abandoned).
        handling = answering()
        ctx = Context(handling.settings, handling.registry, handling.clock)
        settled = intents.finish_abandoned(ctx)
        logger.info("pending changes settled", settled=settled)
        return {"outcome": "settled", "count": len(settled)}
    if isinstance(event, dict):
        logger.append_keys(
            request_type=event.get("RequestType"),
            resource_type=event.get("ResourceType"),
            logical_resource_id=event.get("LogicalResourceId"),
            stack_id=event.get("StackId"),
        )
    return answering()(event, context)
