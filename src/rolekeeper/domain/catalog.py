"""What the AWS documentation asks for, as data: service-linked roles and role blueprints.

Sources: the AWS documentation pages (AWS Batch "Amazon EC2 Spot Fleet Role", EC2 "Spot Fleet permissions",
Batch "Amazon ECS instance role", Batch "AWS Batch service IAM role", Auto Scaling "IAM role for
applications that run on Amazon EC2 instances").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """Where a request runs: ARNs are built from this, never from a hard-coded `arn:aws`."""

    partition: str
    region: str
    account: str

    @classmethod
    def from_arn(cls, arn: str) -> Scope:
        parts = arn.split(":")
        if len(parts) < 6 or parts[0] != "arn" or not parts[4].isdigit():
            raise ValueError(f"not an ARN with an account: {arn!r}")
        return cls(partition=parts[1], region=parts[3], account=parts[4])

    def role_arn(self, name: str, path: str = "/") -> str:
        return f"arn:{self.partition}:iam::{self.account}:role{path}{name}"

    def instance_profile_arn(self, name: str, path: str = "/") -> str:
        return f"arn:{self.partition}:iam::{self.account}:instance-profile{path}{name}"

    def aws_policy_arn(self, name: str) -> str:
        return f"arn:{self.partition}:iam::aws:policy/{name}"


@dataclass(frozen=True)
class LinkedService:
    service_name: str
    role_name: str
    accepts_suffix: bool

    @property
    def path(self) -> str:
        return f"/aws-service-role/{self.service_name}/"

    def name_with(self, suffix: str | None) -> str:
        return f"{self.role_name}_{suffix}" if suffix else self.role_name


LINKED_SERVICES: dict[str, LinkedService] = {
    s.service_name: s
    for s in (
        LinkedService("spot.amazonaws.com", "AWSServiceRoleForEC2Spot", accepts_suffix=False),
        LinkedService("spotfleet.amazonaws.com", "AWSServiceRoleForEC2SpotFleet", accepts_suffix=False),
        LinkedService("batch.amazonaws.com", "AWSServiceRoleForBatch", accepts_suffix=False),
        LinkedService("ecs.amazonaws.com", "AWSServiceRoleForECS", accepts_suffix=False),
        LinkedService("autoscaling.amazonaws.com", "AWSServiceRoleForAutoScaling", accepts_suffix=True),
    )
}

SPOT_FLEET_SERVICE = "spotfleet.amazonaws.com"
SPOT_FLEET_ROLE_NAME = LINKED_SERVICES[SPOT_FLEET_SERVICE].role_name


def linked_service_for_role(role_name: str) -> LinkedService | None:
    for service in LINKED_SERVICES.values():
        if role_name == service.role_name or role_name.startswith(service.role_name + "_"):
            return service
    return None


@dataclass(frozen=True)
class Blueprint:
    name: str
    principal: str
    managed_policies: tuple[str, ...]
    default_role_name: str | None
    instance_profile: bool
    takes_managed_policy_arns: bool = False
    confused_deputy: bool = False

    def principals(self, partition: str) -> frozenset[str]:
        """Service principals that count as the blueprint's in an adopted role's trust policy."""
        names = {self.principal}
        if partition == "aws-cn":
            names.add(self.principal + ".cn")
        return frozenset(names)

    def policy_arns(self, scope: Scope) -> tuple[str, ...]:
        return tuple(scope.aws_policy_arn(p) for p in self.managed_policies)

    def trust_statement(self, scope: Scope, confused_deputy_protection: bool) -> dict[str, object]:
        statement: dict[str, object] = {
            "Effect": "Allow",
            "Principal": {"Service": self.principal},
            "Action": "sts:AssumeRole",
        }
        if self.confused_deputy and confused_deputy_protection:
            statement["Condition"] = {
                "StringEquals": {"aws:SourceAccount": scope.account},
                "ArnLike": {
                    "aws:SourceArn": f"arn:{scope.partition}:ec2:*:{scope.account}:spot-fleet-request/sfr-*"
                },
            }
        return statement


# The documented fixed names, each bound to the one blueprint it belongs to: the only roles
# rolekeeper adopts when it finds them already made (by the console's first-run experience, say).
# Any other name is create-only. AmazonEC2SpotFleetRole and AmazonEC2SpotFleetTaggingRole are the
# names AWS Batch's guides use for the Spot Fleet role.
FIXED_ROLE_NAMES: dict[str, str] = {
    "aws-ec2-spot-fleet-tagging-role": "spot-fleet-tagging",
    "AmazonEC2SpotFleetRole": "spot-fleet-tagging",
    "AmazonEC2SpotFleetTaggingRole": "spot-fleet-tagging",
    "ecsInstanceRole": "ecs-instance",
    "AWSBatchServiceRole": "batch-service",
}


def fixed_blueprint(role_name: str) -> str | None:
    """The blueprint a documented fixed name is bound to (IAM names are case-insensitive)."""
    for name, blueprint in FIXED_ROLE_NAMES.items():
        if name.lower() == role_name.lower():
            return blueprint
    return None


# rolekeeper marks every role it creates with this tag, so its IAM permissions (and anyone's
# iam:PassRole) can be conditioned on it. Keys under "rolekeeper:" are never accepted in Tags.
MARKER_TAG_KEY = "rolekeeper:managed"
MARKER_TAG_VALUE = "true"
RESERVED_TAG_PREFIX = "rolekeeper:"

# A customer managed key opts in to Custom::SpotFleetKmsGrant with this tag; the functions' KMS
# grant permissions carry the same condition (aws:ResourceTag).
KMS_OPT_IN_TAG_KEY = "rolekeeper:spot-fleet-grants"
KMS_OPT_IN_TAG_VALUE = "allow"


BLUEPRINTS: dict[str, Blueprint] = {
    b.name: b
    for b in (
        Blueprint(
            name="spot-fleet-tagging",
            principal="spotfleet.amazonaws.com",
            managed_policies=("service-role/AmazonEC2SpotFleetTaggingRole",),
            default_role_name="aws-ec2-spot-fleet-tagging-role",
            instance_profile=False,
            confused_deputy=True,
        ),
        Blueprint(
            name="ecs-instance",
            principal="ec2.amazonaws.com",
            managed_policies=("service-role/AmazonEC2ContainerServiceforEC2Role",),
            default_role_name="ecsInstanceRole",
            instance_profile=True,
        ),
        Blueprint(
            name="batch-service",
            principal="batch.amazonaws.com",
            managed_policies=("service-role/AWSBatchServiceRole",),
            default_role_name="AWSBatchServiceRole",
            instance_profile=False,
        ),
        Blueprint(
            name="ec2-application",
            principal="ec2.amazonaws.com",
            managed_policies=(),
            default_role_name=None,
            instance_profile=True,
            takes_managed_policy_arns=True,
        ),
    )
}

# The eight operations from "Grant access to CMKs for use with encrypted AMIs and EBS snapshots".
DEFAULT_GRANT_OPERATIONS: tuple[str, ...] = (
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "CreateGrant",
    "DescribeKey",
    "ReEncryptFrom",
    "ReEncryptTo",
)

# Every operation KMS accepts in a grant (botocore's kms GrantOperation enum).
GRANT_OPERATIONS: frozenset[str] = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
        "Sign",
        "Verify",
        "GetPublicKey",
        "CreateGrant",
        "RetireGrant",
        "DescribeKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateMac",
        "VerifyMac",
        "DeriveSharedSecret",
        "Encapsulate",
        "Decapsulate",
    }
)
