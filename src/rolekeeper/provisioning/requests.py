"""A custom resource request as rolekeeper acts on it, and what it answers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.records import Claim


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
    physical_id: str
    data: dict[str, str] = field(default_factory=dict)
    # For abandon(): the registry key, this resource's claim as it was before the request, and
    # whether the request itself created the object.
    key: str | None = None
    previous: Claim | None = None
    made: bool = False
