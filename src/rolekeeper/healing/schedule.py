"""The scheduled reconcile: every registered object checked against IAM and KMS read in pages
(GetAccountAuthorizationDetails pages of 1,000 roles, kept as healing.snapshot reduces them;
ListGrants per key), the registry walked in Scan pages one object at a time; what drifted is
healed through the same transitions as an event's heal (Healer.heal_role, Healer.heal_grant).
A record that looks healthy from the pages costs no further call.

A run is bounded by the healer's clock (the invocation's deadline less the handler's margin): it
stops between two objects once the clock runs out and saves where it stopped (the registry's
reconcile cursor); the next run resumes there, and one that reaches the end clears the cursor.
Every run that gets as far as the registry checks at least one object, so every registered object
is checked within ceil(N / objects per run) + 1 runs.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger

from rolekeeper.aws import kms
from rolekeeper.aws.registry import Cursor
from rolekeeper.convergence import grants
from rolekeeper.domain.drift import Actual
from rolekeeper.domain.records import Kind, Record
from rolekeeper.healing.service import Healer, Outcome, Result
from rolekeeper.healing.snapshot import Snapshot

logger = Logger(child=True)


@dataclass
class Reconciled:
    """What one run did: outcome counts, the results worth reporting (all but healthy), how many
    objects it checked, where it started and stopped, and whether it reached the registry's end."""

    counts: Counter[str] = field(default_factory=Counter)
    notable: list[Result] = field(default_factory=list)
    checked: int = 0
    complete: bool = False
    resumed_after: str = ""  # the cursor it started from ("": the first object)
    position: str = ""  # the last object it passed (checked, or not eligible)
    stopped_why: str = ""  # why it stopped before the end ("": it did not)
    cycle: Cursor | None = None  # the cycle so far: as saved (stopped early) or as finished

    def add(self, result: Result) -> None:
        self.checked += 1
        self.counts[str(result.outcome)] += 1
        if result.outcome != Outcome.HEALTHY:
            self.notable.append(result)


def reconcile_all(healer: Healer) -> Reconciled:
    clock, cursors = healer.clock, healer.registry.cursor
    saved = cursors.read()
    started = clock.now()
    done = Reconciled(resumed_after=saved.after if saved else "")
    done.position = done.resumed_after
    try:
        _walk(healer, done)
    except Exception:
        # The walk itself failed (a Scan page, the IAM pages): Lambda's retry resumes after the
        # last object checked.
        try:
            _keep(done, saved, started, healer)
        except Exception:
            logger.exception("could not save where the reconcile stopped", position=done.position)
        raise
    _keep(done, saved, started, healer)
    return done


def _walk(healer: Healer, done: Reconciled) -> None:
    clock = healer.clock
    if clock.left() <= 0:
        done.stopped_why = "out of time before it began"
        return
    records = healer.objects.sweep(done.resumed_after or None)
    # The first Scan page before any IAM page: an empty registry costs no IAM read.
    first = next(records, None)
    snapshot = Snapshot() if first is None else Snapshot.read(clock)
    if snapshot is None:
        done.stopped_why = "out of time while reading the IAM pages"
        return
    grants_by_key: dict[str, set[str]] = {}
    for record in itertools.chain(() if first is None else (first,), records):
        if clock.left() <= 0:
            done.stopped_why = "out of time"
            return
        if record.claims and record.healable and not record.deleting:
            done.add(_check(healer, record, snapshot, grants_by_key))
        done.position = record.key
    done.complete = True


def _keep(done: Reconciled, saved: Cursor | None, started: float, healer: Healer) -> None:
    """Save where a run that stopped early stopped; clear the cursor when a run reached the end."""
    cursors = healer.registry.cursor
    runs = (saved.runs if saved else 0) + 1
    since = saved.started_at if saved else started
    checked = (saved.checked if saved else 0) + done.checked
    if done.complete:
        done.cycle = Cursor("", since, runs, checked)
        if saved is not None:
            cursors.clear()
    elif done.position != done.resumed_after:
        done.cycle = Cursor(done.position, since, runs, checked)
        cursors.save(done.cycle, now=healer.clock.now())
    else:
        done.cycle = saved  # nothing passed: the cursor stays as it is


def _check(healer: Healer, record: Record, snapshot: Snapshot, grants_by_key: dict[str, set[str]]) -> Result:
    """One object against the pages; a heal only where they show drift."""
    try:
        if record.kind == Kind.GRANT:
            grantee = snapshot.get(record.attrs.get("grantee_role", ""))
            if grantee is not None and grants.is_stale(record, grantee.role_id):
                # Made for an older incarnation of its grantee (the grant Name carries the RoleId):
                # existing is not enough, it no longer applies to the role.
                changes = grants.reissue_stale(
                    healer.registry,
                    {"RoleName": grantee.name, "Arn": grantee.arn, "RoleId": grantee.role_id},
                    clock=healer.clock,
                    limit=healer.settings.heal_rate_limit,
                    healable_only=True,
                )
                return Result(Outcome.HEALED, record.key, "grant made for a replaced grantee role", changes)
            key_arn = record.attrs["key_arn"]
            if key_arn not in grants_by_key:
                grants_by_key[key_arn] = kms.grant_ids(key_arn)
            grant_id = record.attrs["grant_id"]
            return healer.heal_grant(grant_id, exists=grant_id in grants_by_key[key_arn], record=record)
        name = record.attrs.get("name") or record.key.split("#", 1)[1]
        found = snapshot.get(name)
        actual = found.actual() if found is not None else Actual(role=None)
        return healer.heal_role(name, actual=actual, record=record)
    except Exception as error:  # one object's failure must not stop the others
        logger.exception("reconcile failed for object", key=record.key)
        return Result(Outcome.FAILED, record.key, f"{type(error).__name__}: {error}")
