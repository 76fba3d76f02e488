"""EventBridge events the healer receives: IAM/KMS CloudTrail records and the schedule."""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

# Every IAM call that can take away something a claim wants, and what the heal then checks
# (README "Healing" lists the same). DeleteServiceLinkedRole removes the whole role.
ALL = frozenset({"trust", "policies", "profile", "boundary", "tags"})
ROLE_EVENTS: dict[str, frozenset[str]] = {
    "DeleteRole": ALL,
    "DeleteServiceLinkedRole": ALL,
    "DetachRolePolicy": frozenset({"policies"}),
    "UpdateAssumeRolePolicy": frozenset({"trust"}),
    "RemoveRoleFromInstanceProfile": frozenset({"profile"}),
    "DeleteInstanceProfile": frozenset({"profile"}),
    "PutRolePermissionsBoundary": frozenset({"boundary"}),
    "DeleteRolePermissionsBoundary": frozenset({"boundary"}),
    "UntagRole": frozenset({"tags"}),
}
IAM_EVENTS = frozenset(ROLE_EVENTS)
KMS_EVENTS = frozenset({"RetireGrant", "RevokeGrant"})


class CloudTrailDetail(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    event_id: str = Field(alias="eventID")
    event_name: str = Field(alias="eventName")
    event_source: str = Field(alias="eventSource")
    recipient_account_id: str | None = Field(default=None, alias="recipientAccountId")
    error_code: str | None = Field(default=None, alias="errorCode")
    request_parameters: dict[str, Any] | None = Field(default=None, alias="requestParameters")
    # CloudTrail records some calls' responseElements (and additionalEventData) as a string or
    # null rather than an object: such a record still names its role in requestParameters.
    response_elements: Any = Field(default=None, alias="responseElements")
    additional_event_data: Any = Field(default=None, alias="additionalEventData")
    resources: list[dict[str, Any]] | None = None

    def parameter(self, name: str) -> str | None:
        for source in (self.request_parameters, self.response_elements, self.additional_event_data):
            value = source.get(name) if isinstance(source, dict) else None
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def key_arn(self) -> str | None:
        # RetireGrant records carry the key only in resources (requestParameters is null).
        for resource in self.resources or []:
            if resource.get("type") == "AWS::KMS::Key" and resource.get("ARN"):
                return str(resource["ARN"])
        return self.parameter("keyId")


class CloudTrailEvent(EventBridgeModel):
    detail_type: Literal["AWS API Call via CloudTrail"] = Field(alias="detail-type")
    source: Literal["aws.iam", "aws.kms"]
    detail: CloudTrailDetail


class ScheduledEvent(EventBridgeModel):
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")
    source: Literal["aws.events"]
    detail: dict[str, Any]
