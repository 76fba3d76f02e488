"""The process environment of a local run: region, fake credentials and the settings
template.yaml would give the functions (rolekeeper.config reads them, once per cold start).

Tests apply it before any rolekeeper module is imported (tests/conftest.py); the embedded moto
server adds its endpoint to it (embedded.moto_server)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ACCOUNT = "123456789012"
REGION = "us-east-1"
# The tag by which an operator opts a customer managed key in to Custom::SpotFleetKmsGrant.
OPT_IN = [{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

# The deployment's parameters as the template passes them (events/ and examples/ fit them).
SETTINGS = {
    "REGISTRY_TABLE_NAME": "rolekeeper-registry",
    "ALLOWED_SERVICE_NAMES": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
    "ecs.amazonaws.com,autoscaling.amazonaws.com",
    "ALLOWED_MANAGED_POLICY_ARNS": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore,"
    "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy",
    "ALLOWED_ROLE_NAMES": "aws-ec2-spot-fleet-tagging-role,AmazonEC2SpotFleetRole,AmazonEC2SpotFleetTaggingRole,"
    "ecsInstanceRole,AWSBatchServiceRole,app-*",
    "ALLOWED_TAG_KEYS": "team,env,owner,app,a,cost-center",
    "ALLOWED_PERMISSIONS_BOUNDARY_ARNS": "arn:aws:iam::123456789012:policy/app-boundary,"
    "arn:aws:iam::aws:policy/PowerUserAccess",
    "HEAL_MODE": "heal",
    "POWERTOOLS_SERVICE_NAME": "rolekeeper",
    "POWERTOOLS_METRICS_NAMESPACE": "rolekeeper",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}

# Variables of the developer's own shell that would send a local run to a real AWS account.
UNSET = ("AWS_ENDPOINT_URL", "AWS_PROFILE")


def local(**overrides: str) -> dict[str, str]:
    """The whole environment of a local run, with overrides (a table name, a log level, ...)."""
    return {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **CREDENTIALS,
        # moto's IAM knows the AWS managed policies (embedded loads only those rolekeeper uses).
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        **SETTINGS,
        **overrides,
    }


def apply(**overrides: str) -> None:
    """os.environ set for a local run; what would reach a real account removed (unless overridden)."""
    for name in UNSET:
        if name not in overrides:
            os.environ.pop(name, None)
    os.environ.update(local(**overrides))


@contextlib.contextmanager
def scoped(**overrides: str) -> Iterator[None]:
    """apply() for the duration; os.environ as it was afterwards."""
    saved = dict(os.environ)
    apply(**overrides)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
