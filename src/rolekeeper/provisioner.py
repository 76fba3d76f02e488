"""What each custom resource request does: validate, converge, record the claim, answer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper import iam, kms, ownership
from rolekeeper.catalog import (
    BLUEPRINTS,
    KMS_OPT_IN_TAG_KEY,
    KMS_OPT_IN_TAG_VALUE,
    LINKED_SERVICES,
    RESERVED_TAG_PREFIX,
    SPOT_FLEET_ROLE_NAME,
    Scope,
    fixed_blueprint,
)
from rolekeeper.config import Settings
from rolekeeper.errors import InvalidRequest
from rolekeeper.models import (
    ServiceLinkedRoleProperties,
    ServiceRoleProperties,
    SpotFleetKmsGrantProperties,
    parse,
)
from rolekeeper.reconcile import (
    GrantSpec,
    LinkedRoleSpec,
    RoleOutcome,
    RoleSpec,
    converge_grant,
    converge_linked_role,
    converge_role,
    prune_role,
    role_attrs,
    undo_created_role,
)
from rolekeeper.registry import Claim, ObjectGone, Record, Registry, grant_key, role_key

logger = Logger(child=True)

ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role(/(?:[\x21-\x7E]*/)?)([A-Za-z0-9_+=,.@-]{1,64})$")
GRANT_PHYSICAL_ID = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+#[A-Za-z0-9]{1,128}$")


@dataclass(frozen=True)
class Request:
    request_type: str
    resource_type: str
    stack_id: str
    logical_id: str
    properties: dict[str, Any]
    old_properties: dict[str, Any] | None = None
    physical_id: str | None = None
    # Where the function runs (from its own ARN); the StackId was checked against it.
    identity: Scope | None = None

    @property
    def scope(self) -> Scope:
        return self.identity or Scope.from_arn(self.stack_id)

    @property
    def claim_sk(self) -> str:
        return Claim(self.stack_id, self.logical_id).sk


@dataclass
class Response:
    physical_id: str
    data: dict[str, str] = field(default_factory=dict)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _role_data(outcome: RoleOutcome, created: bool) -> dict[str, str]:
    data = {
        "RoleName": outcome.name,
        "Arn": outcome.arn,
        "RoleId": outcome.role_id,
        "Created": _flag(created),
    }
    if outcome.instance_profile_name and outcome.instance_profile_arn:
        data["InstanceProfileName"] = outcome.instance_profile_name
        data["InstanceProfileArn"] = outcome.instance_profile_arn
    return data


class Provisioner:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    # --- Create / Update -----------------------------------------------------------------------

    def converge(self, request: Request) -> Response:
        props = parse(request.resource_type, request.properties)
        if isinstance(props, ServiceLinkedRoleProperties):
            return self._linked_role(request, props)
        if isinstance(props, ServiceRoleProperties):
            return self._service_role(request, props)
        return self._grant(request, props)

    def validate(self, request: Request) -> None:
        """Every check that needs no AWS call: bad input fails before anything is asked of AWS."""
        props = parse(request.resource_type, request.properties)
        if isinstance(props, ServiceLinkedRoleProperties):
            self.linked_role_spec(props)
        elif isinstance(props, ServiceRoleProperties):
            self.role_spec(props, request.scope)

    def linked_role_spec(self, props: ServiceLinkedRoleProperties) -> LinkedRoleSpec:
        allowed = self.settings.allowed_service_names
        if props.aws_service_name not in allowed:
            raise InvalidRequest(
                f"AWSServiceName {props.aws_service_name} is not allowed by this stack; "
                f"AllowedServiceNames: {', '.join(sorted(allowed)) or '(none)'}"
            )
        if props.custom_suffix and not LINKED_SERVICES[props.aws_service_name].accepts_suffix:
            raise InvalidRequest(f"CustomSuffix is not accepted by {props.aws_service_name}; remove it")
        return LinkedRoleSpec(props.aws_service_name, props.custom_suffix, props.description)

    def _linked_role(self, request: Request, props: ServiceLinkedRoleProperties) -> Response:
        spec = self.linked_role_spec(props)
        outcome = converge_linked_role(spec)
        claim = Claim(request.stack_id, request.logical_id, props.heal, props.on_delete, wants=spec.to_dict())
        created = self._record(
            role_key(outcome.name),
            "slr",
            spec.to_dict(),
            outcome,
            claim,
            rollback=lambda: iam.delete_service_linked_role(outcome.name),
        )
        logger.info("service-linked role converged", role_name=outcome.name, changes=outcome.changes)
        return Response(outcome.arn, _role_data(outcome, created))

    def role_spec(self, props: ServiceRoleProperties, scope: Scope) -> RoleSpec:
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
        self.check_tags(props)
        if not self.role_name_allowed(name):
            raise InvalidRequest(
                f"RoleName {name} is not allowed by this stack; AllowedRoleNames: "
                f"{', '.join(sorted(self.settings.allowed_role_names))}"
            )
        if props.managed_policy_arns and not blueprint.takes_managed_policy_arns:
            raise InvalidRequest(
                f"ManagedPolicyArns is only for Blueprint ec2-application, not {blueprint.name}"
            )
        allowed = self.settings.allowed_managed_policy_arns
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
            raise InvalidRequest(
                f"InstanceProfile is only for roles EC2 assumes, not Blueprint {blueprint.name}"
            )
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

    def check_tags(self, props: ServiceRoleProperties) -> None:
        allowed = {k.lower() for k in self.settings.allowed_tag_keys}
        for tag in props.tags:
            if tag.key.lower().startswith(RESERVED_TAG_PREFIX):
                raise InvalidRequest(f"Tags: key {tag.key} is reserved for rolekeeper's own marker")
            if tag.key.lower() not in allowed:
                raise InvalidRequest(
                    f"Tags: key {tag.key} is not in AllowedTagKeys "
                    f"({', '.join(sorted(self.settings.allowed_tag_keys)) or 'empty'})"
                )

    def role_name_allowed(self, name: str) -> bool:
        # The same patterns scope the function's IAM permissions (template.yaml), where "*" is
        # the only wildcard that role names can meet.
        return any(fnmatchcase(name, pattern) for pattern in self.settings.allowed_role_names)

    def _service_role(self, request: Request, props: ServiceRoleProperties) -> Response:
        spec = self.role_spec(props, request.scope)
        key = role_key(spec.name)
        record = self.registry.get(key)
        others = ownership.other_wants(record, request.claim_sk)
        if problem := ownership.conflict(spec, others):
            raise InvalidRequest(problem)
        desired = ownership.union([spec, *others])
        outcome = converge_role(
            desired,
            added=ownership.added_of(record),
            created_role_id=ownership.created_role_id(record),
            adoption_refusal=lambda role: ownership.adoption_refusal(
                spec, role, props.confused_deputy_protection
            ),
            prune=request.request_type == "Update",
        )
        claim = Claim(request.stack_id, request.logical_id, props.heal, props.on_delete, wants=spec.to_dict())
        created = self._record(
            key,
            "role",
            desired.to_dict(),
            outcome,
            claim,
            rollback=lambda: undo_created_role(spec.name, profile_created="profile" in outcome.made),
        )
        self.registry.taken_away(key, outcome.removed)
        logger.info("service role converged", role_name=spec.name, changes=outcome.changes)
        return Response(outcome.arn, _role_data(outcome, created))

    def _record(
        self, key: str, kind: str, desired: dict[str, Any], outcome: RoleOutcome, claim: Claim, rollback: Any
    ) -> bool:
        try:
            created = self.registry.record(
                key,
                kind,
                desired,
                created_now=outcome.created or outcome.ours,
                attrs=role_attrs(outcome),
                added=outcome.added,
            )
            self.registry.claim(key, claim)
        except Exception:
            if outcome.created:
                logger.warning(
                    "registry write failed; removing the role this request created", role_name=outcome.name
                )
                try:
                    rollback()
                except Exception:
                    logger.exception("could not remove the role this request created", role_name=outcome.name)
                try:  # and the record that says rolekeeper created it, or a later adopter could delete theirs
                    self.registry.forget(key)
                except Exception:
                    logger.exception("could not remove the registry record", key=key)
            raise
        return created

    def grant_spec(
        self, request: Request, props: SpotFleetKmsGrantProperties
    ) -> tuple[GrantSpec, dict[str, Any]]:
        scope = request.scope
        key = kms.describe_key(props.key_id)
        if key.get("KeyManager") != "CUSTOMER":
            raise InvalidRequest(
                f"KeyId {props.key_id} is an AWS managed key; grants need a customer managed key"
            )
        if key.get("KeyState") in ("PendingDeletion", "PendingReplicaDeletion", "Unavailable"):
            raise InvalidRequest(f"KeyId {props.key_id} is {key['KeyState']}")
        if kms.key_tags(key["Arn"]).get(KMS_OPT_IN_TAG_KEY) != KMS_OPT_IN_TAG_VALUE:
            raise InvalidRequest(
                f"KeyId {props.key_id} has not opted in: tag the key {KMS_OPT_IN_TAG_KEY}={KMS_OPT_IN_TAG_VALUE} "
                "(rolekeeper may grant on such keys only)"
            )
        grantee = iam.get_role(SPOT_FLEET_ROLE_NAME)
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
        spec = GrantSpec(
            key_arn=key["Arn"],
            grantee_role_name=SPOT_FLEET_ROLE_NAME,
            operations=props.operations,
            constraints=constraints or None,
            retiring_principal=props.retiring_principal,
            stack_id=request.stack_id,
            logical_id=request.logical_id,
        )
        return spec, grantee

    def _grant(self, request: Request, props: SpotFleetKmsGrantProperties) -> Response:
        spec, grantee = self.grant_spec(request, props)
        outcome = converge_grant(spec, grantee)
        physical_id = f"{spec.key_arn}#{outcome.grant_id}"
        key = grant_key(physical_id)
        try:
            self.registry.record(
                key,
                "grant",
                spec.to_dict(),
                created_now=True,
                attrs={
                    "key_arn": spec.key_arn,
                    "grant_id": outcome.grant_id,
                    "grant_name": outcome.name,
                    "grantee_arn": outcome.grantee_arn,
                    "grantee_role": spec.grantee_role_name.lower(),
                    "grantee_role_id": outcome.grantee_role_id,
                },
            )
            self.registry.claim(
                key, Claim(request.stack_id, request.logical_id, props.heal, "Delete", wants=spec.to_dict())
            )
        except Exception:
            if physical_id != request.physical_id:
                kms.revoke_grant(spec.key_arn, outcome.grant_id)
            raise
        logger.info("grant converged", key_arn=spec.key_arn, grant_id=outcome.grant_id)
        return Response(
            physical_id,
            {
                "GrantId": outcome.grant_id,
                "GrantToken": outcome.grant_token,
                "KeyArn": spec.key_arn,
                "GranteePrincipal": outcome.grantee_arn,
            },
        )

    def abandon(self, request: Request, response: Response) -> None:
        """Undo the claim of a request whose answer (FAILED at the deadline) already went out."""
        if match := ROLE_ARN.fullmatch(response.physical_id):
            self.registry.release(role_key(match.group(4)), request.stack_id, request.logical_id)
        elif response.physical_id != request.physical_id and "#" in response.physical_id:
            self._delete_grant(request, response.physical_id)
        logger.warning("late result abandoned", physical_id=response.physical_id)

    # --- Delete --------------------------------------------------------------------------------

    def delete(self, request: Request) -> Response:
        physical_id = request.physical_id or ""
        if (match := ROLE_ARN.fullmatch(physical_id)) and (match.group(1), match.group(2)) == (
            request.scope.partition,
            request.scope.account,
        ):
            self._delete_role(request, match.group(4), physical_id)
        elif GRANT_PHYSICAL_ID.fullmatch(physical_id):
            self._delete_grant(request, physical_id)
        else:
            logger.info("physical id not produced by rolekeeper; nothing to delete", physical_id=physical_id)
        return Response(physical_id)

    @staticmethod
    def object_of(physical_id: str | None) -> str | None:
        """The registry key of the object a physical id names; an id rolekeeper never produces
        stands for itself."""
        if physical_id and (match := ROLE_ARN.fullmatch(physical_id)):
            return role_key(match.group(4))
        if physical_id and GRANT_PHYSICAL_ID.fullmatch(physical_id):
            return grant_key(physical_id)
        return physical_id

    def acts_on(self, request: Request) -> bool:
        """Whether the request may change anything (a Delete of an id rolekeeper never produced
        touches nothing, so it needs no confirmation)."""
        return request.request_type != "Delete" or self.object_of(request.physical_id) != request.physical_id

    def _delete_role(self, request: Request, name: str, physical_id: str) -> None:
        key = role_key(name)
        # One consistent read: the object and every claim. Delete acts on this resource's claim as
        # stored (OnDelete as last confirmed), never on the request's properties, and only for the
        # physical id rolekeeper answered (the role's exact ARN).
        known = self.registry.get(key)
        claim = next((c for c in known.claims if c.sk == request.claim_sk), None) if known else None
        if known is not None and known.attrs.get("arn") not in (None, physical_id):
            logger.info("physical id is not the role's ARN; nothing to delete", physical_id=physical_id)
            return
        if claim is None or not self.registry.release(key, request.stack_id, request.logical_id):
            logger.info("no claim held by this resource; nothing to delete", role_name=name)
            return
        assert known is not None  # the claim came from it
        others = [c for c in known.claims if c.sk != claim.sk]
        record = None
        try:
            if claim.on_delete == "Delete":
                record = self.registry.forget_if_unclaimed(key)
                if record is not None:
                    self._delete_object(name, record)
                    return
            if known.kind == "role" and others:
                self._prune_after_release(key, name)
            else:
                logger.info("claim released; role retained", role_name=name)
        except Exception:
            # Put the claim (and the record) back so CloudFormation's retry of this Delete finishes it.
            if record is not None:
                self.registry.record(
                    key,
                    record.kind,
                    record.desired,
                    created_now=True,
                    attrs=record.attrs,
                    added=record.added or set(),
                )
            self._restore(key, claim)
            raise

    def _delete_object(self, name: str, record: Record) -> None:
        if record.kind == "slr":
            task_id = iam.delete_service_linked_role(name)
            logger.info("service-linked role deletion submitted", role_name=name, deletion_task_id=task_id)
            return
        role = iam.get_role(name)
        if role is not None and not ownership.is_ours(record, role):
            logger.warning("role was replaced by one rolekeeper did not create; left alone", role_name=name)
            return
        made_profile = ownership.PROFILE in ownership.added_of(record)
        iam.delete_role(name, name if made_profile else None)
        logger.info("role deleted", role_name=name)

    def _prune_after_release(self, key: str, name: str) -> None:
        """Other claims remain: take away what only the released claim wanted (and rolekeeper
        added). With no claim left (OnDelete Retain, or a role rolekeeper did not create), the role
        stays as it is."""
        record = self.registry.get(key)
        if record is None or record.kind != "role" or not record.claims:
            logger.info("claim released; role retained", role_name=name)
            return
        desired = ownership.desired_of(record)
        outcome = prune_role(
            desired, added=ownership.added_of(record), created_role_id=ownership.created_role_id(record)
        )
        self.registry.record(key, "role", desired.to_dict(), created_now=False, attrs=record.attrs)
        if outcome is not None:
            self.registry.taken_away(key, outcome.removed)
        logger.info(
            "claim released; other claims remain", role_name=name, changes=outcome.changes if outcome else []
        )

    def _delete_grant(self, request: Request, physical_id: str) -> None:
        key = grant_key(physical_id)
        record = self.registry.get(key)
        claim = next((c for c in record.claims if c.sk == request.claim_sk), None) if record else None
        if claim is None or not self.registry.release(key, request.stack_id, request.logical_id):
            logger.info("no claim held by this resource; nothing to revoke", physical_id=physical_id)
            return
        try:
            key_arn, original = physical_id.rsplit("#", 1)
            current = record.attrs.get("grant_id", original) if record is not None else original
            for grant_id in dict.fromkeys((current, original)):
                # KMS's Name idempotency can hand the same grant to a new physical id (an Update
                # that changed only Heal, after a heal re-issued it): a grant another record
                # still references is live, and stays.
                if any(other.key != key for other in self.registry.grants_by_id(grant_id)):
                    logger.info("grant still held under another physical id; kept", grant_id=grant_id)
                    continue
                revoked = kms.revoke_grant(key_arn, grant_id)
                logger.info("grant revoked" if revoked else "grant already gone", grant_id=grant_id)
            self.registry.forget(key)
        except Exception:
            self._restore(key, claim)
            raise

    def _restore(self, key: str, claim: Claim) -> None:
        """Put a released claim back so CloudFormation's retry of the Delete finishes it; when the
        object itself was forgotten meanwhile there is nothing left to hold."""
        try:
            self.registry.claim(key, claim)
        except ObjectGone:
            logger.info("object already forgotten; claim not restored", key=key)
