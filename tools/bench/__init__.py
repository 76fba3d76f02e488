"""make bench (`python -m tools.bench`): AWS calls per request and per heal against the minimum
each one's semantics allow, the scheduled reconcile at 10,000 registered roles (calls, pages,
memory, time, and a run cut short by its deadline then resumed), cold start, latency, a heal
burst and memory.

Call counts come from botocore's before-call event, so every client rolekeeper makes is counted
(IAM, KMS, DynamoDB, CloudFormation, SNS), pages included. AWS is moto made AWS-like by
tools/devkit/fidelity (GetAccountAuthorizationDetails and Scan page as AWS does), in-process where a
count is all that is wanted and as a moto server in this process where a fresh process must reach
it over HTTP (memory, the reconcile). Not part of the Lambda artifact; not part of the tests.

Importing this package sets the environment (fake credentials, region, the settings template.yaml
would give) before anything imports Powertools or rolekeeper.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ACCOUNT = "123456789012"
REGION = "us-east-1"

BENCH_ENV = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
    "REGISTRY_TABLE_NAME": "rolekeeper-bench",
    "ALLOWED_SERVICE_NAMES": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
    "ecs.amazonaws.com,autoscaling.amazonaws.com",
    "ALLOWED_MANAGED_POLICY_ARNS": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore,"
    "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy",
    "ALLOWED_ROLE_NAMES": "aws-ec2-spot-fleet-tagging-role,AmazonEC2SpotFleetRole,AmazonEC2SpotFleetTaggingRole,"
    "ecsInstanceRole,AWSBatchServiceRole,app-*",
    "ALLOWED_TAG_KEYS": "team,env,owner,app,cost-center",
    "ALLOWED_PERMISSIONS_BOUNDARY_ARNS": f"arn:aws:iam::{ACCOUNT}:policy/app-boundary",
    "HEAL_MODE": "heal",
    "HEAL_RATE_LIMIT": "5",
    "POWERTOOLS_SERVICE_NAME": "rolekeeper",
    "POWERTOOLS_METRICS_NAMESPACE": "rolekeeper",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
}


def set_environment() -> None:
    os.environ.update(BENCH_ENV)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "NOTIFICATION_TOPIC_ARN", "ORG_EVENT_BUS_ARN"):
        os.environ.pop(name, None)


set_environment()
