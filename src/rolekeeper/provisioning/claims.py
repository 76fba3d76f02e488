"""Create and Update: converge the object to the union of its claims' wants and write this
resource's claim, through the one write path (convergence.transition.run).

A Create, and an Update that only adds, needs the object present and not being deleted when it
writes; an Update of a role takes away what no claim wants any more, so it waits for a heal
under way and writes only at the version it planned from. When the request was answered
elsewhere meanwhile (the deadline's FAILED) or the object kept changing, what the attempts made
is undone: an object this request created is taken back (unless a claim now holds it), and a
role it changed is converged back to what the claims as registered want.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.registry import Change, Fence
from rolekeeper.convergence import grants
from rolekeeper.convergence.linked_roles import ensure_linked_role
from rolekeeper.convergence.outcomes import GrantOutcome, Made, RoleOutcome, role_attrs
from rolekeeper.convergence.roles import delete_created_role, ensure_role
from rolekeeper.convergence.transition import Plan, run
from rolekeeper.domain import ownership
from rolekeeper.domain.catalog import SPOT_FLEET_ROLE_NAME
from rolekeeper.domain.errors import InvalidRequest
from rolekeeper.domain.properties import (
    ServiceLinkedRoleProperties,
    ServiceRoleProperties,
    SpotFleetKmsGrantProperties,
)
from rolekeeper.domain.records import Claim, Intent, Kind, Pending, Record, claim_sk, grant_key, role_key
from rolekeeper.domain.validation import grant_spec, linked_role_spec, role_spec
from rolekeeper.provisioning import restore, settle
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request, Response

logger = Logger(child=True)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def role_data(outcome: RoleOutcome, created: bool) -> dict[str, str]:
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


def claimed(
    key: str,
    record: Record | None,
    request: Request,
    heal: bool,
    on_delete: str,
    wants: dict[str, Any],
    *,
    created: bool,
) -> tuple[Claim, Intent | None]:
    """This resource's claim as the request's first phase writes it: what the request asks for is
    pending until CloudFormation's bucket accepts the answer (intents.settle then puts it in
    force, or withdraws it); a new claim holds only its wants meanwhile, with the safe choices
    (healing on, OnDelete Retain). A request that changes nothing leaves the claim as it is."""
    sk = claim_sk(request.stack_id, request.logical_id)
    existing = record.claim_of(sk) if record else None
    intent = Intent(key, sk, request.request_id)
    if existing is None:
        pending = Pending(request.request_id, heal=heal, on_delete=on_delete, new=True, created=created)
        return Claim(request.stack_id, request.logical_id, True, "Retain", wants, pending), intent
    if (existing.heal, existing.on_delete, existing.wants) == (
        heal,
        on_delete,
        wants,
    ) and existing.pending is None:
        return existing, None
    pending = Pending(request.request_id, heal=heal, on_delete=on_delete, wants=wants, created=created)
    return replace(existing, pending=pending), intent


def service_role(ctx: Context, request: Request, props: ServiceRoleProperties) -> Response:
    spec = role_spec(props, ctx.settings, request.scope)
    key = role_key(spec.name)
    sk = claim_sk(request.stack_id, request.logical_id)
    objects, clock = ctx.registry.objects, ctx.clock

    def attempt(record: Record | None, made: Made) -> Plan[Response]:
        mine = record.claim_of(sk) if record else None
        earlier = ownership.wants_of(record, [mine]) if record and mine else []
        if earlier and (
            problem := ownership.blueprint_change(spec.name, earlier[0].blueprint, spec.blueprint)
        ):
            raise InvalidRequest(problem)
        others = ownership.other_wants(record, sk)
        if problem := ownership.conflict(spec, others):
            raise InvalidRequest(problem)
        desired = ownership.union([spec, *others])
        # What weakens waits for the answer's delivery (intents.settle): the confused-deputy
        # conditions this claim had in force stay until then, like the pieces the prune removes.
        desired = replace(desired, trust_statement=ownership.union([desired, *earlier]).trust_statement)
        created_role_id = ownership.created_role_id(record)
        outcome = ensure_role(
            desired,
            made,
            clock=clock,
            created_role_id=created_role_id,
            adoption_refusal=lambda role: ownership.adoption_refusal(
                spec, role, props.confused_deputy_protection
            ),
            added=ownership.added_of(record) | made.added,
        )
        created = made.created or outcome.ours
        claim, intent = claimed(
            key, record, request, props.heal, props.on_delete, spec.to_dict(), created=made.created
        )
        response = Response(outcome.arn, role_data(outcome, created or bool(record and record.created)))
        response.changes, response.intent = outcome.changes, intent
        # What only adds is applied now; what takes away waits for the answer's delivery (the
        # prune in intents.settle). Fenced by the version read: the plan counted on pieces it
        # found on the role, which a release's prune written since may have taken away.
        change = Change(
            kind=Kind.ROLE,
            attrs=role_attrs(outcome),
            created=created,
            claim=claim,
            added=frozenset(made.added),
        )
        return Plan(response, Fence(record, exact=record is not None), change)

    def undo(made: Made) -> None:
        if made.created:
            restore.take_back(
                ctx, request, key, spec.name, lambda: delete_created_role(spec.name, profile=made.profile)
            )
        elif made.added:
            restore.role(ctx, key, spec.name, extra_added=made.added, put_back=False)

    response = run(
        objects,
        key,
        read=lambda: settle.settled(objects, key, spec.name, clock),
        attempt=attempt,
        undo=undo,
        clock=clock,
        also=ctx.answer,
        written=Response.keep,
        what=spec.name,
    )
    logger.info("service role converged", role_name=spec.name, changes=response.changes)
    return response


def linked_role(ctx: Context, request: Request, props: ServiceLinkedRoleProperties) -> Response:
    spec = linked_role_spec(props, ctx.settings)
    name = spec.role_name
    key = role_key(name)
    objects, clock = ctx.registry.objects, ctx.clock

    def attempt(record: Record | None, made: Made) -> Plan[Response]:
        outcome = ensure_linked_role(spec, made, clock=clock)
        created = made.created or bool(record and record.created)
        claim, intent = claimed(
            key, record, request, props.heal, props.on_delete, spec.to_dict(), created=made.created
        )
        response = Response(outcome.arn, role_data(outcome, created))
        response.changes, response.intent = outcome.changes, intent
        change = Change(kind=Kind.SLR, attrs=role_attrs(outcome), created=made.created, claim=claim)
        return Plan(response, Fence(record, exact=False), change)

    def undo(made: Made) -> None:
        if made.created:
            restore.take_back(ctx, request, key, name, lambda: iam.delete_service_linked_role(name))

    response = run(
        objects,
        key,
        read=lambda: settle.settled(objects, key, name, clock),
        attempt=attempt,
        undo=undo,
        clock=clock,
        also=ctx.answer,
        written=Response.keep,
        what=name,
    )
    logger.info("service-linked role converged", role_name=name, changes=response.changes)
    return response


def grant(ctx: Context, request: Request, props: SpotFleetKmsGrantProperties) -> Response:
    key_metadata = kms.describe_key(props.key_id)
    tags = kms.key_tags(key_metadata["Arn"]) if key_metadata.get("KeyManager") == "CUSTOMER" else {}
    grantee = iam.get_role(SPOT_FLEET_ROLE_NAME)
    spec = grant_spec(props, key_metadata, tags, grantee, request.scope, request.stack_id, request.logical_id)
    assert grantee is not None  # grant_spec refuses a missing grantee
    objects, clock = ctx.registry.objects, ctx.clock
    created = Made()  # CreateGrant before the transition: the grant's id names its record
    outcome = grants.create_grant(spec, grantee, created)
    physical_id = _grant_physical_id(ctx, request, spec.key_arn, outcome)
    key = grant_key(physical_id)

    def attempt(record: Record | None, _made: Made) -> Plan[Response]:
        data = {
            "GrantId": outcome.grant_id,
            "GrantToken": outcome.grant_token,
            "KeyArn": spec.key_arn,
            "GranteePrincipal": outcome.grantee_arn,
        }
        # A grant no record held before was made by this request (withdrawn, it goes too).
        claim, intent = claimed(
            key, record, request, props.heal, "Delete", spec.to_dict(), created=record is None
        )
        change = Change(kind=Kind.GRANT, attrs=grants.grant_attrs(spec, outcome), created=True, claim=claim)
        return Plan(Response(physical_id, data, intent=intent), Fence(record, exact=False), change)

    def undo(_made: Made) -> None:
        # Only a grant no record holds is this request's to take back (KMS's Name idempotency may
        # have returned a grant another physical id still references).
        grants.revoke_unheld(objects, spec.key_arn, created.grants, besides="")

    response = run(
        objects,
        key,
        read=lambda: objects.read(key),
        attempt=attempt,
        undo=undo,
        clock=clock,
        also=ctx.answer,
        written=Response.keep,
        what=key,
    )
    logger.info("grant converged", key_arn=spec.key_arn, grant_id=outcome.grant_id)
    return response


def _grant_physical_id(ctx: Context, request: Request, key_arn: str, outcome: GrantOutcome) -> str:
    """The grant's physical id: the request's own when it already names this grant (an Update
    that changed only Heal, say, after a heal re-issued the grant under the same Name), so no two
    records ever hold one grant; else a new one naming the key and the grant."""
    if request.physical_id and request.physical_id.startswith(f"{key_arn}#"):
        known = ctx.registry.objects.read(grant_key(request.physical_id))
        if known is not None and known.attrs.get("grant_id") == outcome.grant_id:
            return request.physical_id
    return f"{key_arn}#{outcome.grant_id}"
