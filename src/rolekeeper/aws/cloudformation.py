"""CloudFormation's own view of a stack and its resources (what confirms a request)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from rolekeeper.aws import clients as aws


def describe_resource(stack_id: str, logical_id: str) -> dict[str, Any]:
    """The resource as DescribeStackResource shows it ({} when CloudFormation knows no such stack
    or resource: "Stack ... does not exist", "Resource ... does not exist for stack ...")."""
    try:
        found = aws.cloudformation().describe_stack_resource(StackName=stack_id, LogicalResourceId=logical_id)
    except ClientError as error:
        if aws.error_code(error) == "ValidationError":
            # "Stack ... does not exist" or "Resource ... does not exist for stack ..."
            return {}
        raise
    return dict(found["StackResourceDetail"])


def stack_status(stack_id: str) -> str:
    try:
        stacks = aws.cloudformation().describe_stacks(StackName=stack_id)["Stacks"]
    except ClientError as error:
        if aws.error_code(error) == "ValidationError":
            return ""
        raise
    return str(stacks[0]["StackStatus"]) if stacks else ""
