from __future__ import annotations

import os
import time
import uuid
from functools import cache
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from rolekeeper.aws import clients as aws
from rolekeeper.aws.registry import Registry
from rolekeeper.cfn import CustomResource
from rolekeeper.config import settings
from rolekeeper.domain.errors import RolekeeperError
from rolekeeper.domain.records import object_key
from rolekeeper.domain.validation import validate
from rolekeeper.observability import logger, metrics
from rolekeeper.provisioning import confirm as verify
from rolekeeper.provisioning.requests import Request
from rolekeeper.provisioning.service import Provisioner

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

helper = CustomResource()
noted: list[str] = []  # the confirmed RequestId this invocation answers (see _first_delivery)


@cache
def provisioner() -> Provisioner:
    config = settings()
    return Provisioner(config, Registry(config.registry_table_name))


def _request(event: dict[str, Any], context: Any) -> Request:
    return Request(
        request_type=event["RequestType"],
        resource_type=event["ResourceType"],
        stack_id=event["StackId"],
        logical_id=event["LogicalResourceId"],
        properties=event.get("ResourceProperties") or {},
        old_properties=event.get("OldResourceProperties"),
        physical_id=event.get("PhysicalResourceId"),
        request_id=str(event.get("RequestId") or uuid.uuid4().hex),
        identity=verify.identity_for(context.invoked_function_arn, event["StackId"]),
    )


def _run(action: str, event: dict[str, Any], context: Any) -> str:
    """Every failure becomes a RolekeeperError whose message is a short, useful Reason."""
    try:
        request = _request(event, context)
        if action != "delete":
            validate(request.resource_type, request.properties, settings(), request.scope)  # no AWS call
        if not _first_delivery(event["RequestId"], context):
            logger.warning("request answered before (a redelivery); no second response")
            metrics.add_metric(name="RequestRedelivered", unit="Count", value=1)
            helper.answered_before()
            return request.physical_id or ""
        if settings().verify_requests and provisioner().acts_on(request):
            verify.confirm(
                request.request_type,
                request.resource_type,
                request.stack_id,
                request.logical_id,
                request.physical_id,
                object_key,
            )
        # Recorded as answered only once confirmed: a direct invoke naming some RequestId must
        # not make CloudFormation's own request with that id look like a redelivery.
        noted.append(event["RequestId"])
        response = provisioner().delete(request) if action == "delete" else provisioner().converge(request)
    except RolekeeperError as error:
        logger.warning("request refused", reason=str(error))
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        raise
    except ClientError as error:
        operation = aws.operation_of(error)
        logger.exception("AWS call failed", operation=operation)
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        raise RolekeeperError(
            f"{operation} failed: {aws.error_code(error)}: {aws.error_message(error)}"
        ) from None
    except BotoCoreError as error:
        operation = aws.operation_of(error)
        logger.exception("AWS call failed", operation=operation)
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        raise RolekeeperError(f"{operation} failed: {type(error).__name__}: {error}") from None
    except Exception as error:
        logger.exception("request failed")
        metrics.add_metric(name="RequestFailed", unit="Count", value=1)
        raise RolekeeperError(
            f"rolekeeper could not complete the request ({type(error).__name__}: {error})"
        ) from None
    if helper.responded:
        # The deadline answer (FAILED) already went out: CloudFormation will not own what was
        # just converged, so do not leave a claim that nothing will release.
        provisioner().abandon(request, response)
    metrics.add_metric(name="RequestSucceeded", unit="Count", value=1)
    helper.Data.update(response.data)
    return response.physical_id


@helper.create
@helper.update
def converge(event: dict[str, Any], context: Any) -> str:
    return _run("converge", event, context)


@helper.delete
def delete(event: dict[str, Any], context: Any) -> str:
    return _run("delete", event, context)


@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any] | None:
    if isinstance(event, dict):
        logger.set_correlation_id(event.get("RequestId"))
        logger.append_keys(
            request_type=event.get("RequestType"),
            resource_type=event.get("ResourceType"),
            logical_resource_id=event.get("LogicalResourceId"),
            stack_id=event.get("StackId"),
        )
    noted.clear()
    helper(event, context)
    if noted and helper.last_response is not None:
        _note_answered(noted[0], str(helper.last_response.get("Status")))
    return helper.last_response


def _first_delivery(request_id: str, context: Any) -> bool:
    """False for a request already answered, or still being worked on by another invocation
    (until that one's deadline). A registry that cannot be read must not cost the request its one
    response: it is then answered (at worst a second time)."""
    if os.environ.get("AWS_SAM_LOCAL"):
        return True
    try:
        now = time.time()
        return provisioner().registry.begin_request(
            request_id,
            now=now,
            until=now + context.get_remaining_time_in_millis() / 1000,
            invocation=str(getattr(context, "aws_request_id", "") or ""),
        )
    except Exception:
        logger.exception("could not check the request against the registry; answering it")
        return True


def _note_answered(request_id: str, status: str) -> None:
    if os.environ.get("AWS_SAM_LOCAL"):
        return
    try:
        provisioner().registry.answered(request_id, status, now=time.time())
    except Exception:
        logger.exception("could not note the request as answered")
