"""One logger and one metrics object for the whole package (Powertools)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

logger = Logger(service="rolekeeper")
metrics = Metrics(namespace="rolekeeper", service="rolekeeper")
