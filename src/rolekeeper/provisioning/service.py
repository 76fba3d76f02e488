"""What one custom resource request does to AWS and the registry, per resource type."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from rolekeeper.convergence.grants import reissue_stale
from rolekeeper.domain.catalog import SPOT_FLEET_ROLE_NAME
from rolekeeper.domain.properties import ServiceLinkedRoleProperties, ServiceRoleProperties, parse
from rolekeeper.domain.records import Intent, Record, object_key
from rolekeeper.provisioning import claims, intents, release
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request, Response

logger = Logger(child=True)


def converge(ctx: Context, request: Request) -> Response:
    """Create or Update: the object converged, this resource's claim written (with the answer)."""
    props = parse(request.resource_type, request.properties)
    if isinstance(props, ServiceLinkedRoleProperties):
        response = claims.linked_role(ctx, request, props)
        if response.data.get("RoleName") == SPOT_FLEET_ROLE_NAME:
            # Recreated outside rolekeeper (a new unique id): grants made for the old one are
            # stale. After the answer is decided: a failure here is the schedule's to finish.
            grantee = {k: response.data[k] for k in ("RoleName", "Arn", "RoleId")}
            try:
                response.changes += reissue_stale(
                    ctx.registry,
                    grantee,
                    clock=ctx.clock,
                    limit=ctx.settings.heal_rate_limit,
                    healable_only=False,
                )
            except Exception:
                logger.exception("stale grants not re-issued; the scheduled reconcile re-issues them")
        return response
    if isinstance(props, ServiceRoleProperties):
        return claims.service_role(ctx, request, props)
    return claims.grant(ctx, request, props)


def delete(ctx: Context, request: Request) -> Response:
    """Delete: the release pending on this resource's claim, with the answer (release.mark)."""
    return release.mark(ctx, request)


def settle(ctx: Context, intent: Intent, *, accepted: bool, known: Record | None = None) -> None:
    """The request's second phase, once its answer's delivery is known (intents.py); known: the
    object as the first phase left it."""
    intents.settle_intent(ctx, intent, accepted=accepted, known=known)


def acts_on(request: Request) -> bool:
    """Whether the request may change anything (a Delete of an id rolekeeper never produces
    touches nothing, so it needs no confirmation)."""
    return request.request_type != "Delete" or object_key(request.physical_id) != request.physical_id
