"""Put registered, claimed objects back to what their claims want. Knows nothing of events.

A heal: the object must be registered, claimed and healing on; the damage is observed in IAM or
KMS; the heal takes the object's lease (and counts itself against the hour's limit), reads the
record as of its lease and plans from that (a stack's Update or release that landed before the
lease is what the heal repairs to; one after waits for the lease), repairs, and writes what it
made fenced by the version it read and its lease. A heal whose write is refused because a
stack let the object go meanwhile takes back what it made.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.notify import notify
from rolekeeper.aws.registry import Change, Fence, Registry
from rolekeeper.aws.registry.leases import HEAL_LEASE_SECONDS, LeaseState
from rolekeeper.config import Settings
from rolekeeper.convergence import grants
from rolekeeper.convergence.linked_roles import ensure_linked_role
from rolekeeper.convergence.outcomes import UNREAD, Made, role_attrs
from rolekeeper.convergence.roles import delete_created_role, prune_role, repair_role
from rolekeeper.convergence.transition import Plan, reading, run
from rolekeeper.domain import ownership
from rolekeeper.domain.drift import ASPECTS, Actual, drift
from rolekeeper.domain.errors import RetryLater
from rolekeeper.domain.records import Kind, Record, grant_key, role_key
from rolekeeper.domain.specs import LinkedRoleSpec
from rolekeeper.retry import SLR_DELETION, Clock

logger = Logger(child=True)


class Outcome(StrEnum):
    HEALED = "healed"
    HEALTHY = "healthy"
    IGNORED = "ignored"
    REPORTED = "reported"
    SUPPRESSED = "suppressed"
    COALESCED = "coalesced"
    IN_USE = "in-use"
    FAILED = "failed"


@dataclass
class Result:
    outcome: Outcome
    name: str
    detail: str = ""
    changes: list[str] = field(default_factory=list)


# Why a heal leaves an object alone when the registry says it was let go.
RELEASED = {
    LeaseState.GONE: "no longer registered",
    LeaseState.UNCLAIMED: "no stack claims it any more",
    LeaseState.DELETING: "a stack's Delete is removing it",
}


def read_actual(name: str, *, with_pieces: bool, aspects: frozenset[str] = ASPECTS) -> Actual:
    """GetRole (trust, boundary and tags come with it), and only the lists aspects need."""
    role = iam.get_role(name)
    if role is None or not with_pieces:
        return Actual(role=role)
    return Actual(
        role=role,
        attached=iam.attached_policies(name) if "policies" in aspects else set(),
        profiles=set(iam.profiles_of(name)) if "profile" in aspects else set(),
    )


class Healer:
    def __init__(self, settings: Settings, registry: Registry, clock: Clock) -> None:
        self.settings = settings
        self.registry = registry
        self.objects = registry.objects
        self.clock = clock

    @property
    def reporting(self) -> bool:
        return self.settings.heal_mode == "report"

    @staticmethod
    def _eligible(record: Record | None, name: str) -> Result | None:
        if record is None:
            return Result(Outcome.IGNORED, name, "not registered")
        if not record.claims:
            return Result(Outcome.IGNORED, name, "no stack claims it")
        if not record.healable:
            return Result(Outcome.IGNORED, name, "healing is off (Heal: false)")
        if record.deleting:
            return Result(Outcome.IGNORED, name, RELEASED[LeaseState.DELETING])
        return None

    # --- roles ----------------------------------------------------------------------------------

    def heal_role(
        self,
        name: str,
        *,
        aspects: frozenset[str] = ASPECTS,
        policy_arn: str | None = None,
        slr_deleted: bool = False,
        deletion_task_id: str | None = None,
        requested_at: datetime | None = None,
        actual: Actual | None = None,
        record: Record | None = None,
    ) -> Result:
        """Check (and repair) aspects of a registered role: those an event names, or all.

        slr_deleted: a DeleteServiceLinkedRole at requested_at (with its deletion task id when
        the record carries one): the role stays visible until IAM finishes, so wait for that.
        record and actual may come from the scheduled reconcile's paged reads; the repair then
        reads the role again (the pages may be minutes old)."""
        scanned = record is not None
        record = record or self.objects.read(role_key(name))
        if (ignored := self._eligible(record, name)) is not None:
            return ignored
        assert record is not None
        if slr_deleted and record.kind == Kind.SLR:
            if deletion_task_id:
                if in_use := self._await_deletion(name, deletion_task_id):
                    return in_use
            else:
                actual = self._await_disappearance(name, record, requested_at)
        if actual is None:
            actual = read_actual(name, with_pieces=record.kind == Kind.ROLE, aspects=aspects)
        problems = drift(record, actual, aspects, policy_arn)
        if not problems:
            return Result(Outcome.HEALTHY, name)
        summary = ", ".join(problems)
        if self.reporting:
            notify(
                self.settings.notification_topic_arn,
                f"rolekeeper would heal {name}",
                f"{name}: {summary} (HealMode report)",
            )
            return Result(Outcome.REPORTED, name, summary)

        def still_damaged(held: Record) -> Actual | None:
            fresh = read_actual(name, with_pieces=held.kind == Kind.ROLE, aspects=aspects)
            return fresh if drift(held, fresh, aspects, policy_arn) else None

        seen = None if scanned else actual
        held = self._acquire(record, name, summary, still_damaged, seen)
        if isinstance(held, Result):
            return held
        token, now_record, current = held
        try:
            changes = self._repair_role(name, now_record, token, current, aspects)
        except Exception:
            self.registry.leases.give_back(now_record.key, token=token, healed_at=self.clock.now())
            raise
        if isinstance(changes, Result):
            # Let go while healing: the lease goes back where the item still is (a Delete
            # waiting on it goes on).
            self.registry.leases.give_back(now_record.key, token=token)
            return changes
        notify(
            self.settings.notification_topic_arn,
            f"rolekeeper healed {name}",
            f"{name}: {summary}; done: {', '.join(changes)}",
        )
        return Result(Outcome.HEALED, name, summary, changes)

    def _repair_role(
        self, name: str, first: Record, token: str, current: Actual | None, aspects: frozenset[str]
    ) -> list[str] | Result:
        """The heal's transition: repair from the record as of the lease, write fenced by its
        version and the lease; when the stack let the object go meanwhile, take back what it
        made. current: IAM as read after the lease (None: read while repairing)."""
        objects, clock = self.objects, self.clock
        read = reading(objects, first.key, first)
        released: list[str] = []
        attempts: list[int] = []

        def attempt(record: Record | None, made: Made) -> Plan[list[str]]:
            if record is None or not record.claims or record.deleting or record.lease.by != token:
                released.append(_why_released(record, token))
                return Plan([], abandon=True)
            if record.kind == Kind.SLR:
                spec = LinkedRoleSpec.from_dict(record.spec())
                role = UNREAD if current is None or made.created else current.role
                outcome = ensure_linked_role(spec, made, clock=clock, current=role)
                changes = list(outcome.changes)
                if record.attrs.get("role_id") != outcome.role_id:
                    # Grants made for the old unique id no longer apply: re-issued (each under its
                    # own lease) before the new id is written, so a failure leaves the old id for
                    # the retry or the schedule to act on.
                    grantee = {"RoleName": outcome.name, "Arn": outcome.arn, "RoleId": outcome.role_id}
                    changes += grants.reissue_stale(
                        self.registry,
                        grantee,
                        clock=clock,
                        limit=self.settings.heal_rate_limit,
                        healable_only=True,
                    )
            else:
                desired = ownership.desired_of(record)
                # What was read after the lease serves the first attempt; a retry reads IAM again.
                seen = current if attempts == [] and not made.created else None
                attempts.append(record.version)
                outcome = repair_role(
                    desired,
                    made,
                    clock=clock,
                    created_role_id=ownership.created_role_id(record),
                    current=seen.role if seen is not None else UNREAD,
                    attached=seen.attached
                    if seen is not None and seen.role is not None and "policies" in aspects
                    else None,
                    aspects=aspects if seen is not None and seen.role is not None else ASPECTS,
                )
                changes = list(outcome.changes)
            change = Change(
                kind=record.kind,
                attrs=role_attrs(outcome),
                created=made.created or outcome.ours,
                added=frozenset(made.added),
                healed_at=clock.now(),
                end_lease=True,
            )
            return Plan(changes, Fence(record, exact=True, lease=token, claimed=True), change)

        def undo(made: Made) -> None:
            self._take_back(name, first, token, made)

        changes = run(objects, first.key, read=read, attempt=attempt, undo=undo, clock=clock, what=name)
        if released:
            logger.warning(
                "released while healing; what the heal made is taken back", target=name, why=released[-1]
            )
            return Result(Outcome.IGNORED, name, f"released while healing: {released[-1]}")
        return changes

    def _take_back(self, name: str, first: Record, token: str, made: Made) -> None:
        """A heal whose write did not land because the object was let go: remove the role it
        created (only if no claim holds it now), or the pieces it added that no claim wants."""
        objects = self.objects
        try:
            if made.created:
                # absent_too: a last Delete that finished meanwhile left no record of the role.
                taken = objects.begin_delete(
                    first.key, f"heal:{token}", now=self.clock.now(), lease=token, absent_too=True
                )
                if taken is None:
                    return
                if first.kind == Kind.SLR:
                    task = iam.delete_service_linked_role(name)
                    objects.finish_delete(first.key, f"heal:{token}", task_id=task)
                else:
                    delete_created_role(name, profile=made.profile)
                    objects.finish_delete(first.key, f"heal:{token}")
                return
            record = objects.read(first.key)
            if first.kind == Kind.ROLE and made.added:
                # What the claims as they are now want stays; the rest of what the heal added goes.
                spec = ownership.desired_of(record) if record is not None and record.claims else None
                keep = spec or ownership.wanting_nothing(ownership.desired_of(first))
                prune_role(keep, Made(), added=made.added, created_role_id=ownership.created_role_id(first))
        except Exception:
            logger.exception("could not take back what the heal made", target=name)

    def _await_deletion(self, name: str, task_id: str) -> Result | None:
        for _ in SLR_DELETION.tries(self.clock):
            status, reason = iam.deletion_status(task_id)
            if status == "SUCCEEDED":
                return None
            if status == "FAILED":
                return Result(Outcome.IN_USE, name, f"deletion failed, nothing to heal: {reason}")
        raise RetryLater(f"deletion of {name} still in progress ({task_id})")

    def _await_disappearance(self, name: str, record: Record, requested_at: datetime | None) -> Actual:
        """A DeleteServiceLinkedRole record without its deletion task id: IAM keeps the role
        until the deletion finishes, so wait (bounded) until GetRole no longer returns it, or
        returns a role made after the deletion was asked for (recreated since: a repeated event,
        or a retry after the heal). Still there: Lambda's retry comes back later."""
        known = record.attrs.get("role_id")
        for _ in SLR_DELETION.tries(self.clock):
            role = iam.get_role(name)
            if role is None or (known and role.get("RoleId") != known):
                return Actual(role=role)
            created = role.get("CreateDate")
            if requested_at is not None and isinstance(created, datetime) and created > requested_at:
                return Actual(role=role)
        raise RetryLater(f"{name} is still there after its deletion was requested (no task id in the event)")

    # --- the lease ------------------------------------------------------------------------------

    def _acquire(
        self,
        record: Record,
        name: str,
        summary: str,
        still_damaged: Callable[[Record], Any],
        seen: Any,
    ) -> tuple[str, Record, Any] | Result:
        """Take the heal lease and count the heal (one conditional write), then read the record
        as of the lease and confirm the damage against it (a stack's Update may have changed what
        is wanted; another heal may have repaired it). Returns the lease token, the record and
        what IAM/KMS showed (None: not read again), or why not to heal now."""
        token = uuid.uuid4().hex
        lease = self.registry.leases.take(
            record.key,
            token=token,
            now=self.clock.now(),
            seconds=HEAL_LEASE_SECONDS,
            limit=self.settings.heal_rate_limit,
        )
        if lease.state == LeaseState.HELD:
            return Result(Outcome.COALESCED, name, "another invocation is healing it")
        if lease.state in RELEASED:
            return Result(Outcome.IGNORED, name, RELEASED[lease.state])
        if not lease.taken:
            message = f"{name} was healed {self.settings.heal_rate_limit} times this hour; healing stopped for it: {summary}"
            notify(self.settings.notification_topic_arn, f"rolekeeper stopped healing {name}", message)
            return Result(Outcome.SUPPRESSED, name, message)
        try:
            held = self.objects.read(record.key)
            if held is None or not held.claims or held.lease.by != token:
                self.registry.leases.give_back(record.key, token=token, uncount=True)
                return Result(Outcome.IGNORED, name, RELEASED[LeaseState.UNCLAIMED])
            current = seen
            # The record or a heal moved since the damage was observed: look again, against the
            # record as of the lease, before repairing what may be repaired or no longer wanted.
            if seen is None or held.version != record.version or lease.last_healed != record.healed_at:
                current = still_damaged(held)
                if current is None:
                    self.registry.leases.give_back(record.key, token=token, uncount=True)
                    return Result(Outcome.COALESCED, name, "already healed, or no longer wanted")
        except Exception:
            self.registry.leases.give_back(record.key, token=token, uncount=True)
            raise
        return token, held, current

    # --- grants ---------------------------------------------------------------------------------

    def heal_grant(
        self,
        grant_id: str,
        *,
        key_arn: str | None = None,
        exists: bool | None = None,
        record: Record | None = None,
    ) -> Result:
        """key_arn (from the event): the grant's own record is read directly (its key is the
        physical id, key ARN and grant id); a grant re-issued since is found through the index."""
        scanned = record is not None or exists is not None
        if record is None and key_arn and key_arn.startswith("arn:"):
            record = self.objects.read(grant_key(f"{key_arn}#{grant_id}"))
            if record is not None and record.attrs.get("grant_id") != grant_id:
                record = None
        if record is None:
            found = self.objects.grants_by_id(grant_id)
            record = found[0] if found else None
        if (ignored := self._eligible(record, grant_id)) is not None:
            return ignored
        assert record is not None
        grant_key_arn = record.attrs.get("key_arn") or record.spec().get("key_arn", "")
        if exists is None:
            exists = kms.grant_exists(grant_key_arn, grant_id)
        if exists:
            return Result(Outcome.HEALTHY, grant_id)
        if self.reporting:
            return Result(Outcome.REPORTED, grant_id, "grant retired or revoked")
        grantee_name = record.spec().get("grantee_role_name", "")
        grantee = iam.get_role(grantee_name)
        if grantee is None:
            return Result(
                Outcome.IGNORED, grant_id, f"{grantee_name} is missing; its heal re-issues the grant"
            )

        def still_damaged(held: Record) -> Any:
            current = held.attrs.get("grant_id")
            return True if current == grant_id and not kms.grant_exists(grant_key_arn, grant_id) else None

        # KMS was asked just now, unless the schedule's listing (minutes old) said so.
        seen = None if scanned else True
        held = self._acquire(record, grant_id, "grant retired or revoked", still_damaged, seen)
        if isinstance(held, Result):
            return held
        token = held[0]
        try:
            done = grants.reissue(
                self.objects,
                record.key,
                grantee,
                token=token,
                clock=self.clock,
                first=held[1],
                gone=grant_id,
            )
        except Exception:
            self.registry.leases.give_back(record.key, token=token, healed_at=self.clock.now())
            raise
        if not done.grant_id:
            self.registry.leases.give_back(record.key, token=token)
            return Result(Outcome.IGNORED, grant_id, f"released while healing: {done.why_not}")
        notify(
            self.settings.notification_topic_arn,
            "rolekeeper re-issued a KMS grant",
            f"{grant_key_arn}: grant {grant_id} replaced by {done.grant_id}",
        )
        return Result(Outcome.HEALED, grant_id, "grant re-issued", [done.grant_id])


def _why_released(record: Record | None, token: str) -> str:
    if record is None:
        return RELEASED[LeaseState.GONE]
    if record.deleting:
        return RELEASED[LeaseState.DELETING]
    if not record.claims:
        return RELEASED[LeaseState.UNCLAIMED]
    return "another writer holds it now" if record.lease.by != token else "changed"
