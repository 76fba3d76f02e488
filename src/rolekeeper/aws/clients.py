"""The only place boto3 clients are made: lazily, once per service, with bounded retries and timeouts."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_cloudformation.client import CloudFormationClient
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_iam.client import IAMClient
    from mypy_boto3_kms.client import KMSClient

# Standard retry mode retries throttling, 5xx and timeouts with backoff. max_attempts counts the
# retries: 5 attempts x 10 s read timeout at worst, inside the provisioner's 120 s (and the handler
# answers FAILED 8 s before its deadline whatever is still running).
RETRIES = {"mode": "standard", "max_attempts": 4}
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10


@cache
def client(service: str, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries=RETRIES,  # type: ignore[arg-type]
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        user_agent_extra="rolekeeper",
    )
    made = boto3.client(service, region_name=region, config=config)  # type: ignore[call-overload]
    made.meta.events.register("after-call-error", _name_the_operation)
    return made


def _name_the_operation(exception: BaseException, event_name: str = "", **_: Any) -> None:
    """Connection errors and timeouts do not say which call failed; the Reason should."""
    setattr(exception, "rolekeeper_operation", event_name.rsplit(".", 1)[-1])  # noqa: B010


def operation_of(exception: BaseException) -> str:
    return str(
        getattr(exception, "rolekeeper_operation", "")
        or getattr(exception, "operation_name", "")
        or "AWS call"
    )


def iam() -> IAMClient:
    return client("iam")  # type: ignore[no-any-return]


def kms(key: str | None = None) -> KMSClient:
    """The KMS client for a key: a key ARN names its region, which may not be the function's."""
    region = key.split(":")[3] if key and key.startswith("arn:") and key.count(":") >= 5 else None
    home: KMSClient = client("kms")
    return home if region in (None, home.meta.region_name) else client("kms", region)


def cloudformation() -> CloudFormationClient:
    return client("cloudformation")  # type: ignore[no-any-return]


def dynamodb() -> DynamoDBClient:
    return client("dynamodb")  # type: ignore[no-any-return]


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", ""))
    return str(exc)


def failure_of(exc: BaseException) -> str | None:
    """An AWS SDK error as a short Reason naming the call, or None for any other exception."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        return f"{operation_of(exc)} failed: {error_code(exc)}: {error_message(exc)}"
    if isinstance(exc, BotoCoreError):
        return f"{operation_of(exc)} failed: {type(exc).__name__}: {exc}"
    return None
