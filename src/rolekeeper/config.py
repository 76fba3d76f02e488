from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Literal

from rolekeeper.domain.catalog import FIXED_ROLE_NAMES

# Names Custom::ServiceRole may create or adopt when ALLOWED_ROLE_NAMES is unset: the blueprints'
# defaults and the name AWS Batch's documentation uses for the Spot Fleet role.
DEFAULT_ROLE_NAMES = frozenset(FIXED_ROLE_NAMES)


def _csv(name: str) -> frozenset[str]:
    return frozenset(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    registry_table_name: str
    allowed_service_names: frozenset[str]
    allowed_managed_policy_arns: frozenset[str]
    heal_mode: Literal["heal", "report"]
    notification_topic_arn: str | None
    heal_rate_limit: int
    allowed_role_names: frozenset[str]
    allowed_tag_keys: frozenset[str] = frozenset()
    # The boundaries a stack author may name (PermissionsBoundary); empty: none.
    allowed_permissions_boundary_arns: frozenset[str] = frozenset()
    verify_requests: bool = True
    # Under `sam local invoke` (no CloudFormation behind the request, no real ResponseURL).
    sam_local: bool = False
    region: str = ""
    org_event_bus_arn: str | None = None
    # Local runs only (make demo, the tests' HTTP receivers): a ResponseURL on this machine is
    # accepted besides CloudFormation's own. Never set by template.yaml.
    local_response_urls: bool = False


@cache
def settings() -> Settings:
    """Read once per cold start (template.yaml sets these). The only place that reads the environment."""
    mode = os.environ.get("HEAL_MODE", "heal").strip().lower()
    return Settings(
        registry_table_name=os.environ.get("REGISTRY_TABLE_NAME", "rolekeeper-registry"),
        allowed_service_names=_csv("ALLOWED_SERVICE_NAMES"),
        allowed_managed_policy_arns=_csv("ALLOWED_MANAGED_POLICY_ARNS"),
        heal_mode="report" if mode == "report" else "heal",
        notification_topic_arn=os.environ.get("NOTIFICATION_TOPIC_ARN") or None,
        heal_rate_limit=int(os.environ.get("HEAL_RATE_LIMIT", "5")),
        allowed_role_names=_csv("ALLOWED_ROLE_NAMES") or DEFAULT_ROLE_NAMES,
        allowed_tag_keys=_csv("ALLOWED_TAG_KEYS"),
        allowed_permissions_boundary_arns=_csv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS"),
        # Skipped under sam local (no CloudFormation behind the request) or by the operator.
        verify_requests=os.environ.get("VERIFY_REQUESTS", "true").strip().lower() != "false"
        and not os.environ.get("AWS_SAM_LOCAL"),
        sam_local=bool(os.environ.get("AWS_SAM_LOCAL")),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "",
        org_event_bus_arn=os.environ.get("ORG_EVENT_BUS_ARN") or None,
        local_response_urls=os.environ.get("LOCAL_RESPONSE_URLS", "").strip().lower() == "true",
    )
