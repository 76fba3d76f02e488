"""Registry items <-> records, in one place: boto3's TypeSerializer/TypeDeserializer do the
AttributeValue encoding; this module knows which attribute means what, and how 0.1.0 wrote them.

Format 2 (this version) stores each claim's wants as a map on the claim item (whose sort key names
its stack and logical id, so neither is repeated) and no `desired` on the object item: the
object's desired state is derived from its claims. Format 1 (0.1.0) items are read as they are:
`desired` (a JSON string) becomes Record.legacy_desired, claims' `wants` may be JSON strings or
missing, and `pieces_tracked` says an emptied `added` set was kept. The next write of an object
upgrades it (objects.py): claims get their wants, `desired` goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from rolekeeper.domain.records import CLAIM, Claim, Kind, Lease, Pending, Record, State, claim_owner

OBJECT = "OBJECT"
REQUEST = "REQUEST"
# The scheduled reconcile's cursor: one item of its own (pk RECONCILE, sk CURSOR), neither an
# object nor a claim, skipped by every reader of objects.
RECONCILE = "RECONCILE"
CURSOR = "CURSOR"
FORMAT = 2

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()

# Object attributes with a meaning of their own; every other string attribute is one of the
# object's attrs (name, arn, role_id, created_role_id; key_arn, grant_id, grantee_*, ...).
OBJECT_FIELDS = frozenset(
    {
        "pk",
        "sk",
        "format",
        "kind",
        "desired",
        "created",
        "added",
        "pieces_tracked",
        "version",
        "state",
        "deleting_by",
        "deleting_since",
        "deletion_task_id",
        "claim_count",
        "heal_count",
        "heal_window",
        "heal_lease",
        "heal_lease_by",
        "healed_at",
        "updated_at",
    }
)


def encode(value: Any) -> dict[str, Any]:
    """One Python value as a DynamoDB AttributeValue (tuples become lists, floats Decimals)."""
    return dict(_SERIALIZER.serialize(_storable(value)))


def encode_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: encode(value) for name, value in values.items()}


def decode_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _plain(_DESERIALIZER.deserialize(value)) for name, value in item.items()}


def key_of(pk: str, sk: str) -> dict[str, Any]:
    return encode_item({"pk": pk, "sk": sk})


def object_key(pk: str) -> dict[str, Any]:
    return key_of(pk, OBJECT)


def claim_values(claim: Claim) -> dict[str, Any]:
    """A claim item's attributes besides its key (format 2)."""
    values: dict[str, Any] = {"heal": claim.heal, "on_delete": claim.on_delete}
    if claim.wants is not None:
        values["wants"] = claim.wants
    if claim.pending is not None:
        pending: dict[str, Any] = {
            "request_id": claim.pending.request_id,
            "release": claim.pending.release,
            "heal": claim.pending.heal,
            "on_delete": claim.pending.on_delete,
            "new": claim.pending.new,
            "created": claim.pending.created,
        }
        if claim.pending.wants is not None:
            pending["wants"] = claim.pending.wants
        values["pending"] = pending
    return values


def claim_item(pk: str, claim: Claim) -> dict[str, Any]:
    return encode_item({"pk": pk, "sk": claim.sk, **claim_values(claim)})


def claim_of(values: Mapping[str, Any]) -> Claim:
    stack_id, logical_id = claim_owner(str(values["sk"]))
    wants = values.get("wants")
    if isinstance(wants, str):  # format 1: a JSON string
        wants = json.loads(wants) if wants else None
    pending = values.get("pending")
    return Claim(
        stack_id=str(values.get("stack_id") or stack_id),
        logical_id=str(values.get("logical_id") or logical_id),
        heal=bool(values.get("heal", True)),
        on_delete=str(values.get("on_delete", "Retain")),
        wants=dict(wants) if isinstance(wants, Mapping) else None,
        pending=Pending(
            request_id=str(pending.get("request_id", "")),
            release=bool(pending.get("release", False)),
            heal=bool(pending.get("heal", True)),
            on_delete=str(pending.get("on_delete", "Retain")),
            wants=dict(pending["wants"]) if isinstance(pending.get("wants"), Mapping) else None,
            new=bool(pending.get("new", False)),
            created=bool(pending.get("created", False)),
        )
        if isinstance(pending, Mapping)
        else None,
    )


