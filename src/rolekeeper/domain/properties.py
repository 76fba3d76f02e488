"""Custom resource properties as CloudFormation sends them (every scalar may arrive as a string)."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

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


def _prop(
    alias: str, shape: str, example: str, *, item: tuple[str, str] | None = None, **constraints: Any
) -> Any:
    """A property as users write it: its name, what it must look like and an example. A Reason
    that refuses it is made of these words (and `rolekeeper validate` says the same). item: the
    same for one element of a list or map."""
    extra: JsonDict | None = {"item": list(item)} if item else None
    return Field(alias=alias, description=shape, examples=[example], json_schema_extra=extra, **constraints)


ROLE_NAME_SHAPE = "1-64 letters, digits or _+=,.@-"
POLICY_ARN_SHAPE = "an IAM policy ARN (arn:<partition>:iam::<account|aws>:policy/<name>)"
TAG_SHAPE = "letters, digits, spaces or _.:/=+-@"
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"

Bool = Annotated[bool, BeforeValidator(_bool)]
OnDelete = Annotated[Literal["Retain", "Delete"], BeforeValidator(_on_delete)]
RoleName = Annotated[str, _matching(ROLE_NAME, ROLE_NAME_SHAPE)]
RolePath = Annotated[
    str, _matching(ROLE_PATH, "/ or /<segments>/ of printable ASCII, at most 512 characters")
]
PolicyArn = Annotated[str, _matching(POLICY_ARN, POLICY_ARN_SHAPE)]

ON_DELETE = _prop("OnDelete", "Retain or Delete", "Retain")
HEAL = _prop("Heal", "true or false", "true")


class _Properties(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Tag(_Properties):
    key: Annotated[str, _matching(TAG_KEY, f"1-128 {TAG_SHAPE}"), _prop("Key", f"1-128 {TAG_SHAPE}", "team")]
    value: Annotated[
        str, _matching(TAG_VALUE, f"0-256 {TAG_SHAPE}"), _prop("Value", f"0-256 {TAG_SHAPE}", "platform")
    ]

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, key: str) -> str:
        if key.lower().startswith("aws:"):
            raise ValueError("must not start with aws: (AWS reserves it)")
        return key


class ServiceLinkedRoleProperties(_Properties):
    aws_service_name: Annotated[
        str,
        _prop(
            "AWSServiceName",
            f"one of {', '.join(sorted(LINKED_SERVICES))}",
            "spotfleet.amazonaws.com",
            min_length=1,
            max_length=128,
        ),
    ]
    custom_suffix: Annotated[
        str | None,
        _matching(ROLE_NAME, ROLE_NAME_SHAPE),
        _prop("CustomSuffix", ROLE_NAME_SHAPE, "fleet"),
    ] = None
    description: Annotated[
        str | None,
        _matching(DESCRIPTION, "at most 1000 printable characters"),
        _prop("Description", "at most 1000 printable characters", "Spot Fleet for the batch platform"),
    ] = None
    on_delete: Annotated[OnDelete, ON_DELETE] = "Retain"
    heal: Annotated[Bool, HEAL] = True

    @field_validator("aws_service_name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in LINKED_SERVICES:
            raise ValueError(f"must be one of {', '.join(sorted(LINKED_SERVICES))}")
        return name


class ServiceRoleProperties(_Properties):
    blueprint: Annotated[str, _prop("Blueprint", f"one of {', '.join(BLUEPRINTS)}", "ecs-instance")]
    role_name: Annotated[RoleName | None, _prop("RoleName", ROLE_NAME_SHAPE, "app-web")] = None
    path: Annotated[
        RolePath, _prop("Path", "/ or /<segments>/ of printable ASCII, at most 512 characters", "/batch/")
    ] = "/"
    managed_policy_arns: Annotated[
        tuple[PolicyArn, ...],
        _prop(
            "ManagedPolicyArns",
            "a list of at most 20 IAM policy ARNs",
            f"[{SSM_CORE}]",
            item=("an IAM policy ARN", SSM_CORE),
            max_length=20,
        ),
    ] = ()
    instance_profile: Annotated[Bool | None, _prop("InstanceProfile", "true or false", "true")] = None
    confused_deputy_protection: Annotated[
        Bool | None, _prop("ConfusedDeputyProtection", "true or false", "true")
    ] = None
    permissions_boundary: Annotated[
        PolicyArn | None,
        _prop("PermissionsBoundary", POLICY_ARN_SHAPE, "arn:aws:iam::123456789012:policy/app-boundary"),
    ] = None
    tags: Annotated[
        tuple[Tag, ...],
        _prop(
            "Tags",
            "a list of at most 50 {Key, Value} pairs",
            "[{Key: team, Value: platform}]",
            item=("a {Key, Value} pair", "{Key: team, Value: platform}"),
            max_length=50,
        ),
    ] = ()
    on_delete: Annotated[OnDelete, ON_DELETE] = "Retain"
    heal: Annotated[Bool, HEAL] = True

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
            raise ValueError("must not be a path AWS reserves (/aws-service-role/, /aws-reserved/)")
        return path

    @field_validator("tags")
    @classmethod
    def _unique_keys(cls, tags: tuple[Tag, ...]) -> tuple[Tag, ...]:
        seen: dict[str, str] = {}
        for tag in tags:
            if tag.key.lower() in seen:
                raise ValueError(
                    f"must have unique keys ({seen[tag.key.lower()]} and {tag.key}: IAM compares "
                    "them case-insensitively)"
                )
            seen[tag.key.lower()] = tag.key
        return tags


ENCRYPTION_CONTEXT = ("a map of at most 20 keys to text values", "{team: platform}")


class Constraints(_Properties):
    encryption_context_subset: Annotated[
        dict[str, str] | None,
        _prop("EncryptionContextSubset", *ENCRYPTION_CONTEXT, item=("text", "platform"), max_length=20),
    ] = None
    encryption_context_equals: Annotated[
        dict[str, str] | None,
        _prop("EncryptionContextEquals", *ENCRYPTION_CONTEXT, item=("text", "platform"), max_length=20),
    ] = None


class SpotFleetKmsGrantProperties(_Properties):
    key_id: Annotated[
        str,
        _prop(
            "KeyId",
            "a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>) or key id",
            "!GetAtt AmiKey.Arn",
        ),
    ]
    grantee_principal: Annotated[
        str | None,
        _matching(PRINCIPAL_ARN, "an IAM role ARN"),
        _prop(
            "GranteePrincipal",
            "this account's AWSServiceRoleForEC2SpotFleet role ARN (or leave it out)",
            "!GetAtt SpotFleetServiceLinkedRole.Arn",
        ),
    ] = None
    operations: Annotated[
        tuple[str, ...],
        _prop(
            "Operations",
            "a list of 1-19 KMS grant operations",
            "[Decrypt, DescribeKey]",
            item=("a KMS grant operation", "Decrypt"),
            min_length=1,
            max_length=19,
        ),
    ] = DEFAULT_GRANT_OPERATIONS
    constraints: Annotated[
        Constraints | None,
        _prop(
            "Constraints",
            "{EncryptionContextSubset: {...}} or {EncryptionContextEquals: {...}}",
            "{EncryptionContextSubset: {team: platform}}",
        ),
    ] = None
    retiring_principal: Annotated[
        str | None,
        _matching(PRINCIPAL_ARN, "an IAM principal ARN"),
        _prop(
            "RetiringPrincipal",
            "an IAM principal ARN (the account root, a role or a user)",
            "arn:aws:iam::123456789012:root",
        ),
    ] = None
    heal: Annotated[Bool, HEAL] = True

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
            raise ValueError(f"must be KMS grant operations ({_shown(unknown[0])} is not one)")
        return tuple(dict.fromkeys(operations))


Properties = ServiceLinkedRoleProperties | ServiceRoleProperties | SpotFleetKmsGrantProperties

RESOURCE_TYPES: dict[
    str, type[ServiceLinkedRoleProperties | ServiceRoleProperties | SpotFleetKmsGrantProperties]
] = {
    "Custom::ServiceLinkedRole": ServiceLinkedRoleProperties,
    "Custom::ServiceRole": ServiceRoleProperties,
    "Custom::SpotFleetKmsGrant": SpotFleetKmsGrantProperties,
}
# CloudFormation's own properties of every custom resource, not rolekeeper's.
CLOUDFORMATION_PROPERTIES = ("ServiceToken", "ServiceTimeout")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing to fix in a request's properties.

    where: the property, as a path into ResourceProperties (("Tags", 0, "Key") is Tags[0].Key);
    message: one sentence that starts with it and says what it must look like;
    rests_on: other properties the verdict depends on (rolekeeper validate drops a finding when
    one of them is known only at deploy time);
    known: for an unknown property, the names its owner knows (listed once per Reason)."""

    where: Loc
    message: str
    rests_on: tuple[Loc, ...] = ()
    known: str | None = None


