"""Put registered, claimed objects back to their recorded desired state. Knows nothing of events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.notify import notify
from rolekeeper.aws.registry import Registry
from rolekeeper.config import Settings
from rolekeeper.convergence.grants import converge_grant, is_stale, reissue_stale_grants
from rolekeeper.convergence.linked_roles import converge_linked_role
from rolekeeper.convergence.outcomes import UNREAD, role_attrs
from rolekeeper.convergence.roles import converge_role
from rolekeeper.domain import ownership
from rolekeeper.domain.drift import ASPECTS, Actual, drift
from rolekeeper.domain.errors import RolekeeperError
from rolekeeper.domain.records import Record, grant_key, role_key
from rolekeeper.domain.specs import GrantSpec, LinkedRoleSpec

logger = Logger(child=True)

# DeleteServiceLinkedRole finishes asynchronously; wait this long (in these steps) for its task.
DELETION_POLL_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0)
LEASE_SECONDS = 120
sleep: Callable[[float], None] = time.sleep


class RetryLater(RolekeeperError):
    """Not done yet (a deletion still in progress); raising lets Lambda's async retry come back."""


@dataclass
class Result:
    outcome: str  # healed | healthy | ignored | reported | suppressed | coalesced | in-use | failed
    name: str
    detail: str = ""
    changes: list[str] = field(default_factory=list)


