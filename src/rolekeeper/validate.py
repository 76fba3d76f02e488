"""Check a consumer template before deploying it, with the function's own validation.

The rules are the function's: the property models (domain/properties.py) and the checks that
depend on the deployment's settings (domain/validation.py), and every finding is worded as the
Reason the function would answer. What differs is only what a template can know before deploy:

- CloudFormation sends every property as a string (true -> "true", 12 -> "12"): values are
  turned into what the function would receive.
- A value written as an intrinsic function (!Ref, !Sub, !GetAtt, !If, Fn::ImportValue, ...) is
  known only at deploy time: it is not judged, and neither is any finding that rests on it.
- The deployment's settings come from its template parameters (AllowedServiceNames,
  AllowedManagedPolicyArns, ApplicationRoleNamePrefix, AllowedTagKeys): given by the caller,
  else from the template's own `Metadata: rolekeeper:` block, else rolekeeper's defaults.

Used by `rolekeeper validate` (cli.py) and the cfn-lint rule (cfnlint_rules.py); `findings`
takes a template's text (YAML or JSON, whole or a fragment of Resources) and returns findings
with line numbers, in line order. PyYAML is needed for text (cfn-lint brings it); nothing here calls AWS.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rolekeeper.config import Settings
from rolekeeper.domain.catalog import FIXED_ROLE_NAMES, Scope
from rolekeeper.domain.errors import InvalidRequest
from rolekeeper.domain.properties import (
    RESOURCE_TYPES,
    SSM_CORE,
    Loc,
    Problem,
    model_for,
    own_properties,
    problems,
)
from rolekeeper.domain.validation import setting_problems

if TYPE_CHECKING:
    import yaml

# The template parameters that decide what the function accepts, with template.yaml's defaults
# (tests/unit/test_validate.py keeps them equal).
DEFAULTS: dict[str, str] = {
    "AllowedServiceNames": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
    "ecs.amazonaws.com,autoscaling.amazonaws.com",
    "AllowedManagedPolicyArns": "",
    "ApplicationRoleNamePrefix": "app-",
    "AllowedTagKeys": "",
    "AllowedPermissionsBoundaryArns": "",
}
METADATA_KEY = "rolekeeper"
DEFAULT_REGION = "us-east-1"
# Region name prefixes of the partitions other than aws.
PARTITIONS = (
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-isob-", "aws-iso-b"),
    ("us-isof-", "aws-iso-f"),
    ("us-iso-", "aws-iso"),
    ("eu-isoe-", "aws-iso-e"),
    ("eusc-", "aws-eusc"),
)


@dataclass(frozen=True)
class Finding:
    """One thing the function would refuse: where in the template (path from its root, and the
    1-based line, 0 if unknown), the resource's logical id, and the Reason's words."""

    path: Loc
    message: str
    resource: str = ""
    line: int = 0

    def __str__(self) -> str:
        return f"{self.line}: {self.resource + ': ' if self.resource else ''}{self.message}"


class _DeployTime:
    """A value known only at deploy time (an intrinsic function)."""

    def __repr__(self) -> str:
        return "<deploy-time value>"


DEPLOY_TIME = _DeployTime()


# --- settings ----------------------------------------------------------------------------------


def _values(value: Any) -> list[str]:
    """A CommaDelimitedList parameter's values, given as "a,b" or as a list."""
    items = value if isinstance(value, list | tuple) else [value]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def deployment_settings(parameters: Mapping[str, Any] | None = None) -> Settings:
    """The settings a rolekeeper stack deployed with these parameters gives its function (as
    template.yaml's Globals turn parameters into environment); DEFAULTS for what is not given."""
    given = {**DEFAULTS, **{k: v for k, v in (parameters or {}).items() if v is not None}}
    prefix = _values(given["ApplicationRoleNamePrefix"])
    return Settings(
        registry_table_name="",
        allowed_service_names=frozenset(_values(given["AllowedServiceNames"])),
        allowed_managed_policy_arns=frozenset(_values(given["AllowedManagedPolicyArns"])),
        heal_mode="heal",
        notification_topic_arn=None,
        heal_rate_limit=5,
        allowed_role_names=frozenset(FIXED_ROLE_NAMES) | {f"{p}*" for p in prefix[:1]},
        allowed_tag_keys=frozenset(_values(given["AllowedTagKeys"])),
        allowed_permissions_boundary_arns=frozenset(_values(given["AllowedPermissionsBoundaryArns"])),
    )


def scope_for(region: str) -> Scope:
    partition = next((p for start, p in PARTITIONS if region.startswith(start)), "aws")
    # The account is not known before deploy and no check depends on it.
    return Scope(partition=partition, region=region, account="000000000000")