class InvalidProperties(InvalidRequest):
    """The properties are wrong; problems says each thing to fix, the message is the Reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(reason(self.problems))


def where(loc: Loc) -> str:
    """("Tags", 0, "Key") -> Tags[0].Key, as the template writes it."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "Properties"


def _shown(name: object, limit: int = 40) -> str:
    """A name from the request as it may be shown: one line, at most limit characters."""
    text = " ".join(str(name).split()) or repr(str(name))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _submodel(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation]
    while candidates:
        current = candidates.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current
        candidates.extend(typing.get_args(current))
    return None


def _field_at(model: type[BaseModel], loc: Loc) -> tuple[FieldInfo | None, str, type[BaseModel] | None, Loc]:
    """The deepest property along loc: its field, its name, the model its elements are (Tag for
    Tags) and what of loc lies below it (an index, a map key)."""
    found: FieldInfo | None = None
    name, below = "", loc
    current: type[BaseModel] | None = model
    for index, part in enumerate(loc):
        if isinstance(part, int):
            continue
        field = None
        if current is not None:
            field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            break
        found, name, below = field, part, loc[index + 1 :]
        current = _submodel(field.annotation)
    return found, name, current, below


def _owner(model: type[BaseModel], loc: Loc) -> type[BaseModel]:
    """The (sub)model whose property sits at loc + (name,): Tag for Tags[0].Colour."""
    if not loc:
        return model
    field, _name, sub, below = _field_at(model, loc)
    if field is not None and sub is not None and all(isinstance(p, int) for p in below):
        return sub
    return model


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _suggestion(name: object, known: Sequence[str]) -> str | None:
    text = str(name)
    if len(text) > 64:
        return None
    same = [k for k in known if _squash(k) == _squash(text)]
    if same:
        return same[0]
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.8)
    return close[0] if close else None


