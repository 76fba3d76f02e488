"""Put registered, claimed objects back to their recorded desired state. Knows nothing of events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper import iam, kms, ownership
from rolekeeper.config import Settings
from rolekeeper.errors import RolekeeperError
from rolekeeper.notify import notify
from rolekeeper.reconcile import (
    GrantSpec,
    LinkedRoleSpec,
    canonical,
    converge_grant,
    converge_linked_role,
    converge_role,
    merged_trust,
    role_attrs,
    trusts,
)
from rolekeeper.registry import Record, Registry, role_key

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


@dataclass
class Actual:
    """What IAM holds for a role, as GetRole (or GetAccountAuthorizationDetails) reports it."""

    role: dict[str, Any] | None
    attached: set[str] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)

    @classmethod
    def from_details(cls, detail: dict[str, Any]) -> Actual:
        return cls(
            role=detail,
            attached={p["PolicyArn"] for p in detail.get("AttachedManagedPolicies", [])},
            profiles={
                p["InstanceProfileName"]
                for p in detail.get("InstanceProfileList", [])
                if any(r["RoleName"] == detail["RoleName"] for r in p.get("Roles", []))
            },
        )

    @classmethod
    def read(cls, name: str, *, with_pieces: bool) -> Actual:
        role = iam.get_role(name)
        if role is None or not with_pieces:
            return cls(role=role)
        return cls(role=role, attached=iam.attached_policies(name), profiles=set(iam.profiles_of(name)))


def drift(record: Record, actual: Actual) -> list[str]:
    """What differs from the recorded desired state (additive only: never what others added)."""
    if actual.role is None:
        return ["role missing"]
    if record.kind == "slr":
        # Recreated outside rolekeeper (or a re-issue of its grants failed part-way): the grants
        # registered for the old unique id no longer apply to it.
        known = record.attrs.get("role_id")
        return ["role recreated with a new unique id"] if known and actual.role.get("RoleId") != known else []
    if record.kind != "role":
        return []
    spec = ownership.desired_of(record)
    problems = [f"policy {arn} detached" for arn in spec.policy_arns if arn not in actual.attached]
    current = actual.role.get("AssumeRolePolicyDocument") or {}
    if ownership.is_ours(record, actual.role):
        if canonical(merged_trust(current, spec.trust_statement, spec.principals)) != canonical(current):
            problems.append("trust policy changed")
    elif not trusts(current, spec.principals):
        # An adopted role's trust statements and conditions are its owner's: only losing every
        # statement that trusts the blueprint's service is damage.
        problems.append("trust statement removed")
    if spec.instance_profile and spec.name not in actual.profiles:
        problems.append("instance profile missing or role removed from it")
    return problems


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
        deletion_task_id: str | None = None,
        actual: Actual | None = None,
        record: Record | None = None,
        observed_at: float | None = None,
    ) -> Result:
        """record and actual may come from the scheduled reconcile's paged reads (at observed_at)."""
        record = record or self.registry.get(role_key(name))
        if (ignored := self._eligible(record, name)) is not None:
            return ignored
        assert record is not None
        if deletion_task_id and (in_use := self._await_deletion(name, deletion_task_id)):
            return in_use
        if actual is None or observed_at is None:
            observed_at = self.now()
            actual = Actual.read(name, with_pieces=record.kind == "role")
        problems = drift(record, actual)
        if not problems:
            return Result("healthy", name)
        return self._repair(record, name, problems, observed_at)

    def _await_deletion(self, name: str, task_id: str) -> Result | None:
        for delay in DELETION_POLL_DELAYS:
            status, reason = iam.deletion_status(task_id)
            if status == "SUCCEEDED":
                return None
            if status == "FAILED":
                return Result("in-use", name, f"deletion failed, nothing to heal: {reason}")
            sleep(delay)
        raise RetryLater(f"deletion of {name} still in progress ({task_id})")

    def _repair(self, record: Record, name: str, problems: list[str], observed_at: float) -> Result:
        summary = ", ".join(problems)
        if self.reporting:
            notify(
                self.settings.notification_topic_arn,
                f"rolekeeper would heal {name}",
                f"{name}: {summary} (HealMode report)",
            )
            return Result("reported", name, summary)
        blocked = self._acquire(
            record,
            name,
            summary,
            lambda: bool(drift(record, Actual.read(name, with_pieces=record.kind == "role"))),
            observed_at,
        )
        if blocked is not None:
            return blocked
        try:
            if record.kind == "slr":
                outcome = converge_linked_role(LinkedRoleSpec.from_dict(record.desired))
            else:
                outcome = converge_role(
                    ownership.desired_of(record),
                    added=ownership.added_of(record),
                    created_role_id=ownership.created_role_id(record),
                    rollback=False,
                    healing=True,
                )
            changes = [*outcome.changes]
            if record.kind == "slr" and outcome.role_id != record.attrs.get("role_id"):
                changes += self._reissue_grants(name)
            # Recorded last: if a grant re-issue failed, the old RoleId stays and the retry (or the
            # schedule) sees the role as recreated and re-issues again.
            self.registry.record(
                record.key,
                record.kind,
                record.desired,
                created_now=outcome.created or outcome.ours,
                attrs=role_attrs(outcome),
                added=outcome.added,
            )
        finally:
            self.registry.end_heal(record.key, healed_at=self.now())
        notify(
            self.settings.notification_topic_arn,
            f"rolekeeper healed {name}",
            f"{name}: {summary}; done: {', '.join(changes)}",
        )
        return Result("healed", name, summary, changes)

    def _acquire(
        self, record: Record, name: str, summary: str, still_needed: Callable[[], bool], observed_at: float
    ) -> Result | None:
        """Take the heal lease, confirm the damage is still there if a heal ended since it was
        observed, count the heal. None: go ahead (the caller holds the lease and ends it);
        otherwise the reason not to heal now."""
        taken, last_healed = self.registry.begin_heal(record.key, now=self.now(), lease_seconds=LEASE_SECONDS)
        if not taken:
            return Result("coalesced", name, "another invocation is healing it")
        try:
            # 2 s of slack for clocks that differ between invocations.
            if last_healed >= observed_at - 2 and not still_needed():
                self.registry.end_heal(record.key)
                return Result("coalesced", name, "already healed by another invocation")
            if not self.registry.count_heal(record.key, now=self.now(), limit=self.settings.heal_rate_limit):
                self.registry.end_heal(record.key)
                message = f"{name} was healed {self.settings.heal_rate_limit} times this hour; healing stopped for it: {summary}"
                notify(self.settings.notification_topic_arn, f"rolekeeper stopped healing {name}", message)
                return Result("suppressed", name, message)
        except Exception:
            self.registry.end_heal(record.key)
            raise
        return None

    def _reissue_grants(self, role_name: str) -> list[str]:
        """A recreated service-linked role has a new unique id: grants naming the old one are stale."""
        grantee = iam.get_role(role_name)
        if grantee is None:
            return []
        done = []
        for grant in self.registry.grants_naming(role_name):
            if not grant.claims or not grant.healable:
                continue
            spec = GrantSpec.from_dict(grant.desired)
            stale = grant.attrs.get("grant_id", "")
            outcome = converge_grant(spec, grantee)
            if stale and stale != outcome.grant_id:
                kms.revoke_grant(spec.key_arn, stale)
            # Recorded after the revoke: a retry then still knows the stale id (and CreateGrant's
            # Name idempotency returns the same new grant).
            self._record_grant(grant, outcome.grant_id, outcome.grantee_arn, outcome.grantee_role_id)
            done.append(f"grant re-issued on {spec.key_arn}")
        return done

    def _record_grant(self, grant: Record, grant_id: str, grantee_arn: str, grantee_role_id: str) -> None:
        self.registry.record(
            grant.key,
            "grant",
            grant.desired,
            created_now=True,
            attrs={
                **grant.attrs,
                "grant_id": grant_id,
                "grantee_arn": grantee_arn,
                "grantee_role_id": grantee_role_id,
            },
        )

    # --- grants ---------------------------------------------------------------------------------

    def heal_grant(
        self,
        grant_id: str,
        *,
        exists: bool | None = None,
        record: Record | None = None,
        observed_at: float | None = None,
    ) -> Result:
        record = record or self.registry.grant_by_id(grant_id)
        if (ignored := self._eligible(record, grant_id)) is not None:
            return ignored
        assert record is not None
        spec = GrantSpec.from_dict(record.desired)
        if exists is None or observed_at is None:
            observed_at = self.now()
            exists = kms.grant_exists(spec.key_arn, grant_id)
        if exists:
            return Result("healthy", grant_id)
        if self.reporting:
            return Result("reported", grant_id, "grant retired or revoked")
        grantee = iam.get_role(spec.grantee_role_name)
        if grantee is None:
            return Result(
                "ignored", grant_id, f"{spec.grantee_role_name} is missing; its heal re-issues the grant"
            )
        blocked = self._acquire(
            record,
            grant_id,
            "grant retired or revoked",
            lambda: not kms.grant_exists(spec.key_arn, grant_id),
            observed_at,
        )
        if blocked is not None:
            return blocked
        try:
            outcome = converge_grant(spec, grantee)
            self._record_grant(record, outcome.grant_id, outcome.grantee_arn, outcome.grantee_role_id)
        finally:
            self.registry.end_heal(record.key, healed_at=self.now())
        notify(
            self.settings.notification_topic_arn,
            "rolekeeper re-issued a KMS grant",
            f"{spec.key_arn}: grant {grant_id} replaced by {outcome.grant_id}",
        )
        return Result("healed", grant_id, "grant re-issued", [outcome.grant_id])

    # --- the scheduled reconcile ----------------------------------------------------------------

    def reconcile_all(self) -> list[Result]:
        """Every registered object checked against IAM and KMS listed in pages, not one call each."""
        observed_at = self.now()
        records = [r for r in self.registry.all() if r.claims and r.healable]
        roles: dict[str, dict[str, Any]] = {}
        if any(r.kind in ("slr", "role") for r in records):
            roles = {detail["RoleName"].lower(): detail for detail in iam.role_details()}
        grants_by_key: dict[str, set[str]] = {}
        results = []
        for record in records:
            try:
                if record.kind == "grant":
                    key_arn = record.attrs["key_arn"]
                    if key_arn not in grants_by_key:
                        grants_by_key[key_arn] = kms.grant_ids(key_arn)
                    grant_id = record.attrs["grant_id"]
                    results.append(
                        self.heal_grant(
                            grant_id,
                            exists=grant_id in grants_by_key[key_arn],
                            record=record,
                            observed_at=observed_at,
                        )
                    )
                else:
                    name = record.attrs.get("name") or record.key.split("#", 1)[1]
                    found = roles.get(name.lower())
                    actual = Actual.from_details(found) if found else Actual(role=None)
                    results.append(
                        self.heal_role(name, actual=actual, record=record, observed_at=observed_at)
                    )
            except Exception as error:  # one object's failure must not stop the others
                logger.exception("reconcile failed for object", key=record.key)
                results.append(Result("failed", record.key, f"{type(error).__name__}: {error}"))
        return results
