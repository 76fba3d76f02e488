"""What the scheduled reconcile keeps of IAM: per role only what its checks read (the unique id
and ARN, the trust policy, the boundary's ARN, the tags, the attached policies' ARNs, the instance
profiles holding it), read in GetAccountAuthorizationDetails pages and reduced page by page.

Inline policies, instance profiles' own details, last-used data and dates are dropped; what many
roles share (the trust policy of a blueprint, a set of tags or policies) is kept once. Ten
thousand roles then take a few megabytes, where the pages themselves take hundreds.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rolekeeper.aws import iam
from rolekeeper.domain.drift import Actual
from rolekeeper.retry import Clock


@dataclass(frozen=True, slots=True)
class RoleFacts:
    name: str
    role_id: str
    arn: str
    trust: Mapping[str, Any]  # one object for every role with the same document: copied out
    boundary: str | None
    tags: tuple[tuple[str, str], ...]
    attached: frozenset[str]
    profiles: frozenset[str]

    def role(self) -> dict[str, Any]:
        """The role as GetRole shows it, in the fields the checks read."""
        role: dict[str, Any] = {
            "RoleName": self.name,
            "RoleId": self.role_id,
            "Arn": self.arn,
            "AssumeRolePolicyDocument": copy.deepcopy(dict(self.trust)),
            "Tags": [{"Key": k, "Value": v} for k, v in self.tags],
        }
        if self.boundary:
            role["PermissionsBoundary"] = {
                "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
                "PermissionsBoundaryArn": self.boundary,
            }
        return role

    def actual(self) -> Actual:
        return Actual(role=self.role(), attached=set(self.attached), profiles=set(self.profiles))


@dataclass
class Snapshot:
    """Every role in the account as the pages showed it, by lower-case name (IAM role names are
    unique case-insensitively)."""

    roles: dict[str, RoleFacts] = field(default_factory=dict)
    pages: int = 0
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, clock: Clock, *, page_size: int | None = None) -> Snapshot | None:
        """All pages, or None when the clock's deadline passed before the last one was read."""
        snapshot = cls()
        for page in iam.role_detail_pages(page_size):
            snapshot.add(page)
            if clock.left() <= 0:
                return None  # a partial view would call present roles missing
        return snapshot

    def add(self, page: Iterable[Mapping[str, Any]]) -> None:
        self.pages += 1
        for detail in page:
            facts = self._facts(detail)
            self.roles[facts.name.lower()] = facts

    def get(self, name: str) -> RoleFacts | None:
        return self.roles.get(name.lower())

    def _facts(self, detail: Mapping[str, Any]) -> RoleFacts:
        name = str(detail["RoleName"])
        return RoleFacts(
            name=name,
            role_id=str(detail["RoleId"]),
            arn=str(detail["Arn"]),
            trust=self._once(detail.get("AssumeRolePolicyDocument") or {}),
            boundary=self._intern((detail.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")),
            tags=self._once(tuple((str(t["Key"]), str(t["Value"])) for t in detail.get("Tags", []))),
            attached=self._once(frozenset(p["PolicyArn"] for p in detail.get("AttachedManagedPolicies", []))),
            profiles=self._once(
                frozenset(
                    p["InstanceProfileName"]
                    for p in detail.get("InstanceProfileList", [])
                    if any(r.get("RoleName") == name for r in p.get("Roles", []))
                )
            ),
        )

    def _once(self, value: Any) -> Any:
        """The one copy of an equal value seen before (documents and sets many roles share)."""
        key = json.dumps(
            sorted(value) if isinstance(value, frozenset) else value, sort_keys=True, default=str
        )
        return self._shared.setdefault(f"{type(value).__name__}:{key}", value)

    @staticmethod
    def _intern(value: str | None) -> str | None:
        return sys.intern(value) if value else None
