"""A CloudFormation double: DescribeStackResource and DescribeStacks answered from the state a
test sets, the way the fidelity layer (tools/devkit/fidelity) makes moto's IAM behave as IAM does.

rolekeeper acts on a request only when CloudFormation shows the resource in the state it is in
when it sends that request type (src/rolekeeper/provisioning/confirm.py). Tests that play
CloudFormation's part (tests/conftest.py's Stack) set that state before each request, as
CloudFormation would; a test that forges a request simply does not. Patched into moto's
CloudFormation responses, so it answers in-process (mock_aws) and over HTTP (a moto server in
the test process) alike.
"""

from __future__ import annotations

import datetime
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pytest
from moto.cloudformation import responses as cfn_responses
from moto.core.responses import ActionResult


@dataclass
class Resource:
    status: str
    physical_id: str | None = None
    resource_type: str = "Custom::ServiceRole"
    history: list[str] = field(default_factory=list)  # physical ids it had before (replacements)


def response_url(stack_id: str, logical_id: str, request_id: str, *, signature: str = "5e1f") -> str:
    """A ResponseURL as CloudFormation makes it: a pre-signed PUT on its response bucket in the
    stack's region, keyed <StackId>|<LogicalResourceId>|<RequestId> (URL-encoded, "/" kept)."""
    parts = stack_id.split(":")
    region = parts[3] if len(parts) > 3 else "us-east-1"
    bucket = f"cloudformation-custom-resource-response-{region.replace('-', '')}"
    key = urllib.parse.quote(f"{stack_id}|{logical_id}|{request_id}", safe="/")
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261207T120000Z&X-Amz-SignedHeaders=host"
        f"&X-Amz-Expires=7200&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2F{region}%2Fs3%2Faws4_request"
        f"&X-Amz-Signature={signature}"
    )
    return f"https://{bucket}.s3.amazonaws.com/{key}?{query}"


def genuine(event: dict[str, Any]) -> dict[str, Any]:
    """The event with the ResponseURL CloudFormation would give it."""
    event["ResponseURL"] = response_url(event["StackId"], event["LogicalResourceId"], event["RequestId"])
    return event


