"""A custom resource request as rolekeeper acts on it, and what it answers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.records import Claim, Intent, Record


@dataclass(frozen=True)
class Request:
    request_type: str
    resource_type: str
    stack_id: str
    logical_id: str
    properties: dict[str, Any]
    old_properties: dict[str, Any] | None = None
    physical_id: str | None = None
    # Where the function runs (from its own ARN); the StackId was checked against it.
    identity: Scope | None = None
    # CloudFormation's RequestId: who takes an object for deletion. The same request (a
    # redelivery, or an attempt whose answer was lost) is the same writer.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def token(self) -> str:
        return self.request_id

    @property
    def scope(self) -> Scope:
        return self.identity or Scope.from_arn(self.stack_id)

    @property
    def claim_sk(self) -> str:
        return Claim(self.stack_id, self.logical_id).sk


@dataclass
class Response:
    """What a request answers CloudFormation when it succeeds (changes: for the log)."""

    physical_id: str
    data: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list, compare=False)
    # Where the request left what takes effect only once CloudFormation accepted the answer.
    intent: Intent | None = None
    # The object as the request's last write left it (the second phase plans from it; None: read).
    record: Record | None = field(default=None, compare=False, repr=False)

    def keep(self, record: Record | None) -> None:
        self.record = record
