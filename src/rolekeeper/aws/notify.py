"""Optional SNS notices for heals, suppressions and failures."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from rolekeeper.aws import clients as aws

logger = Logger(child=True)


def notify(topic_arn: str | None, subject: str, message: str) -> None:
    if not topic_arn:
        return
    try:
        aws.client("sns").publish(TopicArn=topic_arn, Subject=subject[:100], Message=message)
    except Exception:  # a notice must never turn a heal into a failure
        logger.exception("notice not sent", subject=subject)
