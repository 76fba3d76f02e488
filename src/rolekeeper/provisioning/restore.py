"""Undoing what a request did when its own write did not land (the object kept changing, or the
request was answered FAILED elsewhere): an object it created is taken back, a role it changed is
converged back to what the claims as registered want."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam
from rolekeeper.aws.registry import Change, Fence
from rolekeeper.convergence.outcomes import NOT_NEEDED, Made
from rolekeeper.convergence.roles import ensure_role, prune_role
from rolekeeper.convergence.transition import Plan, reading, run
from rolekeeper.domain import ownership
from rolekeeper.domain.errors import HealInProgress
from rolekeeper.domain.records import Claim, Intent, Kind, Record
from rolekeeper.domain.specs import RoleSpec
from rolekeeper.domain.trust import canonical
from rolekeeper.provisioning import settle
from rolekeeper.provisioning.context import Context
from rolekeeper.provisioning.requests import Request

logger = Logger(child=True)


def take_back(ctx: Context, request: Request, key: str, name: str, remove: Callable[[], object]) -> None:
    """Remove the AWS object this request created, unless a claim now holds it (another stack
    adopted it meanwhile): the deletion is taken in the registry first, like a last Delete.
    Best effort: a failure is logged (the caller re-raises what made the undo necessary)."""
    objects = ctx.registry.objects
    token = f"rollback:{request.token}"
    try:
        taken = objects.begin_delete(key, token, now=ctx.clock.now(), absent_too=True)
    except HealInProgress:
        taken = None
    except Exception:
        logger.exception("could not take the object for rollback; left in place", role_name=name)
        return
    if taken is None:
        logger.warning("object this request created is held by another claim; kept", role_name=name)
        return
    logger.warning("removing the object this request created", role_name=name)
    task_id = None
    try:
        result = remove()
        task_id = result if isinstance(result, str) else None
    except Exception:
        logger.exception("could not remove the object this request created", role_name=name)
    try:
        objects.finish_delete(key, token, task_id=task_id)
    except Exception:
        logger.exception("could not remove the registry record", key=key)


def role(
    ctx: Context,
    key: str,
    name: str,
    *,
    extra_added: set[str] | frozenset[str] = frozenset(),
    put_back: bool = True,
    settling: tuple[Intent, bool] | None = None,
    first: Record | None = None,
) -> list[str]:
    """Converge a role to what its claims as registered want: take away what no claim wants any
    more (a released claim's pieces; extra_added: pieces an unfinished request added, which no
    write recorded) and, with put_back (always after a lost race), put back what an unfinished
    request's prune took away. A role that is gone stays gone (healing puts it back), and with no
    claim left the role stays as it is. settling: a request's pending change on one claim, put in
    force (True) or withdrawn (False) in the same fenced write as the prune it calls for.
    Returns what changed; never raises (the next request or the schedule converges a role that
    kept changing; a pending change stays pending). first: the record as the caller just read it
    (the first attempt plans from it, a retry reads again)."""
    objects, clock = ctx.registry.objects, ctx.clock
    tries = [put_back]
    source = reading(objects, key, first)

    def attempt(record: Record | None, made: Made) -> Plan[list[str]]:
        if record is None or record.kind != Kind.ROLE or not record.claims or record.deleting:
            return Plan([])
        view, put, released = _settled_view(record, settling)
        if view is None:
            return Plan([])  # settled already, or superseded by a later request
        desired = (
            ownership.desired_of(view)
            if view.claims
            else ownership.wanting_nothing(ownership.desired_of(record))
        )
        created_role_id = ownership.created_role_id(record)
        added = ownership.added_of(record) | set(extra_added)
        light = (
            settling is not None and not tries[-1] and not _needs_role(record, desired, added | made.added)
        )
        current = NOT_NEEDED if light else iam.get_role(name)
        if current is None:
            if put is None and released is None:
                return Plan([])
            change = Change(kind=Kind.ROLE, attrs=record.attrs, claim=put, release=released)
            return Plan([], Fence(record, exact=True, lease_free=True), change)
        changes: list[str] = []
        attached = None
        if tries[-1]:
            outcome = ensure_role(
                desired,
                made,
                clock=clock,
                created_role_id=created_role_id,
                adoption_refusal=lambda _role: None,  # adopted before: only what the claims want is added
                added=added | made.added,
                current=current,
            )
            changes, attached = outcome.changes[1:], outcome.attached
        tries.append(True)  # a retry after a lost race puts back too
        pruned = prune_role(
            desired,
            made,
            added=added | made.added,
            created_role_id=created_role_id,
            role=current,
            attached=attached,
        )
        changes += pruned.changes if pruned else []
        pieces = frozenset((added | made.added) - made.removed)
        change = Change(kind=Kind.ROLE, attrs=record.attrs, pieces=pieces, claim=put, release=released)
        return Plan(changes, Fence(record, exact=True, lease_free=True), change)

    try:
        changes = run(
            objects,
            key,
            read=lambda: settle.lease_free(objects, key, source(), name, clock),
            attempt=attempt,
            undo=lambda _made: None,
            clock=clock,
            what=name,
        )
    except Exception:
        logger.exception(
            "role not converged back; the next request or the schedule converges it", role_name=name
        )
        return []
    logger.info("role converged to its claims", role_name=name, changes=changes)
    return changes


def _needs_role(record: Record, desired: RoleSpec, added: set[str]) -> bool:
    """Whether settling a request's pending change needs the role read before the prune: to take
    away a tag or a boundary (their current values), or to change the trust (the record's claims
    with the pending change ask for another trust than without). Policies and the instance
    profile are removed by name: DetachRolePolicy answers NoSuchEntity for one not attached."""
    removable = ownership.removable(added, desired)
    if any(p != ownership.PROFILE and not p.startswith("policy:") for p in removable):
        return True
    before = ownership.desired_of(record)
    return bool(canonical(desired.trust_statement) != canonical(before.trust_statement))


def takes_away(record: Record, settling: tuple[Intent, bool]) -> bool:
    """Whether settling the request's pending change takes anything away from the role. When
    not, putting it in force is a registry write alone."""
    view, _put, _released = _settled_view(record, settling)
    return view is not None and changes_away(record, view)


def changes_away(before: Record, after: Record) -> bool:
    """Whether going from the claims of before to those of after takes anything away from the
    role: a piece rolekeeper added that no claim wants after, or confused-deputy conditions."""
    if not before.claims:
        return False
    now = ownership.desired_of(before)
    wanted = ownership.desired_of(after) if after.claims else ownership.wanting_nothing(now)
    return bool(ownership.removable(ownership.added_of(before), wanted)) or canonical(
        wanted.trust_statement
    ) != canonical(now.trust_statement)


def _settled_view(
    record: Record, settling: tuple[Intent, bool] | None
) -> tuple[Record | None, Claim | None, Claim | None]:
    """The record as the settled request leaves it, and the claim to write or release (None,
    None, None: the request's pending change is not there any more)."""
    if settling is None:
        return record, None, None
    intent, accepted = settling
    claim = record.claim_of(intent.sk)
    if claim is None or claim.pending is None or claim.pending.request_id != intent.request_id:
        return None, None, None
    others = [c for c in record.claims if c.sk != claim.sk]
    if accepted:
        after: Claim | None = claim.in_force()
    elif claim.pending.new:
        after = None
    else:
        after = replace(claim, pending=None)
    view = replace(record, claims=[*others, after] if after is not None else others)
    return view, after, claim if after is None else None
