"""IAM as AWS documents it, where moto differs:
- IAM names service-linked roles AWSServiceRoleForEC2Spot etc. (moto: AWSServiceRoleForspot).
- CreateServiceLinkedRole for an existing role fails with InvalidInput "Service role name ...
  has been taken in this account, please try a different suffix." (moto: EntityAlreadyExists).
- DeleteServiceLinkedRole is asynchronous: it returns a task id
  task/aws-service-role/<service>/<role>/<uuid> and the role stays until the task finishes;
  GetServiceLinkedRoleDeletionStatus reports NOT_STARTED/IN_PROGRESS/SUCCEEDED/FAILED.
- GetAccountAuthorizationDetails is paged: MaxItems (1 to 1,000) defaults to 100, and a
  truncated answer carries IsTruncated and a Marker for the next page (IAM API reference,
  "GetAccountAuthorizationDetails"; moto answers everything in one page).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from moto.iam import models as iam_models
from moto.iam import responses as iam_responses
from moto.iam.exceptions import InvalidInput

# moto parses all ~1,300 AWS managed policies (4.7 MB of JSON) every time an IAM backend is made,
# which is most of a test's time. Tests and tools need only these; their documents are moto's
# copies of the real ones.
AWS_MANAGED_POLICIES_USED = (
    "AmazonEC2SpotFleetTaggingRole",
    "AmazonEC2ContainerServiceforEC2Role",
    "AWSBatchServiceRole",
    "AmazonSSMManagedInstanceCore",
    "CloudWatchAgentServerPolicy",
    "PowerUserAccess",
    "AdministratorAccess",
    "AmazonEC2SpotFleetRole",
)


@cache  # once per process: parsing moto's copy of them all is what this saves
def use_only_the_managed_policies_rolekeeper_needs() -> None:
    from moto.iam import aws_managed_policies

    everything = json.loads(aws_managed_policies.aws_managed_policies_data)
    subset = {name: everything[name] for name in AWS_MANAGED_POLICIES_USED if name in everything}
    iam_models.aws_managed_policies_data = json.dumps(subset)  # type: ignore[attr-defined]


AWS_SERVICE_LINKED_ROLE_NAMES = {
    "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
    "spotfleet.amazonaws.com": "AWSServiceRoleForEC2SpotFleet",
    "batch.amazonaws.com": "AWSServiceRoleForBatch",
    "ecs.amazonaws.com": "AWSServiceRoleForECS",
    "autoscaling.amazonaws.com": "AWSServiceRoleForAutoScaling",
}


@dataclass
class DeletionTasks:
    """Service-linked role deletions in flight. finish() completes them as IAM would later."""

    asynchronous: bool = False
    pending: dict[str, tuple[Any, str]] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    fail_next_with_in_use: bool = False

    def finish(self) -> None:
        for task_id, (backend, role_name) in list(self.pending.items()):
            if self.outcome.get(task_id) == "FAILED":
                continue
            if role_name in backend.roles_by_name():
                backend.delete_role(role_name)
            self.outcome[task_id] = "SUCCEEDED"
            del self.pending[task_id]


def _roles_by_name(self: Any) -> dict[str, Any]:
    return {role.name: role for role in self.roles.values()}


# IAM's default page for GetAccountAuthorizationDetails when MaxItems is not given.
AUTHORIZATION_DETAILS_PAGE = 100


def install_authorization_details_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Roles in pages of MaxItems (the other lists, which rolekeeper never asks for, on the first)."""
    from moto.core.responses import ActionResult

    def paged(self: Any) -> Any:
        details = self.backend.get_account_authorization_details(self._get_param("Filter", []))
        size = int(self._get_param("MaxItems") or AUTHORIZATION_DETAILS_PAGE)
        start = int(self._get_param("Marker") or 0)
        roles = list(details["roles"])
        first = start == 0
        truncated = start + size < len(roles)
        result: dict[str, Any] = {
            "UserDetailList": details["users"] if first else [],
            "GroupDetailList": details["groups"] if first else [],
            "RoleDetailList": roles[start : start + size],
            "Policies": details["managed_policies"] if first else [],
            "IsTruncated": truncated,
        }
        if truncated:
            result["Marker"] = str(start + size)
        return ActionResult(result)

    monkeypatch.setattr(iam_responses.IamResponse, "get_account_authorization_details", paged)


def install_iam(monkeypatch: pytest.MonkeyPatch, tasks: DeletionTasks) -> None:
    original_create = iam_models.IAMBackend.create_service_linked_role
    monkeypatch.setattr(iam_models.IAMBackend, "roles_by_name", _roles_by_name, raising=False)

    def create_service_linked_role(self: Any, service_name: str, description: str, suffix: str) -> Any:
        name = AWS_SERVICE_LINKED_ROLE_NAMES.get(service_name)
        if name is None:
            return original_create(self, service_name, description, suffix)
        if suffix:
            name = f"{name}_{suffix}"
        if name.lower() in {n.lower() for n in self.roles_by_name()}:
            raise InvalidInput(
                f"Service role name {name} has been taken in this account, please try a different suffix."
            )
        role = original_create(self, service_name, description, suffix)
        role.name = name
        return role

    def delete_service_linked_role(self: Any, role_name: str) -> str:
        role = self.get_role(role_name)  # NoSuchEntity as IAM
        service = role.path.strip("/").split("/")[-1]
        task_id = f"task/aws-service-role/{service}/{role_name}/{uuid.uuid4()}"
        if tasks.fail_next_with_in_use:
            tasks.fail_next_with_in_use = False
            tasks.outcome[task_id] = "FAILED"
            return task_id
        tasks.pending[task_id] = (self, role_name)
        if not tasks.asynchronous:
            tasks.finish()
        return task_id

    def get_status(self: Any) -> Any:
        from moto.core.responses import ActionResult

        task_id = self._get_param("DeletionTaskId")
        status = "IN_PROGRESS" if task_id in tasks.pending else tasks.outcome.get(task_id, "SUCCEEDED")
        result: dict[str, Any] = {"Status": status}
        if status == "FAILED":
            result["Reason"] = {
                "Reason": "The role is in use by active resources.",
                "RoleUsageList": [
                    {
                        "Region": "us-east-1",
                        "Resources": ["arn:aws:ec2:us-east-1:123456789012:spot-fleet-request/sfr-1"],
                    }
                ],
            }
        return ActionResult(result)

    monkeypatch.setattr(iam_models.IAMBackend, "create_service_linked_role", create_service_linked_role)
    monkeypatch.setattr(iam_models.IAMBackend, "delete_service_linked_role", delete_service_linked_role)
    monkeypatch.setattr(iam_responses.IamResponse, "get_service_linked_role_deletion_status", get_status)
