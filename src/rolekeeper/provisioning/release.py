"""Delete, in two phases: the release is recorded as pending with the answer (mark); once
CloudFormation's bucket accepted the answer, the claim is released and the object deleted if the
claim asked for it (OnDelete: Delete, as last confirmed) and it was the last one, else what only it
wanted is taken away (complete). Acts on the stored claim, never on the request's properties, and
only for the physical id rolekeeper answered. A release waits for a heal under way (the heal
planned from the claims before the release); the deletion has exactly one writer (the registry's
deleting state).
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.registry import Change, Fence
from rolekeeper.convergence import grants
from rolekeeper.convergence.outcomes import Made
from rolekeeper.convergence.transition import Plan, reading, run
from rolekeeper.domain import ownership
from rolekeeper.domain.errors import HealInProgress, ObjectGone, RetryLater
from rolekeeper.domain.records import (
    GRANT_PHYSICAL_ID,
    ROLE_ARN,
    Claim,
    Intent,
    Kind,
    Pending,
    Record,
    grant_key,
    role_key,
)
from rolekeeper.provisioning import restore, settle
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request, Response
from rolekeeper.retry import HEAL_UNDER_WAY

logger = Logger(child=True)


def mark(ctx: Context, request: Request) -> Response:
    """Delete, first phase: the release is pending on this resource's claim (with the answer, in
    one write); it happens once CloudFormation's bucket accepted the answer (intents.settle ->
    complete). A physical id rolekeeper never produced, or one no claim of this resource holds
    any more, has nothing to release."""
    physical_id = request.physical_id or ""
    key = _key_of(request, physical_id)
    objects = ctx.registry.objects
    known = objects.read(key) if key else None
    if key is None or known is None:
        logger.info(
            "nothing of rolekeeper's under this physical id; nothing to delete", physical_id=physical_id
        )
        return Response(physical_id)
    name = known.attrs.get("name") or physical_id
    if known.kind != Kind.GRANT and known.attrs.get("arn") not in (None, physical_id):
        logger.info("physical id is not the role's ARN; nothing to delete", physical_id=physical_id)
        return Response(physical_id)
    if known.deleting and known.claim_of(request.claim_sk) is None:
        settle.settle(objects, known, name, ctx.clock)  # a retry after a Delete that failed at its last step
        known = None  # settled since: read it again

    def attempt(record: Record | None, _made: Made) -> Plan[Response]:
        claim = record.claim_of(request.claim_sk) if record else None
        if record is None or claim is None:
            logger.info("no claim held by this resource; nothing to delete", physical_id=physical_id)
            return Plan(Response(physical_id))
        pending = Pending(request.request_id, release=True)
        response = Response(physical_id, intent=Intent(key, claim.sk, request.request_id))
        return Plan(
            response,
            Fence(record, exact=False),
            Change(kind=record.kind, claim=replace(claim, pending=pending)),
        )

    return run(
        objects,
        key,
        read=reading(objects, key, known),
        attempt=attempt,
        undo=lambda _made: None,
        clock=ctx.clock,
        also=ctx.answer,
        written=Response.keep,
        what=name,
    )


def complete(ctx: Context, key: str, claim: Claim, token: str, *, record: Record | None = None) -> None:
    """Delete, second phase: release the claim, then delete the object if the claim asked for it
    (OnDelete as last confirmed) and it was the last one, else take away what only it wanted.
    A failure puts the claim back with its release still pending (the schedule finishes it).
    record: the object as the caller knows it (its writes are fenced by its version)."""
    record = ctx.registry.objects.read(key) if record is None else record
    if record is None:
        return
    name = record.attrs.get("name") or key.split("#", 1)[1]
    if record.kind == Kind.GRANT:
        _release_grant(ctx, key, name, claim, token, record)
    else:
        _release_role(ctx, key, name, claim, token, record)


def _key_of(request: Request, physical_id: str) -> str | None:
    scope = request.scope
    if (match := ROLE_ARN.fullmatch(physical_id)) and (match.group(1), match.group(2)) == (
        scope.partition,
        scope.account,
    ):
        return role_key(match.group(4))
    if GRANT_PHYSICAL_ID.fullmatch(physical_id):
        return grant_key(physical_id)
    return None


def _release_role(ctx: Context, key: str, name: str, claim: Claim, token: str, first: Record) -> None:
    released, taken = _release(
        ctx, key, name, claim, first, take=token if claim.on_delete == "Delete" else ""
    )
    try:
        taken = _taken(ctx, key, name, token, taken)
        if taken is not None:
            _delete(ctx, key, token, name, taken)
            return
        if released is not None and released.kind == Kind.ROLE:
            remaining = replace(released, claims=[c for c in released.claims if c.sk != claim.sk])
            if remaining.claims and restore.changes_away(released, remaining):
                restore.role(ctx, key, name, put_back=False)  # take away what only this claim wanted
                return
        logger.info("claim released; role retained", role_name=name)
    except Exception:
        _put_back(ctx, key, claim)
        raise


def _release_grant(ctx: Context, key: str, physical_id: str, claim: Claim, token: str, first: Record) -> None:
    objects = ctx.registry.objects
    _released, taken = _release(ctx, key, physical_id, claim, first, take=token)
    try:
        taken = _taken(ctx, key, physical_id, token, taken)
        if taken is None:
            logger.info("grant record held by another claim; kept", physical_id=physical_id)
            return
        try:
            _revoke(ctx, key, key.removeprefix("GRANT#"), taken)
        except Exception:
            objects.abort_delete(key, token)
            raise
        objects.finish_delete(key, token)
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


# What _release says of the take: the record to delete by (taken in the release's own write),
# MAYBE (try the take on its own: see _release), or None (nothing to take).
MAYBE = Record(key="", kind=Kind.ROLE)


def _release(
    ctx: Context, key: str, name: str, claim: Claim, first: Record | None = None, *, take: str = ""
) -> tuple[Record | None, Record | None]:
    """Remove the claim (fenced: no heal under way) and, with take (the releasing request's
    token), take the object for deletion in the same write when rolekeeper created it and this
    was its last claim. Returns the record as read before the release (None when an earlier
    attempt of this request released it already) and the take: the record to delete by, MAYBE
    or None (_taken decides MAYBE, inside the caller's put-back). first: the record as the caller
    knows it, which may be older than the table: planned from, the write is fenced by its
    version (a retry reads again)."""
    objects, clock = ctx.registry.objects, ctx.clock
    source = reading(objects, key, first)

    refused_at: list[int] = []  # versions a take was planned from (planned again: refused there)

    def attempt(record: Record | None, _made: Made) -> Plan[tuple[Record | None, bool, bool]]:
        if record is None or record.claim_of(claim.sk) is None:
            return Plan((None, False, False))  # released by an earlier attempt whose answer was lost
        last = (
            bool(take)
            and record.created
            and [c.sk for c in record.claims] == [claim.sk]
            # Refused at this very version: the claim count disagrees with the claims; release
            # alone (the take below then decides by the count, as a take always did).
            and record.version not in refused_at
        )
        if last:
            refused_at.append(record.version)
        # A take is planned from the exact version: the record it returns is then the one the
        # deletion acts on (the grant a heal re-issued since, the profile), and the decision
        # "no other claim" was made on the claims as they are.
        exact = record is first or last
        return Plan(
            (record, last, exact),
            Fence(record, exact=exact, lease_free=True),
            # The last claim's release takes the object in the same write (on condition that no
            # other claim is counted: a claim made since refuses it, and the plan is made again).
            Change(kind=record.kind, release=claim, take_for_deletion=take if last else ""),
        )

    def read() -> Record | None:
        return settle.lease_free(objects, key, source(), name, clock)

    before, taken, exact = run(
        objects, key, read=read, attempt=attempt, undo=lambda _made: None, clock=clock, what=name
    )
    if taken:
        return before, before
    if take and not exact:
        # Planned from a read that another release may have overtaken (both saw the other's
        # claim), or released by an attempt whose answer was lost: the object is taken if it is
        # unclaimed now. An exact fence showed the other claims or the adoption: nothing to take.
        return before, MAYBE
    return before, None


def _taken(ctx: Context, key: str, name: str, token: str, taken: Record | None) -> Record | None:
    """The record to delete by: as _release took it, or taken now when it said MAYBE."""
    return _take_for_deletion(ctx, key, name, token) if taken is MAYBE else taken


def _delete(ctx: Context, key: str, token: str, name: str, taken: Record) -> None:
    """Delete the object taken for deletion (taken: its record as it was taken); its record goes
    (a service-linked role's stays with IAM's deletion task id until the deletion is known to
    have finished)."""
    objects = ctx.registry.objects
    try:
        task_id = _delete_object(name, taken)
    except Exception:
        objects.abort_delete(key, token)
        raise
    if task_id and _over(task_id):
        task_id = None  # already over: nothing left to wait for
    objects.finish_delete(key, token, task_id=task_id)


def _over(task_id: str) -> bool:
    """Whether a service-linked role's deletion already finished; when IAM cannot say now, the
    record keeps the task id and a later request or the schedule asks again (settle.py)."""
    try:
        return settle.deletion_status(task_id) == "SUCCEEDED"
    except Exception:
        logger.exception("deletion status not known yet; the task id is kept", deletion_task_id=task_id)
        return False


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
