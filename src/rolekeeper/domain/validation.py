"""What a request may ask for under the deployer's settings: properties (already parsed) turned
into the spec a claim stores, or an InvalidRequest whose message says what to fix. No AWS call."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from rolekeeper.config import Settings
from rolekeeper.domain.catalog import (
    BLUEPRINTS,
    FIXED_ROLE_NAMES,
    KMS_OPT_IN_TAG_KEY,
    KMS_OPT_IN_TAG_VALUE,
    LINKED_SERVICES,
    RESERVED_TAG_PREFIX,
    SPOT_FLEET_ROLE_NAME,
    Scope,
    fixed_blueprint,
)
from rolekeeper.domain.errors import InvalidRequest
from rolekeeper.domain.properties import (
    InvalidProperties,
    Loc,
    Problem,
    Properties,
    ServiceLinkedRoleProperties,
    ServiceRoleProperties,
    SpotFleetKmsGrantProperties,
    parse,
)
from rolekeeper.domain.specs import GrantSpec, LinkedRoleSpec, RoleSpec


def validate(resource_type: str, properties: Any, settings: Settings, scope: Scope) -> None:
    """Every check that needs no AWS call: bad input fails before anything is asked of AWS."""
    props = parse(resource_type, properties)
    if isinstance(props, ServiceLinkedRoleProperties):
        linked_role_spec(props, settings)
    elif isinstance(props, ServiceRoleProperties):
        role_spec(props, settings, scope)


def setting_problems(props: Properties, settings: Settings, scope: Scope) -> list[Problem]:
    """What the deployer's settings refuse in properties that parsed: every problem, each in the
    words its Reason uses (rolekeeper validate reports them before deploy)."""
    if isinstance(props, ServiceLinkedRoleProperties):
        return linked_role_problems(props, settings)
    if isinstance(props, ServiceRoleProperties):
        return role_problems(props, settings, scope)
    return []


def linked_role_spec(props: ServiceLinkedRoleProperties, settings: Settings) -> LinkedRoleSpec:
    problems = linked_role_problems(props, settings)
    if problems:
        raise InvalidProperties(problems)
    return LinkedRoleSpec(props.aws_service_name, props.custom_suffix, props.description)


def linked_role_problems(props: ServiceLinkedRoleProperties, settings: Settings) -> list[Problem]:
    found = []
    allowed = settings.allowed_service_names
    if props.aws_service_name not in allowed:
        choices = f"use one of {', '.join(sorted(allowed))}, or " if allowed else ""
        found.append(
            Problem(
                ("AWSServiceName",),
                f"AWSServiceName {props.aws_service_name} is not allowed by this stack: {choices}add it to "
                "the template parameter AllowedServiceNames",
            )
        )
    if props.custom_suffix and not LINKED_SERVICES[props.aws_service_name].accepts_suffix:
        takers = ", ".join(s.service_name for s in LINKED_SERVICES.values() if s.accepts_suffix)
        found.append(
            Problem(
                ("CustomSuffix",),
                f"CustomSuffix is not accepted by {props.aws_service_name}: remove it (only {takers} takes one)",
                rests_on=(("AWSServiceName",),),
            )
        )
    return found


def role_spec(props: ServiceRoleProperties, settings: Settings, scope: Scope) -> RoleSpec:
    problems = role_problems(props, settings, scope)
    if problems:
        raise InvalidProperties(problems)
    blueprint = BLUEPRINTS[props.blueprint]
    name = props.role_name or blueprint.default_role_name
    assert name is not None  # role_problems: RoleName is required for this blueprint
    protection = True if props.confused_deputy_protection is None else props.confused_deputy_protection
    return RoleSpec(
        blueprint=blueprint.name,
        name=name,
        path=props.path,
        trust_statement=blueprint.trust_statement(scope, protection),
        principals=tuple(sorted(blueprint.principals(scope.partition))),
        policy_arns=(*blueprint.policy_arns(scope), *props.managed_policy_arns),
        owned_policy_arns=props.managed_policy_arns,
        boundary=props.permissions_boundary,
        tags={t.key: t.value for t in props.tags},
        instance_profile=_instance_profile(props),
    )


def _instance_profile(props: ServiceRoleProperties) -> bool:
    default = BLUEPRINTS[props.blueprint].instance_profile
    return default if props.instance_profile is None else props.instance_profile


def role_problems(props: ServiceRoleProperties, settings: Settings, scope: Scope) -> list[Problem]:
    blueprint = BLUEPRINTS[props.blueprint]
    name = props.role_name or blueprint.default_role_name
    # The name is the RoleName given or, without one, the blueprint's default.
    named_by: Loc = ("RoleName",) if props.role_name else ("Blueprint",)
    found: list[Problem] = []
    if name is None:
        found.append(
            Problem(
                ("RoleName",),
                f"RoleName is required for Blueprint {blueprint.name}, e.g. RoleName: "
                f"{_prefixes(settings)[0] if _prefixes(settings) else 'app-'}web",
                rests_on=(("Blueprint",),),
            )
        )
    else:
        bound = fixed_blueprint(name)
        if bound is not None and bound != blueprint.name:
            found.append(
                Problem(
                    ("RoleName",),
                    f"RoleName {name} is the documented name for Blueprint {bound}, not {blueprint.name}: "
                    f"use Blueprint: {bound} or another RoleName",
                    rests_on=(named_by, ("Blueprint",)),
                )
            )
        if bound is None and props.path != "/":
            # IAM's "*" also matches "/": rolekeeper's permissions for prefixed names stop at "/".
            found.append(
                Problem(
                    ("Path",),
                    f"Path must be / for RoleName {name}: only the documented role names may use "
                    "another path, e.g. Path: /",
                    rests_on=(named_by,),
                )
            )
    found += tag_problems(props, settings)
    if name is not None and not role_name_allowed(name, settings):
        found.append(Problem(("RoleName",), _name_not_allowed(name, blueprint.name, settings), (named_by,)))
    if props.managed_policy_arns and not blueprint.takes_managed_policy_arns:
        found.append(
            Problem(
                ("ManagedPolicyArns",),
                f"ManagedPolicyArns is only for Blueprint ec2-application, not {blueprint.name}: remove it",
                rests_on=(("Blueprint",),),
            )
        )
    elif props.managed_policy_arns:
        allowed = settings.allowed_managed_policy_arns
        listed = ", ".join(sorted(allowed)) or "empty"
        for index, arn in enumerate(props.managed_policy_arns):
            if arn not in allowed:
                found.append(
                    Problem(
                        ("ManagedPolicyArns", index),
                        f"ManagedPolicyArns: {arn} is not in AllowedManagedPolicyArns: remove it or add it "
                        f"to that parameter (now: {listed})",
                    )
                )
    policies: list[tuple[Loc, str]] = [
        (("ManagedPolicyArns", i), a) for i, a in enumerate(props.managed_policy_arns)
    ]
    if props.permissions_boundary:
        policies.append((("PermissionsBoundary",), props.permissions_boundary))
    for loc, policy in policies:
        if policy.split(":")[1] != scope.partition:
            found.append(
                Problem(
                    loc,
                    f"{policy} is not in this partition ({scope.partition}): write it as "
                    "!Sub arn:${AWS::Partition}:iam::...",
                )
            )
        elif loc == ("PermissionsBoundary",) and not boundary_allowed(policy, settings):
            found.append(Problem(loc, _boundary_not_allowed(policy, settings)))
    if props.confused_deputy_protection is not None and not blueprint.confused_deputy:
        found.append(
            Problem(
                ("ConfusedDeputyProtection",),
                "ConfusedDeputyProtection is only for Blueprint spot-fleet-tagging, "
                f"not {blueprint.name}: remove it",
                rests_on=(("Blueprint",),),
            )
        )
    if _instance_profile(props) and blueprint.principal != "ec2.amazonaws.com":
        found.append(
            Problem(
                ("InstanceProfile",),
                f"InstanceProfile is only for roles EC2 assumes, not Blueprint {blueprint.name}: remove it",
                rests_on=(("Blueprint",),),
            )
        )
    return found


def check_tags(props: ServiceRoleProperties, settings: Settings) -> None:
    problems = tag_problems(props, settings)
    if problems:
        raise InvalidProperties(problems)


def tag_problems(props: ServiceRoleProperties, settings: Settings) -> list[Problem]:
    allowed = {k.lower() for k in settings.allowed_tag_keys}
    listed = ", ".join(sorted(settings.allowed_tag_keys)) or "empty"
    found = []
    for index, tag in enumerate(props.tags):
        at: Loc = ("Tags", index, "Key")
        if tag.key.lower().startswith(RESERVED_TAG_PREFIX):
            found.append(
                Problem(at, f"Tags: key {tag.key} is reserved for rolekeeper's own marker: use another key")
            )
        elif tag.key.lower() not in allowed:
            found.append(
                Problem(
                    at,
                    f"Tags: key {tag.key} is not in AllowedTagKeys: remove the tag or add the key to that "
                    f"parameter (now: {listed})",
                )
            )
    return found


def boundary_allowed(arn: str, settings: Settings) -> bool:
    """In AllowedPermissionsBoundaryArns, whose entries may use IAM's wildcards (* and ?) as the
    functions' ArnLike condition on iam:PermissionsBoundary does (template.yaml): each of the six
    colon-separated parts of the ARN matched on its own."""
    return any(arn_like(pattern, arn) for pattern in settings.allowed_permissions_boundary_arns)


def arn_like(pattern: str, arn: str) -> bool:
    """IAM's ArnLike: each colon-separated part (the sixth keeps its colons) matched with * and ?."""
    wanted, have = pattern.split(":", 5), arn.split(":", 5)
    return len(wanted) == len(have) == 6 and all(
        fnmatchcase(part, glob.replace("[", "[[]")) for glob, part in zip(wanted, have, strict=True)
    )


