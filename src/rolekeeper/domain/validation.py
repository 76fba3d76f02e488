"""What a request may ask for under the deployer's settings: properties (already parsed) turned
into the spec a claim stores, or an InvalidRequest whose message says what to fix. No AWS call."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from rolekeeper.config import Settings
from rolekeeper.domain.catalog import (
    BLUEPRINTS,
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


def linked_role_spec(props: ServiceLinkedRoleProperties, settings: Settings) -> LinkedRoleSpec:
    allowed = settings.allowed_service_names
    if props.aws_service_name not in allowed:
        raise InvalidRequest(
            f"AWSServiceName {props.aws_service_name} is not allowed by this stack; "
            f"AllowedServiceNames: {', '.join(sorted(allowed)) or '(none)'}"
        )
    if props.custom_suffix and not LINKED_SERVICES[props.aws_service_name].accepts_suffix:
        raise InvalidRequest(f"CustomSuffix is not accepted by {props.aws_service_name}; remove it")
    return LinkedRoleSpec(props.aws_service_name, props.custom_suffix, props.description)


def role_spec(props: ServiceRoleProperties, settings: Settings, scope: Scope) -> RoleSpec:
    blueprint = BLUEPRINTS[props.blueprint]
    name = props.role_name or blueprint.default_role_name
    if name is None:
        raise InvalidRequest(f"RoleName is required for Blueprint {blueprint.name}")
    bound = fixed_blueprint(name)
    if bound is not None and bound != blueprint.name:
        raise InvalidRequest(
            f"RoleName {name} is the documented name for Blueprint {bound}, not {blueprint.name}"
        )
    if bound is None and props.path != "/":
        # IAM's "*" also matches "/": rolekeeper's permissions for prefixed names stop at "/".
        raise InvalidRequest(
            f"Path must be / for RoleName {name}; only the documented role names may use another path"
        )
    check_tags(props, settings)
    if not role_name_allowed(name, settings):
        raise InvalidRequest(
            f"RoleName {name} is not allowed by this stack; AllowedRoleNames: "
            f"{', '.join(sorted(settings.allowed_role_names))}"
        )
    if props.managed_policy_arns and not blueprint.takes_managed_policy_arns:
        raise InvalidRequest(f"ManagedPolicyArns is only for Blueprint ec2-application, not {blueprint.name}")
    allowed = settings.allowed_managed_policy_arns
    for arn in props.managed_policy_arns:
        if arn not in allowed:
            raise InvalidRequest(
                f"ManagedPolicyArns: {arn} is not in AllowedManagedPolicyArns "
                f"({', '.join(sorted(allowed)) or 'empty'})"
            )
    for policy in (*props.managed_policy_arns, props.permissions_boundary):
        if policy and policy.split(":")[1] != scope.partition:
            raise InvalidRequest(f"{policy} is not in this partition ({scope.partition})")
    if props.confused_deputy_protection is not None and not blueprint.confused_deputy:
        raise InvalidRequest(
            f"ConfusedDeputyProtection is only for Blueprint spot-fleet-tagging, not {blueprint.name}"
        )
    instance_profile = (
        blueprint.instance_profile if props.instance_profile is None else props.instance_profile
    )
    if instance_profile and blueprint.principal != "ec2.amazonaws.com":
        raise InvalidRequest(f"InstanceProfile is only for roles EC2 assumes, not Blueprint {blueprint.name}")
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
        instance_profile=instance_profile,
    )


def check_tags(props: ServiceRoleProperties, settings: Settings) -> None:
    allowed = {k.lower() for k in settings.allowed_tag_keys}
    for tag in props.tags:
        if tag.key.lower().startswith(RESERVED_TAG_PREFIX):
            raise InvalidRequest(f"Tags: key {tag.key} is reserved for rolekeeper's own marker")
        if tag.key.lower() not in allowed:
            raise InvalidRequest(
                f"Tags: key {tag.key} is not in AllowedTagKeys "
                f"({', '.join(sorted(settings.allowed_tag_keys)) or 'empty'})"
            )


def role_name_allowed(name: str, settings: Settings) -> bool:
    # The same patterns scope the function's IAM permissions (template.yaml), where "*" is
    # the only wildcard that role names can meet.
    return any(fnmatchcase(name, pattern) for pattern in settings.allowed_role_names)


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
