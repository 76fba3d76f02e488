"""Make moto behave as AWS does where rolekeeper depends on the difference.

The AWS facts here are written from the AWS documentation, independently of src/ (so a wrong
name in rolekeeper's catalog is caught, not copied):
- IAM names service-linked roles AWSServiceRoleForEC2Spot etc. (moto: AWSServiceRoleForspot).
- CreateServiceLinkedRole for an existing role fails with InvalidInput "Service role name ...
  has been taken in this account, please try a different suffix." (moto: EntityAlreadyExists).
- DeleteServiceLinkedRole is asynchronous: it returns a task id
  task/aws-service-role/<service>/<role>/<uuid> and the role stays until the task finishes;
  GetServiceLinkedRoleDeletionStatus reports NOT_STARTED/IN_PROGRESS/SUCCEEDED/FAILED.
- CreateGrant with a Name and identical parameters returns the existing GrantId (new token).
- Grant ids are 64 hex characters.
- DynamoDB TransactWriteItems with a ClientRequestToken is idempotent (moto ignores the token).
  The API reference (TransactWriteItems, request parameter ClientRequestToken): "Providing a
  ClientRequestToken makes the call to TransactWriteItems idempotent, meaning that multiple
  identical calls have the same effect as one single call." "A client request token is valid for
  10 minutes after the first request that uses it is completed. After 10 minutes, any request
  with the same client token is treated as a new request." "If you submit a request with the
  same client token but a change in other parameters within the 10-minute idempotency window,
  DynamoDB returns an IdempotentParameterMismatch exception."
  (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html)
  botocore fills the token in itself (idempotencyToken in the model) when the caller does not,
  and its retries resend the same body: a retried transaction whose answer was lost is not
  applied twice in AWS.
- Global secondary indexes are eventually consistent: "All reads from GSIs and streams are
  eventually consistent" and an eventually consistent read "may not reflect the results of a
  recently completed write operation"
  (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.ReadConsistency.html);
  and there is no way round it: "Strongly consistent reads are not supported on global secondary
  indexes. If you query a global secondary index with ConsistentRead set to true, you will
  receive a ValidationException." (API_Query, ConsistentRead). moto already refuses
  ConsistentRead on a GSI; it answers every index read from the table as it is now, so a lag
  is modelled here (IndexLag, installed when a test passes one).
- GetAccountAuthorizationDetails is paged: MaxItems (1 to 1,000) defaults to 100, and a
  truncated answer carries IsTruncated and a Marker for the next page (IAM API reference,
  "GetAccountAuthorizationDetails"; moto answers everything in one page).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from moto.iam import models as iam_models
from moto.iam import responses as iam_responses
from moto.iam.exceptions import InvalidInput
from moto.kms import models as kms_models

# moto parses all ~1,300 AWS managed policies (4.7 MB of JSON) every time an IAM backend is made,
# which is most of a test's time. Tests and the demo need only these; their documents are moto's
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


def use_only_the_managed_policies_rolekeeper_needs() -> None:
    import json

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


@dataclass
class RequestTokens:
    """DynamoDB's memory of TransactWriteItems client request tokens: token -> (the request's
    other parameters, when it completed). Only a transaction that succeeded is remembered (one
    that was cancelled changed nothing). now() is the clock the 10-minute window runs on."""

    window: float = 600.0
    now: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    repeats: int = 0  # requests answered from memory, not applied again


def _roles_by_name(self: Any) -> dict[str, Any]:
    return {role.name: role for role in self.roles.values()}


@dataclass
class IndexLag:
    """Global secondary indexes that have not caught up. Between freeze(table) and thaw(table), a
    Query or Scan on one of the table's GSIs answers from the table as it stood at freeze(): writes
    made since (new items, changed or removed index keys) are not yet propagated to the index.
    Reads of the table itself stay current (a ConsistentRead sees every completed write)."""

    frozen: dict[str, Any] = field(default_factory=dict)  # table name -> the table as it stood
    stale_reads: int = 0  # index reads answered from a frozen view

    def freeze(self, table_name: str, account: str = "123456789012", region: str = "us-east-1") -> None:
        import copy

        from moto.backends import get_backend

        backend = get_backend("dynamodb")[account][region]  # type: ignore[index]
        self.frozen[table_name] = copy.deepcopy(backend.get_table(table_name))

    def thaw(self, table_name: str | None = None) -> None:
        if table_name is None:
            self.frozen.clear()
        else:
            self.frozen.pop(table_name, None)

    def view(self, table: Any, index_name: str | None) -> Any:
        """The table an index read of `table` is answered from."""
        stale = self.frozen.get(table.name)
        if stale is None or not index_name or index_name not in {i.name for i in table.global_indexes}:
            return table
        self.stale_reads += 1
        return stale


def _install_index_lag(monkeypatch: pytest.MonkeyPatch, lag: IndexLag | None) -> None:
    from moto.dynamodb.models.table import Table

    if lag is None:  # indexes as moto keeps them: always up to date
        return

    original_query, original_scan = Table.query, Table.scan

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[7] if len(args) > 7 else None)
        return original_query(lag.view(self, index_name), *args, **kwargs)

    def scan(self: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[4] if len(args) > 4 else None)
        return original_scan(lag.view(self, index_name), *args, **kwargs)

    monkeypatch.setattr(Table, "query", query)
    monkeypatch.setattr(Table, "scan", scan)


# IAM's default page for GetAccountAuthorizationDetails when MaxItems is not given.
AUTHORIZATION_DETAILS_PAGE = 100


def _install_authorization_details_pages(monkeypatch: pytest.MonkeyPatch) -> None:
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


def _install_reads(monkeypatch: pytest.MonkeyPatch, index_lag: IndexLag | None) -> None:
    _install_index_lag(monkeypatch, index_lag)
    _install_authorization_details_pages(monkeypatch)


def install(
    monkeypatch: pytest.MonkeyPatch,
    tasks: DeletionTasks,
    tokens: RequestTokens | None = None,
    index_lag: IndexLag | None = None,
) -> None:
    _install_request_tokens(monkeypatch, tokens if tokens is not None else RequestTokens())
    _install_reads(monkeypatch, index_lag)
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

    original_grant = kms_models.KmsBackend.create_grant

    def create_grant(
        self: Any,
        key_id: str,
        grantee_principal: str,
        operations: list[str],
        name: str,
        constraints: dict[str, Any],
        retiring_principal: str,
    ) -> tuple[str, str]:
        key = self.describe_key(key_id)
        if name:
            for grant in key.grants.values():
                if (
                    grant.name,
                    grant.grantee_principal,
                    sorted(grant.operations),
                    grant.constraints,
                    grant.retiring_principal,
                ) == (
                    name,
                    grantee_principal,
                    sorted(operations),
                    constraints,
                    retiring_principal,
                ):
                    return grant.id, secrets.token_hex(32)
        grant_id, token = original_grant(
            self, key_id, grantee_principal, operations, name, constraints, retiring_principal
        )
        grant = key.grants.pop(grant_id)
        grant.id = secrets.token_hex(32)
        key.grants[grant.id] = grant
        return grant.id, token

    def revoke_grant(self: Any, key_id: str, grant_id: str) -> None:
        key = self.describe_key(key_id)
        if grant_id not in key.grants:
            from moto.kms.exceptions import NotFoundException

            raise NotFoundException(f"Grant ID {grant_id} not found")
        del key.grants[grant_id]

    monkeypatch.setattr(kms_models.KmsBackend, "create_grant", create_grant)
    monkeypatch.setattr(kms_models.KmsBackend, "revoke_grant", revoke_grant)


def _install_request_tokens(monkeypatch: pytest.MonkeyPatch, tokens: RequestTokens) -> None:
    from moto.core.responses import ActionResult
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.transact_write_items

    def transact_write_items(self: Any) -> Any:
        token = self.body.get("ClientRequestToken")
        if not token:
            return original(self)
        parameters = json.dumps(
            {k: v for k, v in self.body.items() if k != "ClientRequestToken"}, sort_keys=True
        )
        known = tokens.seen.get(token)
        if known is not None and tokens.now() - known[1] < tokens.window:
            if known[0] != parameters:
                raise DynamodbException(
                    ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical request.",
                )
            tokens.repeats += 1
            return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
        result = original(self)
        tokens.seen[token] = (parameters, tokens.now())
        return result

    monkeypatch.setattr(DynamoHandler, "transact_write_items", transact_write_items)