def record_of(values: Mapping[str, Any], claims: Iterable[Claim] = ()) -> Record:
    added = values.get("added")
    desired = values.get("desired")
    return Record(
        key=str(values["pk"]),
        kind=Kind(values.get("kind") or "role"),
        created=bool(values.get("created", False)),
        attrs={k: v for k, v in values.items() if k not in OBJECT_FIELDS and isinstance(v, str)},
        claims=list(claims),
        # Format 2 drops an emptied set; format 1 said so with pieces_tracked (absent: never kept).
        added=set(added)
        if added is not None
        else (set() if "pieces_tracked" in values or int(values.get("format", 1)) >= FORMAT else None),
        version=int(values.get("version", 0)),
        state=State(values.get("state", "")),
        deleting_by=str(values.get("deleting_by", "")),
        deletion_task_id=str(values.get("deletion_task_id", "")),
        deleting_since=int(values.get("deleting_since", 0)),
        claim_count=int(values.get("claim_count", 0)),
        healed_at=float(values.get("healed_at", 0)),
        heal_count=int(values.get("heal_count", 0)),
        heal_window=int(values.get("heal_window", 0)),
        lease=Lease(str(values.get("heal_lease_by", "")), float(values.get("heal_lease", 0))),
        legacy_desired=json.loads(desired) if isinstance(desired, str) and desired else None,
        format=int(values.get("format", 1)),
    )


def group(items: Iterable[Mapping[str, Any]]) -> list[Record]:
    """Object and claim items (raw, as DynamoDB returns them) into records; claims without their
    object item are left out (a claim is written only with its object)."""
    objects: dict[str, dict[str, Any]] = {}
    claims: dict[str, list[Claim]] = {}
    for raw in items:
        values = decode_item(raw)
        pk, sk = str(values["pk"]), str(values["sk"])
        if sk == OBJECT:
            objects[pk] = values
        elif sk.startswith(CLAIM):
            claims.setdefault(pk, []).append(claim_of(values))
    return [record_of(values, claims.get(pk, [])) for pk, values in objects.items()]


def grouped(items: Iterable[Mapping[str, Any]]) -> Iterator[Record]:
    """group(), one key at a time, for items in Scan order: DynamoDB keeps one key's items (its
    item collection) together, in sort key order, so a key's claims and object item arrive one
    after the other and only one key's items are held at a time. (Were a key's items ever split,
    a record would lack some claims: its check sees less wanted, and a heal reads the record
    again, whole, before it repairs anything.)"""
    key: str | None = None
    batch: list[Mapping[str, Any]] = []
    for raw in items:
        pk = str(raw["pk"]["S"])
        if pk != key:
            yield from group(batch)
            key, batch = pk, []
        batch.append(raw)
    yield from group(batch)


@dataclass(frozen=True)
class Cursor:
    """Where the scheduled reconcile stopped: the key of the last object it checked, and the
    cycle so far (its first run's start, the runs that stopped early, the objects checked)."""

    after: str
    started_at: float
    runs: int
    checked: int


def cursor_key() -> dict[str, Any]:
    return key_of(RECONCILE, CURSOR)


def cursor_values(cursor: Cursor) -> dict[str, Any]:
    return {
        "after_key": cursor.after,
        "started_at": round(cursor.started_at, 3),
        "runs": cursor.runs,
        "checked": cursor.checked,
    }


def cursor_of(values: Mapping[str, Any]) -> Cursor:
    return Cursor(
        after=str(values.get("after_key", "")),
        started_at=float(values.get("started_at", 0)),
        runs=int(values.get("runs", 0)),
        checked=int(values.get("checked", 0)),
    )


def _storable(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, tuple | list):
        return [_storable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return {_storable(v) for v in value}
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return {_plain(v) for v in value}
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value
