"""Answering CloudFormation: a PUT of the response body to the request's pre-signed ResponseURL
(on CloudFormation's own S3 bucket). Bounded attempts within the deadline; the URL is never
logged (it is a credential for that one object)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger

from rolekeeper.retry import Clock, Patience

logger = Logger(child=True)

# S3 answers a pre-signed PUT within seconds; an unreachable URL does not get better by waiting.
DELIVERY = Patience(attempts=3, first=0.5, cap=2.0)
TIMEOUT = 5.0


def url_allowed(url: str) -> bool:
    """https, or plain http to this machine (the local stand-in for CloudFormation used by the
    demo and the tests)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return False  # control characters or spaces: no pre-signed URL has them, and urllib raises
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def put(url: str, body: dict[str, Any], *, clock: Clock) -> int:
    """PUT the response; returns the HTTP status of the last attempt (0: no answer at all). A 4xx
    other than 429 is final (an expired or forged pre-signed URL does not get better)."""
    data = json.dumps(body).encode()
    host = urlsplit(url).hostname or "?"
    status = 0
    for attempt in DELIVERY.tries(clock):
        remaining = min(TIMEOUT, clock.left())
        if remaining <= 0.2:
            break
        request = urllib.request.Request(  # noqa: S310 - scheme checked by url_allowed
            url, data=data, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(data))}
        )
        try:
            with urllib.request.urlopen(request, timeout=remaining) as reply:  # noqa: S310
                status = int(reply.status)
        except urllib.error.HTTPError as error:
            status = int(error.code)
        except Exception as error:
            logger.warning(
                "response not delivered", error=type(error).__name__, host=host, attempt=attempt + 1
            )
            continue
        if status < 300:
            logger.info("response delivered", status=body["Status"], http_status=status, attempt=attempt + 1)
            return status
        logger.warning("response refused", http_status=status, host=host, attempt=attempt + 1)
        if 400 <= status < 500 and status != 429:
            return status
    logger.error("giving up delivering the response", host=host, http_status=status)
    return status
