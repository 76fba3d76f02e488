"""Custom resource properties as CloudFormation sends them (every scalar may arrive as a string)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from rolekeeper.domain.catalog import BLUEPRINTS, DEFAULT_GRANT_OPERATIONS, GRANT_OPERATIONS, LINKED_SERVICES
from rolekeeper.domain.errors import InvalidRequest

ROLE_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")
ROLE_PATH = re.compile(r"^/$|^/[\x21-\x7E]{1,510}/$")
POLICY_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::(aws|\d{12}):policy/[\x21-\x7E]{1,1024}$")
PRINCIPAL_ARN = re.compile(
    r"^arn:aws(-[a-z]+)*:iam::\d{12}:(root|role/[\x21-\x7E]{1,575}|user/[\x21-\x7E]{1,575})$"
)
KEY_UUID = r"(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
KEY_ARN = re.compile(rf"^arn:aws(-[a-z]+)*:kms:[a-z0-9-]{{1,32}}:\d{{12}}:key/{KEY_UUID}$")
KEY_ID = re.compile(rf"^{KEY_UUID}$")
TAG_KEY = re.compile(r"^[\w\s.:/=+\-@]{1,128}$")
TAG_VALUE = re.compile(r"^[\w\s.:/=+\-@]{0,256}$")
DESCRIPTION = re.compile(r"^[\t\n\r\x20-\x7E\xA1-\xFF]{0,1000}$")


def _bool(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false")


def _on_delete(value: Any) -> Any:
    if isinstance(value, str):
        for choice in ("Retain", "Delete"):
            if value.strip().lower() == choice.lower():
                return choice
    raise ValueError("must be Retain or Delete")


def _matching(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return BeforeValidator(check)


Bool = Annotated[bool, BeforeValidator(_bool)]
OnDelete = Annotated[Literal["Retain", "Delete"], BeforeValidator(_on_delete)]
RoleName = Annotated[str, _matching(ROLE_NAME, "1-64 of A-Z a-z 0-9 _+=,.@-")]
RolePath = Annotated[str, _matching(ROLE_PATH, "/ or /segment/.../ of printable ASCII, at most 512")]
PolicyArn = Annotated[
    str, _matching(POLICY_ARN, "an IAM policy ARN (arn:<partition>:iam::<account|aws>:policy/...)")
]


class _Properties(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Tag(_Properties):
    key: Annotated[str, _matching(TAG_KEY, "1-128 letters, digits, spaces or _.:/=+-@"), Field(alias="Key")]
    value: Annotated[
        str, _matching(TAG_VALUE, "0-256 letters, digits, spaces or _.:/=+-@"), Field(alias="Value")
    ]

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, key: str) -> str:
        if key.lower().startswith("aws:"):
            raise ValueError("must not start with aws: (reserved)")
        return key


class ServiceLinkedRoleProperties(_Properties):
    aws_service_name: Annotated[str, Field(alias="AWSServiceName", min_length=1, max_length=128)]
    custom_suffix: Annotated[
        str | None, _matching(ROLE_NAME, "1-64 of A-Z a-z 0-9 _+=,.@-"), Field(alias="CustomSuffix")
    ] = None
    description: Annotated[
        str | None, _matching(DESCRIPTION, "at most 1000 printable characters"), Field(alias="Description")
    ] = None
    on_delete: Annotated[OnDelete, Field(alias="OnDelete")] = "Retain"
    heal: Annotated[Bool, Field(alias="Heal")] = True

    @field_validator("aws_service_name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in LINKED_SERVICES:
            raise ValueError(f"must be one of {', '.join(sorted(LINKED_SERVICES))}")
        return name


class ServiceRoleProperties(_Properties):
    blueprint: Annotated[str, Field(alias="Blueprint")]
    role_name: Annotated[RoleName | None, Field(alias="RoleName")] = None
    path: Annotated[RolePath, Field(alias="Path")] = "/"
    managed_policy_arns: Annotated[
        tuple[PolicyArn, ...], Field(alias="ManagedPolicyArns", max_length=20)
    ] = ()
    instance_profile: Annotated[Bool | None, Field(alias="InstanceProfile")] = None
    confused_deputy_protection: Annotated[Bool | None, Field(alias="ConfusedDeputyProtection")] = None
    permissions_boundary: Annotated[PolicyArn | None, Field(alias="PermissionsBoundary")] = None
    tags: Annotated[tuple[Tag, ...], Field(alias="Tags", max_length=50)] = ()
    on_delete: Annotated[OnDelete, Field(alias="OnDelete")] = "Retain"
    heal: Annotated[Bool, Field(alias="Heal")] = True

    @field_validator("blueprint")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BLUEPRINTS:
            raise ValueError(f"must be one of {', '.join(BLUEPRINTS)}")
        return name

    @field_validator("path")
    @classmethod
    def _not_reserved(cls, path: str) -> str:
        if path.startswith(("/aws-service-role/", "/aws-reserved/", "/service-role/aws-")):
            raise ValueError("must not be a path AWS reserves")
        return path

    @field_validator("tags")
    @classmethod
    def _unique_keys(cls, tags: tuple[Tag, ...]) -> tuple[Tag, ...]:
        keys = [t.key.lower() for t in tags]
        if len(keys) != len(set(keys)):
            raise ValueError("keys must be unique (IAM compares them case-insensitively)")
        return tags


class Constraints(_Properties):
    encryption_context_subset: Annotated[
        dict[str, str] | None, Field(alias="EncryptionContextSubset", max_length=20)
    ] = None
    encryption_context_equals: Annotated[
        dict[str, str] | None, Field(alias="EncryptionContextEquals", max_length=20)
    ] = None


class SpotFleetKmsGrantProperties(_Properties):
    key_id: Annotated[str, Field(alias="KeyId")]
    grantee_principal: Annotated[
        str | None, _matching(PRINCIPAL_ARN, "an IAM role ARN"), Field(alias="GranteePrincipal")
    ] = None
    operations: Annotated[tuple[str, ...], Field(alias="Operations", min_length=1, max_length=19)] = (
        DEFAULT_GRANT_OPERATIONS
    )
    constraints: Annotated[Constraints | None, Field(alias="Constraints")] = None
    retiring_principal: Annotated[
        str | None, _matching(PRINCIPAL_ARN, "an IAM principal ARN"), Field(alias="RetiringPrincipal")
    ] = None
    heal: Annotated[Bool, Field(alias="Heal")] = True

    @field_validator("key_id")
    @classmethod
    def _key(cls, key_id: str) -> str:
        if not (KEY_ARN.fullmatch(key_id) or KEY_ID.fullmatch(key_id)):
            raise ValueError(
                "must be a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>) or key id"
            )
        return key_id

    @field_validator("operations")
    @classmethod
    def _operations(cls, operations: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in operations if op not in GRANT_OPERATIONS]
        if unknown:
            raise ValueError(
                f"unknown operation {unknown[0]!r}; allowed: {', '.join(DEFAULT_GRANT_OPERATIONS)}, ..."
            )
        return tuple(dict.fromkeys(operations))


Properties = ServiceLinkedRoleProperties | ServiceRoleProperties | SpotFleetKmsGrantProperties

RESOURCE_TYPES: dict[
    str, type[ServiceLinkedRoleProperties | ServiceRoleProperties | SpotFleetKmsGrantProperties]
] = {
    "Custom::ServiceLinkedRole": ServiceLinkedRoleProperties,
    "Custom::ServiceRole": ServiceRoleProperties,
    "Custom::SpotFleetKmsGrant": SpotFleetKmsGrantProperties,
}


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "Properties"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The (sub)model that owns the field at loc, e.g. Tag for Tags[0].Colour."""
    import typing

    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return current
        candidates = [field.annotation]
        while candidates:
            annotation = candidates.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                current = annotation
                break
            candidates.extend(typing.get_args(annotation))
    return current


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    """One short sentence per problem, naming the property and what is allowed."""
    problems = []
    for item in error.errors(include_url=False):
        where = _where(tuple(item["loc"]))
        kind = item["type"]
        if kind == "missing":
            problems.append(f"{where} is required")
        elif kind == "extra_forbidden":
            owner = _model_at(model, tuple(item["loc"])[:-1])
            known = ", ".join(f.alias or n for n, f in owner.model_fields.items())
            problems.append(f"{where} is not a known property (known: {known})")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(
                f"{where} {message[0].lower()}{message[1:]}" if message else f"{where} is invalid"
            )
    return "; ".join(problems)


def parse(resource_type: str, properties: Any) -> Properties:
    model = RESOURCE_TYPES.get(resource_type)
    if model is None:
        raise InvalidRequest(
            f"ResourceType {resource_type!r} is not served here; use one of {', '.join(RESOURCE_TYPES)}"
        )
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise InvalidRequest("ResourceProperties must be an object")
    # ServiceToken and ServiceTimeout belong to CloudFormation's custom resource, not to us.
    given = {k: v for k, v in properties.items() if k not in ("ServiceToken", "ServiceTimeout")}
    try:
        return model.model_validate(given, by_alias=True, by_name=False)
    except ValidationError as error:
        raise InvalidRequest(describe(error, model)) from None