def template_parameters(template: Any) -> tuple[dict[str, Any], list[Finding]]:
    """The parameters a template says its rolekeeper deployment has (Metadata: rolekeeper:)."""
    metadata = template.get("Metadata") if isinstance(template, dict) else None
    block = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if block is None:
        return {}, []
    at: Loc = ("Metadata", METADATA_KEY)
    if not isinstance(block, dict):
        return {}, [
            Finding(at, f"Metadata.{METADATA_KEY} must map parameters to values, e.g. AllowedTagKeys: team")
        ]
    found, given = [], {}
    for key, value in block.items():
        if key not in DEFAULTS:
            found.append(
                Finding(
                    (*at, str(key)),
                    f"Metadata.{METADATA_KEY}.{key} is not a parameter rolekeeper's checks depend on "
                    f"(known: {', '.join(DEFAULTS)})",
                )
            )
        elif not _intrinsic(value):
            given[str(key)] = value
    return given, found


# --- one resource ------------------------------------------------------------------------------


def _intrinsic(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and any(k == "Ref" or str(k).startswith("Fn::") for k in value)
    )


def as_sent(value: Any) -> Any:
    """A property value as CloudFormation would send it to the function: scalars as strings
    (booleans as "true"/"false"), and an intrinsic function as DEPLOY_TIME. A null is left out
    of a map (CloudFormation refuses nulls itself, and cfn-lint reports them)."""
    if _intrinsic(value):
        return DEPLOY_TIME
    if isinstance(value, dict):
        return {str(k): as_sent(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [DEPLOY_TIME if v is None else as_sent(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        return str(value)  # a plain str, also for a decoder's str subclass
    return value


def _deploy_time_paths(value: Any, at: Loc = ()) -> Iterator[Loc]:
    if value is DEPLOY_TIME:
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _deploy_time_paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _deploy_time_paths(item, (*at, index))


def _related(a: Loc, b: Loc) -> bool:
    """One path lies within the other (Tags and Tags[0].Key)."""
    return a[: len(b)] == b or b[: len(a)] == a


# Values that pass the models' own checks, tried in turn where a value is known only at deploy
# time or is wrong, so that the settings checks can still judge the other properties.
STAND_INS: tuple[Any, ...] = (
    "x",
    "true",
    "Retain",
    "/",
    "ecs-instance",
    "spotfleet.amazonaws.com",
    SSM_CORE,
    "arn:aws:iam::000000000000:root",
    "00000000-0000-0000-0000-000000000000",
    "Decrypt",
    [],
    ["Decrypt"],
    {},
    {"Key": "x", "Value": "x"},
)


def _put(data: Any, loc: Loc, value: Any) -> bool:
    parent = data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(parent, dict) and isinstance(loc[-1], str):
        parent[loc[-1]] = value
        return True
    if isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent):
        parent[loc[-1]] = value
        return True
    return False


def _with_stand_ins(
    model: type[BaseModel], given: dict[str, Any], unknown: list[Loc]
) -> tuple[Any, set[Loc]]:
    """The properties parsed with a stand-in wherever a value is unknown or refused (an unknown
    property removed), and the paths stood in for; (None, ...) if no stand-in passes."""
    data = copy.deepcopy(given)
    tried: dict[Loc, int] = {}
    for loc in unknown:
        tried[loc] = 0
        _put(data, loc, copy.deepcopy(STAND_INS[0]))
    for _round in range(4 * len(STAND_INS)):
        try:
            return model.model_validate(data, by_alias=True, by_name=False), set(tried)
        except ValidationError as error:
            for item in error.errors(include_url=False):
                loc = tuple(item["loc"])
                if not loc:
                    return None, set(tried)
                if item["type"] == "extra_forbidden":
                    parent: Any = data
                    for part in loc[:-1]:
                        parent = parent[part]
                    parent.pop(loc[-1], None)
                    tried[loc] = len(STAND_INS)
                    continue
                attempt = tried.get(loc, -1) + 1
                if attempt >= len(STAND_INS) or not _put(data, loc, copy.deepcopy(STAND_INS[attempt])):
                    return None, set(tried)
                tried[loc] = attempt
    return None, set(tried)


def check_properties(resource_type: str, properties: Any, settings: Settings, scope: Scope) -> list[Problem]:
    """The problems the function would report for these properties (as a template writes them),
    each as its Reason words it, leaving out what rests on a value known only at deploy time.
    The function stops at the first stage that fails (the models, then the settings); this
    reports the settings' problems too, where they do not rest on a refused value."""
    model = model_for(resource_type)
    if _intrinsic(properties):
        return []
    try:
        given = as_sent(own_properties(properties))
    except InvalidRequest as error:
        return [Problem((), str(error))]
    unknown = list(_deploy_time_paths(given))
    try:
        return setting_problems(model.model_validate(given, by_alias=True, by_name=False), settings, scope)
    except ValidationError as error:
        found = [p for p in problems(error, model) if not any(p.where[: len(u)] == u for u in unknown)]
    props, stood_in = _with_stand_ins(model, given, unknown)
    if props is not None:
        for problem in setting_problems(props, settings, scope):
            if not any(_related(p, s) for p in (problem.where, *problem.rests_on) for s in stood_in):
                found.append(problem)
    return found


# --- a template --------------------------------------------------------------------------------


def _resources(template: Any) -> tuple[Loc, dict[str, Any]]:
    """A whole template's Resources, or a fragment of one (logical id -> {Type: ...})."""
    if not isinstance(template, dict):
        return (), {}
    if "Resources" in template:
        resources = template["Resources"]
        return ("Resources",), resources if isinstance(resources, dict) else {}
    if template and all(isinstance(v, dict) and "Type" in v for v in template.values()):
        return (), template
    return (), {}


def check_template(
    template: Any, parameters: Mapping[str, Any] | None = None, region: str = DEFAULT_REGION
) -> list[Finding]:
    """Every finding in a decoded template (dicts and lists as json or yaml load them, intrinsic
    functions in their long form), without lines. parameters: the deployment's, by name."""
    declared, found = template_parameters(template)
    settings = deployment_settings({**declared, **(parameters or {})})
    scope = scope_for(region)
    at, resources = _resources(template)
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict):
            continue
        kind = resource.get("Type")
        base: Loc = (*at, str(logical_id))
        if kind in RESOURCE_TYPES:
            for problem in check_properties(str(kind), resource.get("Properties"), settings, scope):
                found.append(Finding((*base, "Properties", *problem.where), problem.message, str(logical_id)))
        elif isinstance(kind, str) and _looks_like_ours(kind):
            try:
                model_for(kind)
            except InvalidRequest as error:
                found.append(Finding((*base, "Type"), str(error), str(logical_id)))
    return found


def _looks_like_ours(kind: str) -> bool:
    """A misspelt rolekeeper type (Custom::ServiceLinkedRoles, custom::servicerole): the same but
    for case or one character. Other custom types (Custom::ServiceRoleV2) are someone else's."""
    return any(kind.lower() == ours.lower() or _one_edit(kind, ours) for ours in RESOURCE_TYPES)


def _one_edit(a: str, b: str) -> bool:
    """a becomes b by inserting, deleting or replacing one character."""
    if a == b:
        return False
    if len(a) < len(b):
        a, b = b, a
    if len(a) - len(b) > 1:
        return False
    start = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(b))
    rest = a[start + 1 :]
    return rest == b[start + 1 :] if len(a) == len(b) else rest == b[start:]


@cache
def _loader() -> type[yaml.SafeLoader]:
    import yaml

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        """YAML as CloudFormation reads it: short-form intrinsic functions (!Ref, !Sub, !GetAtt,
        !If, ...) become their long form ({"Ref": ...}, {"Fn::Sub": ...})."""

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", intrinsic)
    return Loader


def _line(root: yaml.Node, path: Loc) -> int:
    """The 1-based line of path in the document: of its key in a map, of its element in a list;
    where the path leaves the document (a property that is missing), of the deepest part found."""
    import yaml

    node, line = root, int(root.start_mark.line) + 1
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pair = next(
                (kv for kv in node.value if isinstance(kv[0], yaml.ScalarNode) and kv[0].value == part), None
            )
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load(text: str) -> tuple[Any, yaml.Node | None]:
    """A template's text (YAML or JSON) decoded, with its node tree for line numbers.
    Raises yaml.YAMLError when it is neither."""
    if text.lstrip().startswith("{"):
        # JSON is YAML but for tabs between tokens (a JSON string never holds a raw tab).
        text = text.replace("\t", " ")
    loader = _loader()(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, root


def findings(
    text: str, parameters: Mapping[str, Any] | None = None, region: str = DEFAULT_REGION
) -> list[Finding]:
    """What the function would refuse in a template's text (YAML or JSON, a whole template or a
    fragment of its Resources), each finding with its line. parameters: the rolekeeper
    deployment's template parameters by name (AllowedTagKeys: "team,env", ...); what is not
    given comes from the template's Metadata (rolekeeper:), else from rolekeeper's defaults."""
    import yaml

    try:
        data, root = load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        return [
            Finding(
                (),
                f"not a CloudFormation template (YAML or JSON): {problem}",
                line=mark.line + 1 if mark else 0,
            )
        ]
    if root is None:
        return []
    found = [
        Finding(f.path, f.message, f.resource, _line(root, f.path))
        for f in check_template(data, parameters, region)
    ]
    return sorted(found, key=lambda f: f.line)