def _boundary_not_allowed(arn: str, settings: Settings) -> str:
    allowed = settings.allowed_permissions_boundary_arns
    if not allowed:
        return (
            f"PermissionsBoundary: this rolekeeper lets no stack set a permissions boundary "
            f"(AllowedPermissionsBoundaryArns is empty): remove PermissionsBoundary, or ask the "
            f"operator to add {arn} to that parameter"
        )
    return (
        f"PermissionsBoundary: {arn} is not in AllowedPermissionsBoundaryArns: use one of "
        f"{', '.join(sorted(allowed))}, or ask the operator to add it to that parameter"
    )


def role_name_allowed(name: str, settings: Settings) -> bool:
    # The same patterns scope the function's IAM permissions (template.yaml), where "*" is
    # the only wildcard that role names can meet.
    return any(fnmatchcase(name, pattern) for pattern in settings.allowed_role_names)


def _prefixes(settings: Settings) -> list[str]:
    return sorted(p[:-1] for p in settings.allowed_role_names if p.endswith("*") and "*" not in p[:-1])


def _name_not_allowed(name: str, blueprint: str, settings: Settings) -> str:
    prefixes = _prefixes(settings)
    documented = [n for n, b in FIXED_ROLE_NAMES.items() if b == blueprint and role_name_allowed(n, settings)]
    if not prefixes:
        names = ", ".join(sorted(p for p in settings.allowed_role_names)) or "none"
        return f"RoleName {name} is not allowed by this stack (it allows {names})"
    start = " or ".join(prefixes)
    also = f", or the documented name {' or '.join(documented)}" if documented else ""
    return (
        f"RoleName {name} is not allowed by this stack: use a name starting with {start} (the template "
        f"parameter ApplicationRoleNamePrefix){also}, e.g. RoleName: {prefixes[0]}web"
    )


