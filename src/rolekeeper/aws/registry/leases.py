"""Heal leases: a short hold on an object so concurrent invocations heal it once and a stack's
Update, release or Delete waits for the heal rather than race it; a per-object count in a sliding
hour so a fight with someone who keeps deleting it stops.

A heal takes the lease (and counts itself) in one conditional write, then reads the object and
plans from the record as of its lease; its final write is the object's fenced write with the
lease token (objects.Fence.lease), which gives the lease back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rolekeeper.aws.registry.items import decode_item, object_key
from rolekeeper.aws.registry.table import Refused, Table, Write
from rolekeeper.domain.records import State

# How long a heal holds an object (a heal takes seconds; a holder that died frees it after this).
HEAL_LEASE_SECONDS = 120
# An object a heal may touch: registered (an item with its kind: never a skeleton), claimed, and
# not being deleted by a stack's last Delete.
LIVE = (
    "attribute_exists(kind) AND claim_count > :zero AND (attribute_not_exists(#state) OR #state <> :deleting)"
)
LEASE_FREE = "(attribute_not_exists(heal_lease) OR heal_lease < :now)"


class LeaseState(StrEnum):
    TAKEN = "taken"
    HELD = "held"  # another invocation heals it
    LIMITED = "limited"  # the hour's heals are used up
    GONE = "gone"  # no longer registered
    UNCLAIMED = "unclaimed"  # no stack claims it any more
    DELETING = "deleting"  # a stack's Delete is removing it


@dataclass(frozen=True)
class Lease:
    state: LeaseState
    last_healed: float = 0.0  # when the last heal ended before this one (0: never), for TAKEN

    @property
    def taken(self) -> bool:
        return self.state == LeaseState.TAKEN


class Leases:
    def __init__(self, table: Table) -> None:
        self.table = table

    def take(
        self, key: str, *, token: str, now: float, seconds: int, limit: int, window: int = 3600
    ) -> Lease:
        """Take the object's heal lease and count the heal, in one conditional write: only while
        the object is live, the lease is free and the hour's count is below limit. A second write
        only when the limit is reached and the hour has passed (a new window)."""
        values: dict[str, Any] = {
            ":zero": 0,
            ":deleting": str(State.DELETING),
            ":now": int(now),
            ":until": int(now) + seconds,
            ":token": token,
            ":one": 1,
        }
        attempts = [
            (
                "SET heal_lease = :until, heal_lease_by = :token, heal_window = if_not_exists(heal_window, :now) "
                "ADD heal_count :one",
                "attribute_not_exists(heal_count) OR heal_count < :limit",
                {":limit": limit},
            ),
            (
                "SET heal_lease = :until, heal_lease_by = :token, heal_window = :now, heal_count = :one",
                "heal_window < :expired",
                {":expired": int(now) - window},
            ),
        ]
        lease = Lease(LeaseState.LIMITED)
        for update, count_condition, extra in attempts:
            try:
                old = self.table.write(
                    Write(
                        key=object_key(key),
                        update=update,
                        condition=f"{LIVE} AND {LEASE_FREE} AND ({count_condition})",
                        names={"#state": "state"},
                        values={**values, **extra},
                    ),
                    returns="ALL_OLD",
                )
            except Refused as refused:
                lease = Lease(why_not(decode_item(refused.old) if refused.old else None, now=now))
                if lease.state != LeaseState.LIMITED:  # only a full hour's count is worth a second try
                    return lease
                continue
            return Lease(LeaseState.TAKEN, float(decode_item(old).get("healed_at", 0)) if old else 0.0)
        return lease

    def give_back(
        self, key: str, *, token: str, healed_at: float | None = None, uncount: bool = False
    ) -> None:
        """End the lease without a final write (uncount: the heal counted by take did not happen).
        Only this invocation's lease; an item that is gone stays gone."""
        sets, values = [], {":token": token}
        update = "REMOVE heal_lease, heal_lease_by"
        if healed_at is not None:
            sets.append("healed_at = :t")
            values[":t"] = round(healed_at, 3)  # type: ignore[assignment]
        if sets:
            update = "SET " + ", ".join(sets) + " " + update
        if uncount:
            update += " ADD heal_count :minus"
            values[":minus"] = -1  # type: ignore[assignment]
        with contextlib.suppress(Refused):  # not this invocation's lease any more
            self.table.write(
                Write(key=object_key(key), update=update, condition="heal_lease_by = :token", values=values)
            )


def why_not(item: dict[str, Any] | None, *, now: float | None) -> LeaseState:
    """Why a conditional heal write failed, from the item as it was (ALL_OLD)."""
    if not item or "kind" not in item:
        return LeaseState.GONE
    if item.get("state") == State.DELETING:
        return LeaseState.DELETING
    if float(item.get("claim_count", 0)) <= 0:
        return LeaseState.UNCLAIMED
    if now is not None and float(item.get("heal_lease", 0)) >= int(now):
        return LeaseState.HELD
    return LeaseState.LIMITED
