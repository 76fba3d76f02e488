"""The second phase of a request: what it asked that removes or weakens takes effect only once
CloudFormation's bucket accepted the answer (only CloudFormation can make a pre-signed URL its
bucket accepts: a forged request's PUT is refused), and is withdrawn otherwise.

    accepted -> a pending release: the claim released (and the object deleted or pruned);
                pending wants/heal/on_delete: in force, then what no claim wants any more goes
    refused  -> the pending change withdrawn; a claim that came with the request goes, with the
                object if the request created it and no claim holds it; what only the request
                wanted (and added) is taken away

An invocation settles its own request right after the PUT; the schedule settles what an
invocation left when it ended before (finish_abandoned).
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools import Logger

from rolekeeper.aws import cloudformation, iam
from rolekeeper.aws.registry import Change, Fence
from rolekeeper.convergence import grants
from rolekeeper.convergence.outcomes import Made
from rolekeeper.convergence.roles import delete_created_role
from rolekeeper.convergence.transition import Plan, reading, run
from rolekeeper.domain.records import Claim, Intent, Kind, Record
from rolekeeper.provisioning import release, restore, settle
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request

logger = Logger(child=True)


def settle_intent(ctx: Context, intent: Intent, *, accepted: bool, known: Record | None = None) -> None:
    """Settle the request's pending change (a no-op once settled, or superseded by a later one).
    known: the object as the request's first phase left it (objects.as_written), planned from
    without a read; every write planned from it is fenced by its version, so when anything moved
    since, the write is refused and the record read again. What changes IAM before its write (a
    prune) plans from a read: the version fence keeps the registry right, not what IAM did."""
    fresh = known is None or known.key != intent.key
    record = ctx.registry.objects.read(intent.key) if fresh else known
    claim = record.claim_of(intent.sk) if record else None
    if (
        record is None
        or claim is None
        or claim.pending is None
        or claim.pending.request_id != intent.request_id
    ):
        return
    name = record.attrs.get("name") or intent.key.split("#", 1)[1]
    if accepted:
        logger.info("answer accepted; the request's change takes effect", target=name)
        if claim.pending.release:
            release.complete(ctx, intent.key, claim, intent.request_id, record=record)
        else:
            _put_in_force(ctx, intent, name, record, fresh=fresh)
    else:
        logger.warning("answer refused (not CloudFormation's request); its change is withdrawn", target=name)
        _withdraw(ctx, intent, name, record, fresh=fresh)


def _rewrite(ctx: Context, intent: Intent, name: str, change_of: object, first: Record) -> Record | None:
    """Write this claim anew (fenced: no heal under way, for what takes away); returns the record
    as read before, None when the pending change was settled meanwhile. change_of(record, claim)
    returns None when this write is not the way (nothing written). first: the record as the
    caller knows it, which may be older than the table: planned from, the write is fenced by its
    version (a retry reads again)."""
    objects, clock = ctx.registry.objects, ctx.clock
    source = reading(objects, intent.key, first)

    def attempt(record: Record | None, _made: Made) -> Plan[Record | None]:
        claim = record.claim_of(intent.sk) if record else None
        if (
            record is None
            or claim is None
            or claim.pending is None
            or claim.pending.request_id != intent.request_id
        ):
            return Plan(None)
        change = change_of(record, claim)  # type: ignore[operator]
        if change is None:
            return Plan(record)
        return Plan(record, Fence(record, exact=record is first, lease_free=True), change)

    def read() -> Record | None:
        return settle.lease_free(objects, intent.key, source(), name, clock)

    return run(
        objects, intent.key, read=read, attempt=attempt, undo=lambda _made: None, clock=clock, what=name
    )


def _put_in_force(ctx: Context, intent: Intent, name: str, record: Record, *, fresh: bool) -> None:
    taking_away: list[Record] = []

    def change(record: Record, claim: Claim) -> Change | None:
        if record.kind == Kind.ROLE and restore.takes_away(record, (intent, True)):
            taking_away.append(record)
            return None
        return Change(kind=record.kind, claim=claim.in_force())

    _rewrite(ctx, intent, name, change, record)
    if taking_away:
        # In force, and what the claim no longer wants taken away, in one fenced write.
        # A record known from the first phase (not read) is read again first.
        first = taking_away[-1] if fresh or taking_away[-1] is not record else None
        restore.role(ctx, intent.key, name, put_back=False, settling=(intent, True), first=first)


def _withdraw(ctx: Context, intent: Intent, name: str, record: Record, *, fresh: bool) -> None:
    claim = record.claim_of(intent.sk) if record else None
    pending = claim.pending if claim else None
    if record is None or claim is None or pending is None or pending.request_id != intent.request_id:
        return
    if record.kind == Kind.ROLE and not (pending.new and pending.created):
        # Withdrawn, and what only the request added taken away, in one fenced write.
        restore.role(
            ctx, intent.key, name, put_back=False, settling=(intent, False), first=record if fresh else None
        )
        return

    def change(record: Record, claim: Claim) -> Change:
        assert claim.pending is not None
        if claim.pending.new:
            return Change(kind=record.kind, release=claim)
        return Change(kind=record.kind, claim=replace(claim, pending=None))

    before = _rewrite(ctx, intent, name, change, record)
    if before is None or not pending.new:
        return
    request = Request(
        "Delete", "", claim.stack_id, claim.logical_id, {}, request_id=f"withdraw:{intent.request_id}"
    )
    if before.kind == Kind.GRANT:
        _take_back_grant(ctx, intent, before)
    elif pending.created and before.kind == Kind.SLR:
        restore.take_back(ctx, request, intent.key, name, lambda: iam.delete_service_linked_role(name))
    elif pending.created:
        restore.take_back(ctx, request, intent.key, name, lambda: delete_created_role(name, profile=True))


def _take_back_grant(ctx: Context, intent: Intent, before: Record) -> None:
    """A grant record that came with a refused request: its grant revoked, its record gone (when
    no claim holds it now)."""
    objects = ctx.registry.objects
    token = f"withdraw:{intent.request_id}"
    taken = objects.begin_delete(intent.key, token, now=ctx.clock.now())
    if taken is None:
        return
    key_arn = intent.key.removeprefix("GRANT#").split("#", 1)[0]
    grants.revoke_unheld(objects, key_arn, [str(taken.attrs.get("grant_id", ""))], besides=intent.key)
    objects.finish_delete(intent.key, token)


def finish_abandoned(ctx: Context) -> list[str]:
    """The schedule's part: settle what invocations left pending when they ended before settling
    it, by what the answer's delivery recorded: accepted (2xx) -> in force; refused or never
    delivered -> withdrawn. Nothing recorded (the invocation ended between the PUT and the
    record): a release is completed only if CloudFormation no longer holds the resource (its own
    word, which no request can forge), anything else is withdrawn. Returns what was settled."""
    done = []
    requests = ctx.registry.requests
    for record in ctx.registry.objects.all():
        if record.deleting and not record.claims:
            # A deletion whose last step (the record's removal) did not happen: finished, or
            # taken back when its deleter died before deleting (settle.py).
            name = record.attrs.get("name") or record.key.split("#", 1)[1]
            if settle.settle(ctx.registry.objects, record, name, ctx.clock):
                done.append(f"{record.key}: deletion settled")
            continue
        for claim in record.claims:
            if claim.pending is None:
                continue
            _answer, _intent, status, busy_until = requests.outcome(claim.pending.request_id)
            if status is None and busy_until >= ctx.clock.now():
                continue  # its invocation may still settle it
            if status is not None:
                accepted = 200 <= status < 300
            else:
                accepted = claim.pending.release and not cloudformation.describe_resource(
                    claim.stack_id, claim.logical_id
                )
            try:
                settle_intent(ctx, Intent(record.key, claim.sk, claim.pending.request_id), accepted=accepted)
            except Exception:
                logger.exception("pending change not settled; the next run tries again", key=record.key)
                continue
            done.append(f"{record.key}: {'settled' if accepted else 'withdrawn'} {claim.pending.request_id}")
    return done