@dataclass
class CloudFormation:
    stacks: dict[str, str] = field(default_factory=dict)  # stack id -> stack status
    resources: dict[tuple[str, str], Resource] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    # The URLs it signed: its bucket accepts a PUT only to these (tests/conftest.py's Sent).
    issued: set[str] = field(default_factory=set)

    def set(
        self,
        stack_id: str,
        logical_id: str,
        status: str,
        physical_id: str | None = None,
        *,
        stack_status: str | None = None,
        resource_type: str = "Custom::ServiceRole",
    ) -> None:
        known = self.resources.get((stack_id, logical_id))
        history = list(known.history) if known else []
        # A Create in progress has no physical id yet: that replaces nothing (a repeated Create
        # must not make the current id look like a replaced one).
        if known and known.physical_id and physical_id and known.physical_id != physical_id:
            history.append(known.physical_id)
        self.resources[(stack_id, logical_id)] = Resource(status, physical_id, resource_type, history)
        self.stacks[stack_id] = stack_status or self.stacks.get(stack_id, "CREATE_COMPLETE")

    def resource(self, stack_id: str, logical_id: str) -> Resource | None:
        return self.resources.get((stack_id, logical_id))

    # CloudFormation's part in each request type (see src/rolekeeper/provisioning/confirm.py for the sources).
    def before(self, event: dict[str, Any]) -> None:
        if (
            all(isinstance(event.get(k), str) for k in ("StackId", "LogicalResourceId", "RequestId"))
            and ":" in event["StackId"]
        ):
            self.issued.add(genuine(event)["ResponseURL"])
        stack_id, logical_id = event["StackId"], event["LogicalResourceId"]
        kind, rtype = event["RequestType"], event.get("ResourceType", "Custom::ServiceRole")
        known = self.resource(stack_id, logical_id)
        physical_id = event.get("PhysicalResourceId")
        if kind == "Create":
            status = "UPDATE_IN_PROGRESS" if stack_id in self.stacks else "CREATE_IN_PROGRESS"
            self.set(
                stack_id, logical_id, "CREATE_IN_PROGRESS", None, stack_status=status, resource_type=rtype
            )
        elif kind == "Update":
            self.set(
                stack_id,
                logical_id,
                "UPDATE_IN_PROGRESS",
                physical_id,
                stack_status="UPDATE_IN_PROGRESS",
                resource_type=rtype,
            )
        elif known is not None and physical_id in known.history:
            # The Delete of a replaced physical id: the resource keeps its new one.
            self.stacks[stack_id] = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
        else:
            self.set(
                stack_id,
                logical_id,
                "DELETE_IN_PROGRESS",
                physical_id,
                stack_status="DELETE_IN_PROGRESS",
                resource_type=rtype,
            )

    def after(self, event: dict[str, Any], response: dict[str, Any]) -> None:
        stack_id, logical_id = event["StackId"], event["LogicalResourceId"]
        kind, rtype = event["RequestType"], event.get("ResourceType", "Custom::ServiceRole")
        known = self.resource(stack_id, logical_id)
        ok = response.get("Status") == "SUCCESS"
        if kind == "Create":
            status = "CREATE_COMPLETE" if ok else "CREATE_FAILED"
            self.set(stack_id, logical_id, status, response.get("PhysicalResourceId"), resource_type=rtype)
        elif kind == "Update":
            physical_id = response.get("PhysicalResourceId") if ok else event["PhysicalResourceId"]
            status = "UPDATE_COMPLETE" if ok else "UPDATE_FAILED"
            self.set(
                stack_id, logical_id, status, physical_id, stack_status="UPDATE_COMPLETE", resource_type=rtype
            )
        elif known is not None and known.status == "DELETE_IN_PROGRESS":
            if ok:
                del self.resources[(stack_id, logical_id)]
            else:
                known.status = "DELETE_FAILED"
        else:
            self.stacks[stack_id] = "UPDATE_COMPLETE"


def _validation_error(message: str) -> Exception:
    from moto.cloudformation.exceptions import ValidationError

    return ValidationError(message=message)


def install(monkeypatch: pytest.MonkeyPatch, double: CloudFormation) -> None:
    original_resource = cfn_responses.CloudFormationResponse.describe_stack_resource
    original_stacks = cfn_responses.CloudFormationResponse.describe_stacks

    def describe_stack_resource(self: Any) -> ActionResult:
        stack_id = self._get_param("StackName")
        logical_id = self._get_param("LogicalResourceId")
        double.calls.append("DescribeStackResource")
        if stack_id not in double.stacks:
            return original_resource(self)  # a stack moto itself deployed (or none: moto says so)
        found = double.resource(stack_id, logical_id)
        if found is None:
            raise _validation_error(f"Resource {logical_id} does not exist for stack {stack_id}")
        detail: dict[str, Any] = {
            "StackName": stack_id.split("/")[1],
            "StackId": stack_id,
            "LogicalResourceId": logical_id,
            "ResourceType": found.resource_type,
            "LastUpdatedTimestamp": datetime.datetime.now(datetime.UTC),
            "ResourceStatus": found.status,
        }
        if found.physical_id:
            detail["PhysicalResourceId"] = found.physical_id
        return ActionResult({"StackResourceDetail": detail})

    def describe_stacks(self: Any) -> ActionResult:
        stack_id = self._get_param("StackName")
        double.calls.append("DescribeStacks")
        if stack_id not in double.stacks:
            return original_stacks(self)
        stack = {
            "StackName": stack_id.split("/")[1],
            "StackId": stack_id,
            "CreationTime": datetime.datetime.now(datetime.UTC),
            "StackStatus": double.stacks[stack_id],
            "Tags": {},
        }
        return ActionResult({"Stacks": [stack]})

    monkeypatch.setattr(
        cfn_responses.CloudFormationResponse, "describe_stack_resource", describe_stack_resource
    )
    monkeypatch.setattr(cfn_responses.CloudFormationResponse, "describe_stacks", describe_stacks)
