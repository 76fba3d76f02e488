"""The only place boto3 clients are made: lazily, once per service, with bounded retries and timeouts."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_iam.client import IAMClient
    from mypy_boto3_kms.client import KMSClient

# Standard retry mode retries throttling and 5xx with backoff; the totals keep every call well inside
# the function's deadline (4 attempts x 10 s read timeout at worst).
RETRIES = {"mode": "standard", "max_attempts": 4}
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10


@cache
def client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries=RETRIES,  # type: ignore[arg-type]
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        user_agent_extra="rolekeeper",
    )
    return boto3.client(service, config=config)  # type: ignore[call-overload]


def iam() -> IAMClient:
    return client("iam")  # type: ignore[no-any-return]


def kms() -> KMSClient:
    return client("kms")  # type: ignore[no-any-return]


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
