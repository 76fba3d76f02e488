"""Delete: release this resource's claim, then delete the object if the claim asked for it
(OnDelete: Delete, as last confirmed) and it was the last one, else take away what only it
wanted. Acts on the stored claim, never on the request's properties, and only for the physical
id rolekeeper answered. A release waits for a heal under way (the heal planned from the claims
before the release); the deletion has exactly one writer (the registry's deleting state).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.registry import Change, Fence
from rolekeeper.convergence import grants
from rolekeeper.convergence.outcomes import Made
from rolekeeper.convergence.transition import Plan, run
from rolekeeper.domain import ownership
from rolekeeper.domain.errors import HealInProgress, ObjectGone, RetryLater
from rolekeeper.domain.records import Claim, Kind, Record, grant_key, role_key
from rolekeeper.provisioning import restore, settle
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request
from rolekeeper.retry import HEAL_UNDER_WAY

logger = Logger(child=True)


def role(ctx: Context, request: Request, name: str, physical_id: str) -> None:
    objects = ctx.registry.objects
    key = role_key(name)
    # One consistent read: the object and every claim.
    known = objects.read(key)
    claim = known.claim_of(request.claim_sk) if known else None
    if known is not None and known.attrs.get("arn") not in (None, physical_id):
        logger.info("physical id is not the role's ARN; nothing to delete", physical_id=physical_id)
        return
    if known is not None and known.deleting and claim is None:
        settle.settle(objects, known, name, ctx.clock)  # a retry after a Delete that failed at its last step
    if known is None or claim is None:
        logger.info("no claim held by this resource; nothing to delete", role_name=name)
        return
    released = _release(ctx, key, name, claim)
    try:
        if claim.on_delete == "Delete" and _delete_if_last(ctx, request, key, name):
            return
        if (
            released is not None
            and released.kind == Kind.ROLE
            and any(c.sk != claim.sk for c in released.claims)
        ):
            restore.role(ctx, key, name, put_back=False)  # take away what only this claim wanted
        else:
            logger.info("claim released; role retained", role_name=name)
    except Exception:
        _put_back(ctx, key, claim)  # so CloudFormation's retry of this Delete finishes it
        raise


def grant(ctx: Context, request: Request, physical_id: str) -> None:
    objects = ctx.registry.objects
    key = grant_key(physical_id)
    record = objects.read(key)
    claim = record.claim_of(request.claim_sk) if record else None
    if record is None or claim is None:
        logger.info("no claim held by this resource; nothing to revoke", physical_id=physical_id)
        return
    _release(ctx, key, physical_id, claim)
    try:
        taken = _take_for_deletion(ctx, key, physical_id, request.token)
        if taken is None:
            logger.info("grant record held by another claim; kept", physical_id=physical_id)
            return
        try:
            _revoke(ctx, key, physical_id, taken)
        except Exception:
            objects.abort_delete(key, request.token)
            raise
        objects.finish_delete(key, request.token)
    except Exception:
        _put_back(ctx, key, claim)
        raise


def _revoke(ctx: Context, key: str, physical_id: str, taken: Record) -> None:
    """Revoke the grant the record names now and the one its physical id names (a heal may have
    re-issued it since)."""
    key_arn, original = physical_id.rsplit("#", 1)
    current = taken.attrs.get("grant_id", original)
    for grant_id in dict.fromkeys((current, original)):
        # A record never shares its grant with another (claims.py answers the old physical id for
        # the same grant); one written by 0.1.0 may, and keeps it (a consistent read decides).
        if grants.held_by_another(ctx.registry.objects, key_arn, grant_id, besides=key):
            logger.info("grant still held under another physical id; kept", grant_id=grant_id)
            continue
        revoked = kms.revoke_grant(key_arn, grant_id)
        logger.info("grant revoked" if revoked else "grant already gone", grant_id=grant_id)


def _release(ctx: Context, key: str, name: str, claim: Claim) -> Record | None:
    """Remove the claim (fenced: no heal under way); returns the record as read before the
    release, None when an earlier attempt of this request released it already."""
    objects, clock = ctx.registry.objects, ctx.clock

    def attempt(record: Record | None, _made: Made) -> Plan[Record | None]:
        if record is None or record.claim_of(claim.sk) is None:
            return Plan(None)  # released by an earlier attempt whose answer was lost
        return Plan(
            record, Fence(record, exact=False, lease_free=True), Change(kind=record.kind, release=claim)
        )

    def read() -> Record | None:
        record = objects.read(key)
        return settle.lease_free(objects, key, record, name, clock)

    return run(objects, key, read=read, attempt=attempt, undo=lambda _made: None, clock=clock, what=name)


def _delete_if_last(ctx: Context, request: Request, key: str, name: str) -> bool:
    """Take the object for deletion (only if rolekeeper created it and no claim holds it) and
    delete it; False when it stays."""
    objects = ctx.registry.objects
    record = _take_for_deletion(ctx, key, name, request.token)
    if record is None:
        return False
    try:
        task_id = _delete_object(name, record)
    except Exception:
        objects.abort_delete(key, request.token)
        raise
    objects.finish_delete(key, request.token, task_id=task_id)
    if task_id and settle.deletion_status(task_id) == "SUCCEEDED":
        objects.drop(objects.read(key) or record)  # already over: nothing left to wait for
    return True


def _take_for_deletion(ctx: Context, key: str, name: str, token: str) -> Record | None:
    for _ in HEAL_UNDER_WAY.tries(ctx.clock):
        try:
            return ctx.registry.objects.begin_delete(key, token, now=ctx.clock.now())
        except HealInProgress:
            logger.info("a heal of the object is under way; waiting for it", key=key)
    raise RetryLater(f"{name} is being healed right now; retry the deletion in a minute")


def _delete_object(name: str, record: Record) -> str | None:
    """Delete the AWS object; a service-linked role's deletion task id (IAM finishes it later)."""
    if record.kind == Kind.SLR:
        task_id = iam.delete_service_linked_role(name)
        logger.info("service-linked role deletion submitted", role_name=name, deletion_task_id=task_id)
        return task_id
    role = iam.get_role(name)
    if role is not None and not ownership.is_ours(record, role):
        logger.warning("role was replaced by one rolekeeper did not create; left alone", role_name=name)
        return None
    made_profile = ownership.PROFILE in ownership.added_of(record)
    iam.delete_role(name, name if made_profile else None)
    logger.info("role deleted", role_name=name)
    return None


def _put_back(ctx: Context, key: str, claim: Claim) -> None:
    """Put a released claim back so CloudFormation's retry of the Delete finishes it; when the
    object itself was forgotten meanwhile there is nothing left to hold."""
    try:
        ctx.registry.objects.restore(key, claim, now=ctx.clock.now())
    except ObjectGone:
        logger.info("object already forgotten; claim not restored", key=key)