def grant_spec(
    props: SpotFleetKmsGrantProperties,
    key: dict[str, Any],
    key_tags: dict[str, str],
    grantee: dict[str, Any] | None,
    scope: Scope,
    stack_id: str,
    logical_id: str,
) -> GrantSpec:
    """The grant a request asks for, given the key (DescribeKey's KeyMetadata and its tags) and
    the grantee role as IAM returns it (None: missing)."""
    if key.get("KeyManager") != "CUSTOMER":
        raise InvalidRequest(
            f"KeyId {props.key_id} is an AWS managed key; grants need a customer managed key"
        )
    if key.get("KeyState") in ("PendingDeletion", "PendingReplicaDeletion", "Unavailable"):
        raise InvalidRequest(f"KeyId {props.key_id} is {key['KeyState']}")
    if key_tags.get(KMS_OPT_IN_TAG_KEY) != KMS_OPT_IN_TAG_VALUE:
        raise InvalidRequest(
            f"KeyId {props.key_id} has not opted in: tag the key {KMS_OPT_IN_TAG_KEY}={KMS_OPT_IN_TAG_VALUE} "
            "(rolekeeper may grant on such keys only)"
        )
    if grantee is None:
        raise InvalidRequest(
            f"{SPOT_FLEET_ROLE_NAME} does not exist in this account; create it with "
            "Custom::ServiceLinkedRole (spotfleet.amazonaws.com) and DependsOn"
        )
    if props.grantee_principal and props.grantee_principal not in (
        grantee["Arn"],
        scope.role_arn(SPOT_FLEET_ROLE_NAME),
    ):
        raise InvalidRequest(
            f"GranteePrincipal must be this account's {SPOT_FLEET_ROLE_NAME} ({grantee['Arn']})"
        )
    constraints = (
        props.constraints.model_dump(by_alias=True, exclude_none=True) if props.constraints else None
    )
    return GrantSpec(
        key_arn=key["Arn"],
        grantee_role_name=SPOT_FLEET_ROLE_NAME,
        operations=props.operations,
        constraints=constraints or None,
        retiring_principal=props.retiring_principal,
        stack_id=stack_id,
        logical_id=logical_id,
    )
