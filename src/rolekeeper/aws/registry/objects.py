"""Objects and their claims: read consistently, written only through `write` (one fenced
transition) and the deletion lifecycle (present -> deleting, one writer -> absent).

A fence says what must still hold for a write to land: the version the writer planned from (or
only "present and not being deleted", for a writer that only adds to a record this version
wrote), the writer's own heal lease or no one else's, the object still claimed. When it moved, the write raises FenceMoved and the
writer reads again and plans again (rolekeeper.transition).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rolekeeper.aws.registry.items import (
    FORMAT,
    OBJECT,
    RECONCILE,
    REQUEST,
    claim_item,
    claim_of,
    decode_item,
    group,
    grouped,
    key_of,
    object_key,
    record_of,
)
from rolekeeper.aws.registry.table import BY_GRANT_ID, BY_GRANTEE, Refused, Table, Write
from rolekeeper.domain import ownership
from rolekeeper.domain.errors import HealInProgress, ObjectGone
from rolekeeper.domain.records import CLAIM, Claim, Kind, Lease, Record, State, claim_sk

# A transaction holds at most 100 items; an upgrade of a 0.1.0 record rewrites its claims in the
# write's own transaction only while they fit (else the record keeps 0.1.0's form a while longer).
TRANSACTION_ITEMS = 100


class FenceMoved(Exception):
    """The object changed since it was read (or its lease is not the writer's, or it is being
    deleted, or the request was answered elsewhere): nothing was written."""

    def __init__(self, key: str, codes: Sequence[str], *, answered: bool = False) -> None:
        super().__init__(f"{key} changed while this request worked on it ({', '.join(codes)})")
        self.answered = answered


@dataclass(frozen=True)
class Fence:
    read: Record | None  # the record the plan was made from (None: there was no item)
    exact: bool = True  # False: present and not being deleted is enough (a writer that only adds)
    lease: str = ""  # the writer's own heal lease token, which must still be held
    lease_free: bool = False  # no one else's heal lease may be held (a writer that takes away)
    claimed: bool = False  # the object must still be claimed (a heal)


@dataclass(frozen=True)
class Change:
    kind: Kind
    attrs: Mapping[str, str] = field(default_factory=dict)
    created: bool = False  # rolekeeper created it (never set back to false)
    added: frozenset[str] = frozenset()  # pieces rolekeeper added (a set union: safe for any writer)
    pieces: frozenset[str] | None = None  # the whole set of added pieces (needs an exact fence)
    claim: Claim | None = None  # this claim, new or replaced
    release: Claim | None = None  # this claim goes
    # With release: the object taken for deletion by this token in the same write, on condition
    # that rolekeeper created it and the released claim was its last (present -> deleting).
    take_for_deletion: str = ""
    healed_at: float | None = None
    end_lease: bool = False  # the writer's lease goes with the write


class Objects:
    def __init__(self, table: Table) -> None:
        self.table = table

    # --- reads ----------------------------------------------------------------------------------

    def read(self, key: str) -> Record | None:
        """The object and its claims, read consistently in one query."""
        records = group(self.table.partition(key))
        return records[0] if records else None

    def all(self) -> Iterator[Record]:
        """Every object with its claims: the table scanned in pages (request markers and the
        reconcile's cursor skipped)."""
        return iter(group(item for item in self.table.scan() if _object_or_claim(item)))

    def sweep(self, after: str | None = None) -> Iterator[Record]:
        """Every object with its claims, one at a time in Scan order, its pages read as they are
        needed: from the start, or after the object keyed `after` (where an earlier sweep stopped:
        that key's claims sort before its object item, so none of its items is read again)."""
        start = object_key(after) if after else None
        return grouped(item for item in self.table.scan(after=start) if _object_or_claim(item))

    def grants_naming(self, role_name: str) -> list[Record]:
        """Grant records made for a role (found through an eventually consistent index, then each
        read consistently: a record written a moment ago may be missing from the list)."""
        return self._indexed(BY_GRANTEE, "grantee_role", role_name.lower())

    def grants_by_id(self, grant_id: str, *, besides: str = "") -> list[Record]:
        """Records naming this grant as their current one, besides the one keyed `besides`
        (index: candidates only, see above)."""
        found = self._indexed(BY_GRANT_ID, "grant_id", grant_id, besides=besides)
        return [r for r in found if r.attrs.get("grant_id") == grant_id]

    def _indexed(self, index: str, attribute: str, value: str, *, besides: str = "") -> list[Record]:
        keys = dict.fromkeys(k for k in self.table.index(index, attribute, value) if k != besides)
        return [r for r in (self.read(k) for k in keys) if r is not None]

    # --- the one fenced write -------------------------------------------------------------------

    def write(
        self, key: str, fence: Fence, change: Change, *, now: float, also: Sequence[Write] = ()
    ) -> Record | None:
        """Apply change (object attributes, added pieces, one claim put or released) in one
        transaction, only if fence still holds; `also` joins the same transaction (the request's
        answer). Raises FenceMoved when it does not (answered=True: an `also` item refused).
        Returns the record as the write left it (`as_written`), None when that is not known."""
        upgrade = _upgrade(fence, change, room=TRANSACTION_ITEMS - 1 - len(also))
        writes = [
            self._object_write(key, fence, change, now, upgrade),
            *self._claim_writes(key, fence, change, upgrade),
        ]
        writes += list(also)
        try:
            self.table.transact(writes)
        except Refused as refused:
            answered = any(refused.failed(i) for i in range(len(writes) - len(also), len(writes)))
            raise FenceMoved(key, refused.codes, answered=answered) from None
        return as_written(key, fence, change, now=now)

    def _object_write(
        self, key: str, fence: Fence, change: Change, now: float, upgrade: list[Claim] | None
    ) -> Write:
        read = fence.read
        names: dict[str, str] = {"#version": "version", "#kind": "kind"}
        values: dict[str, Any] = {":one": 1, ":kind": str(change.kind), ":now": int(now)}
        sets, removes = _format_parts(read, upgrade, names, values)
        sets += ["#kind = :kind", "updated_at = :now"]
        adds = ["#version :one"]  # never SET: a writer that did not check it must not move it back
        if change.created:
            sets.append("created = :true")
            values[":true"] = True
        else:
            sets.append("created = if_not_exists(created, :false)")
            values[":false"] = False
        for i, (name, value) in enumerate(sorted(change.attrs.items())):
            names[f"#a{i}"] = name
            values[f":a{i}"] = value
            sets.append(f"#a{i} = :a{i}")
        if change.healed_at is not None:
            sets.append("healed_at = :healed")
            values[":healed"] = round(change.healed_at, 3)
        if change.pieces is not None:
            # Taking pieces away writes the whole set: only an exact fence (the version read)
            # makes that safe against another writer's additions.
            assert fence.exact and read is not None, "taking pieces away needs the version read"
            names["#added"] = "added"
            if change.pieces:
                sets.append("#added = :pieces")
                values[":pieces"] = set(change.pieces)
            else:
                removes.append("#added")
        else:
            added = set(change.added)
            if read is not None and read.added is None and read.kind == Kind.ROLE:
                # Written by a version that did not track them: what counted as rolekeeper's
                # (ownership.added_of) is kept from now on.
                added |= ownership.added_of(read)
            if added:
                names["#added"] = "added"
                adds.append("#added :added")
                values[":added"] = added
        if change.claim is not None and (read is None or read.claim_of(change.claim.sk) is None):
            adds.append("claim_count :one")
        if change.release is not None:
            adds.append("claim_count :minus")
            values[":minus"] = -1
        if change.end_lease:
            removes += ["heal_lease", "heal_lease_by"]
        condition = self._fence_condition(fence, names, values)
        if change.take_for_deletion:
            assert change.release is not None and read is not None, "only a release takes for deletion"
            sets += ["#state = :deleting", "deleting_by = :by", "deleting_since = :now"]
            values.update({":by": change.take_for_deletion, ":last": 1, ":true": True})
            condition += " AND created = :true AND claim_count <= :last"
        expression = "SET " + ", ".join(sets) + " ADD " + ", ".join(adds)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        return Write(key=object_key(key), update=expression, condition=condition, names=names, values=values)

    @staticmethod
    def _fence_condition(fence: Fence, names: dict[str, str], values: dict[str, Any]) -> str:
        read = fence.read
        if read is None:
            return "attribute_not_exists(pk)"
        names["#state"] = "state"
        values[":deleting"] = str(State.DELETING)
        conditions = ["attribute_exists(#kind)", "(attribute_not_exists(#state) OR #state <> :deleting)"]
        # A write planned from a record as 0.1.0 left it also writes its upgrade (every claim as
        # read, the added pieces 0.1.0 counted): only onto that record, never over a newer write.
        if fence.exact or read.format < FORMAT or read.legacy_desired is not None:
            values[":version"] = read.version
            conditions.append("#version = :version" if read.version else "attribute_not_exists(#version)")
        if fence.lease:
            values[":token"] = fence.lease
            conditions.append("heal_lease_by = :token")
        elif fence.lease_free:
            conditions.append("(attribute_not_exists(heal_lease) OR heal_lease < :now)")
        if fence.claimed:
            values[":zero"] = 0
            conditions.append("claim_count > :zero")
        return " AND ".join(conditions)

    def _claim_writes(
        self, key: str, fence: Fence, change: Change, upgrade: list[Claim] | None
    ) -> list[Write]:
        read = fence.read
        writes = []
        if change.claim is not None:
            new = read is None or read.claim_of(change.claim.sk) is None
            writes.append(
                Write(
                    key=key_of(key, change.claim.sk),
                    put=claim_item(key, change.claim),
                    condition="attribute_not_exists(sk)" if new else "attribute_exists(sk)",
                )
            )
        if change.release is not None:
            writes.append(
                Write(key=key_of(key, change.release.sk), delete=True, condition="attribute_exists(sk)")
            )
        for claim in upgrade or ():
            writes.append(
                Write(key=key_of(key, claim.sk), put=claim_item(key, claim), condition="attribute_exists(sk)")
            )
        return writes

    # --- claims outside a converge --------------------------------------------------------------

    def release_orphan(self, key: str, claim: Claim) -> bool:
        """Remove a claim whose object item is gone (never normal: a claim is written with its
        object). False if there was none."""
        try:
            self.table.write(Write(key=key_of(key, claim.sk), delete=True, condition="attribute_exists(sk)"))
        except Refused:
            return False
        return True

    def restore(self, key: str, claim: Claim, *, now: float) -> None:
        """Put a released claim back (a Delete that failed part-way). Never makes an object item
        as a side effect; raises ObjectGone when the object is no longer registered (or is being
        deleted)."""
        read = self.read(key)
        if read is None or read.deleting:
            raise ObjectGone(f"{key} is no longer registered (or is being deleted)")
        try:
            self.write(key, Fence(read, exact=False), Change(kind=read.kind, claim=claim), now=now)
        except FenceMoved:
            read = self.read(key)
            if read is None or read.deleting:
                raise ObjectGone(f"{key} is no longer registered (or is being deleted)") from None
            self.write(key, Fence(read, exact=False), Change(kind=read.kind, claim=claim), now=now)

    # --- deletion: present -> deleting (one writer) -> absent -----------------------------------

    def begin_delete(
        self, key: str, token: str, *, now: float, absent_too: bool = False, lease: str = ""
    ) -> Record | None:
        """Take the object for deletion: only if rolekeeper created it, no claim holds it and no
        heal is under way. Returns the record (the caller then deletes the AWS object and calls
        finish_delete), or None when it must stay. Idempotent for one token (the same request, or
        an attempt whose answer was lost). absent_too: a rollback of an object this request
        created before any record existed takes a fresh item. Raises HealInProgress while the
        healer's lease is held (by another than lease: a heal taking back what it made holds it)."""
        names = {"#state": "state", "#by": "deleting_by", "#version": "version", "#kind": "kind"}
        values: dict[str, Any] = {
            ":deleting": str(State.DELETING),
            ":token": token,
            ":true": True,
            ":zero": 0,
            ":one": 1,
            ":now": int(now),
            ":kind": str(Kind.ROLE),
        }
        taken = (
            "created = :true AND (attribute_not_exists(claim_count) OR claim_count <= :zero)"
            " AND (attribute_not_exists(#state) OR #state <> :deleting OR #by = :token)"
            " AND (attribute_not_exists(heal_lease) OR heal_lease < :now OR heal_lease_by = :lease)"
        )
        values[":lease"] = lease or "-"
        expression = (
            "SET #state = :deleting, #by = :token, deleting_since = :now, created = :true, "
            "#kind = if_not_exists(#kind, :kind) ADD #version :one"
        )
        if absent_too:
            taken = f"attribute_not_exists(pk) OR ({taken})"
        try:
            result = self.table.write(
                Write(key=object_key(key), update=expression, condition=taken, names=names, values=values),
                returns="ALL_NEW",
            )
        except Refused as refused:
            old = decode_item(refused.old) if refused.old else {}
            unclaimed = int(old.get("claim_count", 0)) <= 0 and bool(old.get("created"))
            free = old.get("state") != State.DELETING
            if old and unclaimed and free and float(old.get("heal_lease", 0)) >= int(now):
                raise HealInProgress(f"{key} is being healed") from None
            return None
        return record_of(decode_item(result))

    def finish_delete(
        self, key: str, token: str, *, task_id: str | None = None, also: Sequence[Write] = ()
    ) -> None:
        """The AWS object is deleted (the item goes), or its deletion submitted (a service-linked
        role, whose item keeps the task id until the deletion is known to have finished)."""
        condition = {"condition": "#by = :token", "names": {"#by": "deleting_by"}}
        if task_id:
            write = Write(
                key=object_key(key),
                update="SET deletion_task_id = :task",
                values={":task": task_id, ":token": token},
                **condition,  # type: ignore[arg-type]
            )
        else:
            write = Write(key=object_key(key), delete=True, values={":token": token}, **condition)  # type: ignore[arg-type]
        try:
            if also:
                self.table.transact([write, *also])
            else:
                self.table.write(write)
        except Refused as refused:
            if also and any(refused.failed(i) for i in range(1, 1 + len(also))):
                raise FenceMoved(key, refused.codes, answered=True) from None
            # Finished already (an attempt whose answer was lost), or taken back by abort.

    def abort_delete(self, key: str, token: str) -> None:
        """The deletion did not happen (or a service-linked role's deletion task failed): the
        object is present again."""
        with contextlib.suppress(Refused):  # not this token's deletion (finished or taken back already)
            self.table.write(
                Write(
                    key=object_key(key),
                    update="REMOVE #state, #by, deletion_task_id ADD #version :one",
                    condition="#by = :token",
                    names={"#state": "state", "#by": "deleting_by", "#version": "version"},
                    values={":token": token, ":one": 1},
                )
            )

    def drop(self, record: Record) -> bool:
        """Remove an object item exactly as it was read (a finished deletion, a stale record)."""
        try:
            self.table.write(
                Write(
                    key=object_key(record.key),
                    delete=True,
                    condition="attribute_not_exists(#version) OR #version = :version",
                    names={"#version": "version"},
                    values={":version": record.version},
                )
            )
        except Refused:
            return False
        return True

    def claims_of(self, key: str) -> list[Claim]:
        return [
            claim_of(decode_item(i)) for i in self.table.partition(key) if str(i["sk"]["S"]).startswith(CLAIM)
        ]


def _object_or_claim(item: Mapping[str, Any]) -> bool:
    return str(item["sk"]["S"]) != REQUEST and str(item["pk"]["S"]) != RECONCILE


def _format_parts(
    read: Record | None, upgrade: list[Claim] | None, names: dict[str, str], values: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The SET and REMOVE parts of an object write that say which format the item is in after it."""
    if read is not None and read.legacy_desired is not None and upgrade is None:
        # A 0.1.0 record whose claims do not fit in this write's transaction stays as 0.1.0 keeps
        # it: its `desired` is what its claims without wants ask for.
        values[":tracked"] = True
        return ["pieces_tracked = :tracked"], []
    names["#format"] = "format"
    values[":format"] = FORMAT
    # An upgrade drops 0.1.0's copy of the spec (derived from the claims now).
    return ["#format = :format"], (["desired", "pieces_tracked"] if upgrade is not None else [])


def _upgrade(fence: Fence, change: Change, *, room: int) -> list[Claim] | None:
    """The claims of a record read as 0.1.0 left it, written again in format 2 by the write (their
    wants as a map; a claim that never stored its wants gets the object's `desired`), when they
    fit in its transaction (room: items left besides the object's). None: nothing to upgrade, or
    they do not fit (the record stays as it is)."""
    read = fence.read
    if read is None or read.legacy_desired is None:
        return None
    mentioned = {c.sk for c in (change.claim, change.release) if c is not None}
    claims = [
        Claim(
            c.stack_id, c.logical_id, c.heal, c.on_delete, read.legacy_desired if c.wants is None else c.wants
        )
        for c in read.claims
        if c.sk not in mentioned
    ]
    return claims if len(mentioned) + len(claims) <= room else None


def as_written(key: str, fence: Fence, change: Change, *, now: float) -> Record | None:
    """The record as a write of change under fence left it, as a consistent read would return it
    right after (a transaction returns no item), so the writer's next step (the request's second
    phase) needs no read. Its version is the one read plus one: exact when the fence was (else a
    guess, which an exact fence planned from it refuses; the planner then reads). None for a
    record 0.1.0 wrote (its upgrade is the write's own business)."""
    read = fence.read
    if read is not None and (read.format < FORMAT or read.legacy_desired is not None or read.deleting):
        return None
    base = read if read is not None else Record(key=key, kind=change.kind, added=set())
    gone = {c.sk for c in (change.claim, change.release) if c is not None}
    claims = [c for c in base.claims if c.sk not in gone]
    if change.claim is not None:
        claims.append(change.claim)
    count = base.claim_count
    if change.claim is not None and base.claim_of(change.claim.sk) is None:
        count += 1
    if change.release is not None:
        count -= 1
    added = set(change.pieces) if change.pieces is not None else set(base.added or ()) | set(change.added)
    if change.take_for_deletion:
        base = replace(
            base, state=State.DELETING, deleting_by=change.take_for_deletion, deleting_since=int(now)
        )
    return replace(
        base,
        kind=change.kind,
        version=base.version + 1,
        created=base.created or change.created,
        attrs={**base.attrs, **change.attrs},
        claims=sorted(claims, key=lambda c: c.sk),  # as a Query returns them: by sort key
        added=added,
        claim_count=count,
        healed_at=round(change.healed_at, 3) if change.healed_at is not None else base.healed_at,
        lease=Lease() if change.end_lease else base.lease,
        format=FORMAT,
    )


def claim_key(key: str, stack_id: str, logical_id: str) -> Mapping[str, Any]:
    return key_of(key, claim_sk(stack_id, logical_id))


__all__ = ["OBJECT", "Change", "Fence", "FenceMoved", "Objects", "as_written"]