def _example(field: FieldInfo | None, name: str, below: Loc) -> tuple[str, str]:
    """(what it must look like, an example) for the property or, below it, one element."""
    if field is None:
        return "", ""
    item = (field.json_schema_extra or {}).get("item") if isinstance(field.json_schema_extra, dict) else None
    if below and isinstance(item, list):
        return str(item[0]), str(item[1])
    example = field.examples[0] if field.examples else ""
    return field.description or "", f"{name}: {example}" if example else ""


def problems(error: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """Each of pydantic's errors as a Problem in the user's words: the property, what it must
    look like, an example. A required property that an unknown one looks like (AwsServiceName
    for AWSServiceName) is not also reported missing: the unknown one says "did you mean"."""
    found: list[Problem] = []
    meant: set[Loc] = set()
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        kind = item["type"]
        field, name, _sub, below = _field_at(model, loc)
        shape, example = _example(field, name, below)
        eg = f", e.g. {example}" if example else ""
        if kind == "extra_forbidden":
            names = [f.alias or n for n, f in _owner(model, loc[:-1]).model_fields.items()]
            known = ", ".join(names)
            guess = _suggestion(loc[-1], names)
            if guess is not None:
                meant.add((*loc[:-1], guess))
            hint = f": did you mean {guess}?" if guess else ""
            text = where((*loc[:-1], _shown(loc[-1])))
            found.append(Problem(loc, f"{text} is not a known property{hint} (known: {known})", known=known))
        elif kind == "missing":
            found.append(Problem(loc, f"{where(loc)} is required{eg}"))
        elif kind == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
            found.append(Problem(loc, f"{where(loc)} {message}{eg if message.startswith('must') else ''}"))
        elif kind == "too_long" and "actual_length" in item.get("ctx", {}):
            actual = item["ctx"]["actual_length"]
            found.append(Problem(loc, f"{where(loc)} must be {shape} ({actual:,} given){eg}"))
        else:
            # pydantic's own words ("Input should be a valid tuple") say nothing a template
            # author can act on: say what the property must look like instead.
            found.append(Problem(loc, f"{where(loc)} must be {shape or 'something else'}{eg}"))
    return [p for p in found if not (p.known is None and p.where in meant)]


def reason(found: Sequence[Problem]) -> str:
    """The Reason for these problems, in their order. Unknown properties of one object are named
    once, together (at most five; a count for the rest), with the known names listed once."""
    groups: dict[Loc, list[Problem]] = {}
    order: list[Problem | Loc] = []
    for problem in found:
        if problem.known is None:
            order.append(problem)
            continue
        owner = problem.where[:-1]
        if owner not in groups:
            groups[owner] = []
            order.append(owner)
        groups[owner].append(problem)
    parts = []
    for entry in order:
        if isinstance(entry, Problem):
            parts.append(entry.message)
            continue
        group = groups[entry]
        if len(group) == 1:
            parts.append(group[0].message)
            continue
        shown = [_unknown_name(p) for p in group[:5]]
        more = f" and {len(group) - 5:,} more" if len(group) > 5 else ""
        parts.append(f"{', '.join(shown)}{more} are not known properties (known: {group[0].known})")
    return "; ".join(parts)


def _unknown_name(problem: Problem) -> str:
    text = where((*problem.where[:-1], _shown(problem.where[-1])))
    guess = _suggestion(problem.where[-1], (problem.known or "").split(", "))
    return f"{text} (did you mean {guess}?)" if guess else text


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    """One short sentence per problem, naming the property and what it must look like."""
    return reason(problems(error, model))


def model_for(resource_type: str) -> type[Properties]:
    model = RESOURCE_TYPES.get(resource_type)
    if model is None:
        shown = repr(resource_type) if len(resource_type) <= 80 else repr(resource_type[:77]) + "..."
        raise InvalidRequest(
            f"ResourceType {shown} is not served here: use one of {', '.join(RESOURCE_TYPES)}"
        )
    return model


def own_properties(properties: Any) -> dict[str, Any]:
    """The request's properties without CloudFormation's own (ServiceToken, ServiceTimeout)."""
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise InvalidRequest("ResourceProperties must be an object")
    return {k: v for k, v in properties.items() if k not in CLOUDFORMATION_PROPERTIES}


def parse(resource_type: str, properties: Any) -> Properties:
    model = model_for(resource_type)
    given = own_properties(properties)
    try:
        return model.model_validate(given, by_alias=True, by_name=False)
    except ValidationError as error:
        raise InvalidProperties(problems(error, model)) from None
