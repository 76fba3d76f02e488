"""AWS as the checks see it: the embedded AWS read back through boto3 (AWS_ENDPOINT_URL)."""

from __future__ import annotations

import json
import os
from typing import Any


class Aws:
    def __init__(self) -> None:
        import boto3

        self.iam = boto3.client("iam")
        self.kms = boto3.client("kms")

    def role(self, name: str) -> dict[str, Any] | None:
        try:
            role: dict[str, Any] = self.iam.get_role(RoleName=name)["Role"]
            return role
        except self.iam.exceptions.NoSuchEntityException:
            return None

    def attached(self, name: str) -> set[str]:
        pages = self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
        return {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}

    def profiles_of(self, name: str) -> list[str]:
        found = self.iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
        return sorted(p["InstanceProfileName"] for p in found)

    def tags(self, name: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.iam.list_role_tags(RoleName=name)["Tags"]}

    def grants(self, key_arn: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.kms.list_grants(KeyId=key_arn)["Grants"]
        return found

    def snapshot(self, key_arn: str | None) -> dict[str, Any]:
        """IAM and KMS as rolekeeper shapes them, without the ids AWS assigns (RoleId, GrantId)."""
        roles = {}
        for page in self.iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                name = role["RoleName"]
                trust: Any = role["AssumeRolePolicyDocument"]  # boto3 decodes it
                roles[name] = {
                    "path": role["Path"],
                    "trust": sorted(
                        json.dumps(statement, sort_keys=True) for statement in trust.get("Statement", [])
                    ),
                    "description": role.get("Description", ""),
                    "attached": sorted(self.attached(name)),
                    "profiles": self.profiles_of(name),
                    "tags": self.tags(name),
                }
        profiles = {
            p["InstanceProfileName"]: sorted(r["RoleName"] for r in p["Roles"])
            for page in self.iam.get_paginator("list_instance_profiles").paginate()
            for p in page["InstanceProfiles"]
        }
        grants = (
            sorted([g["GranteePrincipal"], sorted(g["Operations"])] for g in self.grants(key_arn))
            if key_arn
            else []
        )
        return {"roles": roles, "instance_profiles": profiles, "grants": grants}


def grantee_arn() -> str:
    return f"arn:aws:iam::{os.environ['MOTO_ACCOUNT_ID']}:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet"


def refresh_grant_facts(aws: Aws, facts: dict[str, str]) -> None:
    if "key_arn" not in facts:
        return
    held = [g["GrantId"] for g in aws.grants(facts["key_arn"]) if g["GranteePrincipal"] == grantee_arn()]
    if len(held) == 1:
        facts["grant_id"] = held[0]