# Why a heal leaves an object alone when the registry says it was let go (Lease.state, or the
# final write's answer).
RELEASED = {
    "gone": "no longer registered",
    "unclaimed": "no stack claims it any more",
    "deleting": "a stack's Delete is removing it",
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
    def __init__(self, settings: Settings, registry: Registry, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.registry = registry
        self.now = now

    @property
    def reporting(self) -> bool:
        return self.settings.heal_mode == "report"

    def _eligible(self, record: Record | None, name: str) -> Result | None:
        if record is None:
            return Result("ignored", name, "not registered")
        if not record.claims:
            return Result("ignored", name, "no stack claims it")
        if not record.healable:
            return Result("ignored", name, "healing is off (Heal: false)")
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
        record and actual may come from the scheduled reconcile's paged reads; the record is then
        read again before anything is repaired."""
        scanned = record is not None
        record = record or self.registry.get(role_key(name))
        if (ignored := self._eligible(record, name)) is not None:
            return ignored
        assert record is not None
        if slr_deleted and record.kind == "slr":
            if deletion_task_id:
                if in_use := self._await_deletion(name, deletion_task_id):
                    return in_use
            else:
                actual = self._await_disappearance(name, record, requested_at)
        with_pieces = record.kind == "role"
        if actual is None:
            actual = read_actual(name, with_pieces=with_pieces, aspects=aspects)
        problems = drift(record, actual, aspects, policy_arn)
        healed_before = record.healed_at  # as read before IAM was
        if problems and scanned:
            # The scan may be older than a claim's release or a stack's Delete: decide on the
            # record as it is now (the lease then checks it again, atomically).
            record = self.registry.get(record.key)
            if (ignored := self._eligible(record, name)) is not None:
                return ignored
            assert record is not None
            problems = drift(record, actual, aspects, policy_arn)
        if not problems:
            return Result("healthy", name)
        # The schedule's paged reads may be minutes old: its repairs read the role again.
        return self._repair(record, name, problems, None if scanned else actual, aspects, healed_before)

    def _await_deletion(self, name: str, task_id: str) -> Result | None:
        for delay in DELETION_POLL_DELAYS:
            status, reason = iam.deletion_status(task_id)
            if status == "SUCCEEDED":
                return None
            if status == "FAILED":
                return Result("in-use", name, f"deletion failed, nothing to heal: {reason}")
            sleep(delay)
        raise RetryLater(f"deletion of {name} still in progress ({task_id})")

    def _await_disappearance(self, name: str, record: Record, requested_at: datetime | None) -> Actual:
        """A DeleteServiceLinkedRole record without its deletion task id: IAM keeps the role
        until the deletion finishes, so wait (bounded) until GetRole no longer returns it, or
        returns a role made after the deletion was asked for (recreated since: a repeated event,
        or a retry after the heal). Still there: Lambda's retry comes back later."""
        known = record.attrs.get("role_id")
        for delay in DELETION_POLL_DELAYS:
            role = iam.get_role(name)
            if role is None or (known and role.get("RoleId") != known):
                return Actual(role=role)
            created = role.get("CreateDate")
            if requested_at is not None and isinstance(created, datetime) and created > requested_at:
                return Actual(role=role)
            sleep(delay)
        raise RetryLater(f"{name} is still there after its deletion was requested (no task id in the event)")

    def _repair(
        self,
        record: Record,
        name: str,
        problems: list[str],
        actual: Actual | None,
        aspects: frozenset[str],
        healed_before: float,
    ) -> Result:
        """actual: IAM as just read for the aspects (None: read it again while converging)."""
        summary = ", ".join(problems)
        if self.reporting:
            notify(
                self.settings.notification_topic_arn,
                f"rolekeeper would heal {name}",
                f"{name}: {summary} (HealMode report)",
            )
            return Result("reported", name, summary)
        with_pieces = record.kind == "role"
        reread: list[Actual] = []

        def still_needed() -> bool:
            reread.append(read_actual(name, with_pieces=with_pieces, aspects=aspects))
            return bool(drift(record, reread[-1], aspects))

        acquired = self._acquire(record, name, summary, still_needed, healed_before)
        if isinstance(acquired, Result):
            return acquired
        token = acquired
        actual = reread[-1] if reread else actual
        try:
            if record.kind == "slr":
                outcome = converge_linked_role(
                    LinkedRoleSpec.from_dict(record.desired),
                    current=UNREAD if actual is None else actual.role,
                )
            else:
                # A missing role is made whole; an existing one gets the aspects checked, from
                # what was read for them (no second GetRole or list).
                outcome = converge_role(
                    ownership.desired_of(record),
                    added=ownership.added_of(record),
                    created_role_id=ownership.created_role_id(record),
                    rollback=False,
                    healing=True,
                    current=UNREAD if actual is None else actual.role,
                    attached=actual.attached if actual and actual.role and "policies" in aspects else None,
                    aspects=aspects if actual and actual.role else ASPECTS,
                )
            changes = [*outcome.changes]
            if record.kind == "slr" and outcome.role_id != record.attrs.get("role_id"):
                grantee = {"RoleName": outcome.name, "Arn": outcome.arn, "RoleId": outcome.role_id}
                changes += reissue_stale_grants(self.registry, grantee, healable_only=True)
        except Exception:
            self.registry.end_heal(record.key, token=token, healed_at=self.now())
            raise
        # One conditional write: the new RoleId (last: if a grant re-issue failed, the old one
        # stays and the retry or the schedule re-issues again), healed_at, the lease given back.
        written = self.registry.record_heal(
            record.key,
            token=token,
            attrs=role_attrs(outcome),
            added=outcome.added,
            created_now=outcome.created or outcome.ours,
            healed_at=self.now(),
        )
        if written != "recorded":
            # Give the lease back where the item still is (a Delete waiting on it goes on).
            self.registry.end_heal(record.key, token=token)
        if written in RELEASED:
            return self._released(name, written, changes)
        if written != "recorded":
            logger.warning("heal done but not recorded", target=name, why=written, changes=changes)
        notify(
            self.settings.notification_topic_arn,
            f"rolekeeper healed {name}",
            f"{name}: {summary}; done: {', '.join(changes)}",
        )
        return Result("healed", name, summary, changes)

    @staticmethod
    def _released(name: str, why: str, changes: list[str]) -> Result:
        """A stack let the object go while it was being healed: its record stays as the Delete
        left it (never written back), and nothing is undone that this heal cannot prove is its
        own (the Delete side waits for a held lease, so this is the rare lost-lease case)."""
        logger.warning("released while healing", target=name, why=RELEASED[why], changes=changes)
        return Result("ignored", name, f"released while healing: {RELEASED[why]}", changes)

    def _acquire(
        self, record: Record, name: str, summary: str, still_needed: Callable[[], bool], healed_before: float
    ) -> str | Result:
        """Take the heal lease and count the heal (one conditional write), then confirm the damage
        is still there if a heal ended since it was observed (healed_before: the record's
        healed_at as read before IAM or KMS was). Returns the lease token (go ahead:
        the caller holds the lease and ends it), or the reason not to heal now."""
        token = uuid.uuid4().hex
        lease = self.registry.begin_heal(
            record.key,
            token=token,
            now=self.now(),
            lease_seconds=LEASE_SECONDS,
            limit=self.settings.heal_rate_limit,
        )
        if lease.state == "held":
            return Result("coalesced", name, "another invocation is healing it")
        if lease.state in RELEASED:
            return Result("ignored", name, RELEASED[lease.state])
        if not lease.taken:
            message = f"{name} was healed {self.settings.heal_rate_limit} times this hour; healing stopped for it: {summary}"
            notify(self.settings.notification_topic_arn, f"rolekeeper stopped healing {name}", message)
            return Result("suppressed", name, message)
        try:
            # A heal ended since the record was read (and so perhaps after IAM was observed):
            # look again before repairing what it may have repaired already.
            if lease.last_healed != healed_before and not still_needed():
                self.registry.end_heal(record.key, token=token, uncount=True)
                return Result("coalesced", name, "already healed by another invocation")
        except Exception:
            self.registry.end_heal(record.key, token=token, uncount=True)
            raise
        return token

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
        scanned = record is not None
        if record is None and key_arn and key_arn.startswith("arn:"):
            record = self.registry.get(grant_key(f"{key_arn}#{grant_id}"))
            if record is not None and record.attrs.get("grant_id") != grant_id:
                record = None
        record = record or self.registry.grant_by_id(grant_id)
        if (ignored := self._eligible(record, grant_id)) is not None:
            return ignored
        assert record is not None
        spec = GrantSpec.from_dict(record.desired)
        if exists is None:
            exists = kms.grant_exists(spec.key_arn, grant_id)
        if exists:
            return Result("healthy", grant_id)
        healed_before = record.healed_at
        if scanned:  # decide on the record as it is now, not as the scan saw it
            record = self.registry.get(record.key)
            if (ignored := self._eligible(record, grant_id)) is not None:
                return ignored
            assert record is not None
            if record.attrs.get("grant_id") != grant_id:
                return Result("healthy", grant_id, "replaced since the scan")
        if self.reporting:
            return Result("reported", grant_id, "grant retired or revoked")
        grantee = iam.get_role(spec.grantee_role_name)
        if grantee is None:
            return Result(
                "ignored", grant_id, f"{spec.grantee_role_name} is missing; its heal re-issues the grant"
            )
        acquired = self._acquire(
            record,
            grant_id,
            "grant retired or revoked",
            lambda: not kms.grant_exists(spec.key_arn, grant_id),
            healed_before,
        )
        if isinstance(acquired, Result):
            return acquired
        try:
            outcome = converge_grant(spec, grantee)
        except Exception:
            self.registry.end_heal(record.key, token=acquired, healed_at=self.now())
            raise
        written = self.registry.record_heal(
            record.key,
            token=acquired,
            attrs=_grant_attrs(outcome.grant_id, outcome.grantee_arn, outcome.grantee_role_id),
            created_now=True,
            healed_at=self.now(),
        )
        if written != "recorded":
            self.registry.end_heal(record.key, token=acquired)
        if written in RELEASED:
            return self._released(grant_id, written, [outcome.grant_id])
        notify(
            self.settings.notification_topic_arn,
            "rolekeeper re-issued a KMS grant",
            f"{spec.key_arn}: grant {grant_id} replaced by {outcome.grant_id}",
        )
        return Result("healed", grant_id, "grant re-issued", [outcome.grant_id])

    # --- the scheduled reconcile ----------------------------------------------------------------

    def reconcile_all(self) -> list[Result]:
        """Every registered object checked against IAM and KMS listed in pages, not one call each."""
        records = [r for r in self.registry.all() if r.claims and r.healable]
        roles: dict[str, dict[str, Any]] = {}
        if any(r.kind in ("slr", "role", "grant") for r in records):
            roles = {detail["RoleName"].lower(): detail for detail in iam.role_details()}
        grants_by_key: dict[str, set[str]] = {}
        results = []
        for record in records:
            try:
                grantee = roles.get(record.attrs.get("grantee_role", "")) if record.kind == "grant" else None
                if grantee is not None and is_stale(record, grantee["RoleId"]):
                    # Made for an older incarnation of its grantee (the grant Name carries the
                    # RoleId): existing is not enough, it no longer applies to the role.
                    changes = reissue_stale_grants(self.registry, grantee, healable_only=True)
                    results.append(
                        Result("healed", record.key, "grant made for a replaced grantee role", changes)
                    )
                elif record.kind == "grant":
                    key_arn = record.attrs["key_arn"]
                    if key_arn not in grants_by_key:
                        grants_by_key[key_arn] = kms.grant_ids(key_arn)
                    grant_id = record.attrs["grant_id"]
                    results.append(
                        self.heal_grant(
                            grant_id,
                            exists=grant_id in grants_by_key[key_arn],
                            record=record,
                        )
                    )
                else:
                    name = record.attrs.get("name") or record.key.split("#", 1)[1]
                    found = roles.get(name.lower())
                    actual = Actual.from_details(found) if found else Actual(role=None)
                    results.append(self.heal_role(name, actual=actual, record=record))
            except Exception as error:  # one object's failure must not stop the others
                logger.exception("reconcile failed for object", key=record.key)
                results.append(Result("failed", record.key, f"{type(error).__name__}: {error}"))
        return results


def _grant_attrs(grant_id: str, grantee_arn: str, grantee_role_id: str) -> dict[str, str]:
    return {"grant_id": grant_id, "grantee_arn": grantee_arn, "grantee_role_id": grantee_role_id}
