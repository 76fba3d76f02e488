"""The registry: desired state per object and one item per claim (stack id + logical id).

Claims are separate items, so concurrent stacks adding or releasing claims never overwrite each
other; object items are written with update expressions, never read-modify-write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rolekeeper import aws

OBJECT = "OBJECT"
CLAIM = "CLAIM#"
REQUEST = "REQUEST"
# A request marker outlives any redelivery: Lambda keeps retrying an async event for at most 6 hours.
REQUEST_TTL_SECONDS = 7 * 24 * 3600
BY_GRANTEE = "ByGrantee"
BY_GRANT_ID = "ByGrantId"


# The table as template.yaml declares it (tests/unit/test_template.py keeps the two in step).
TABLE_SCHEMA: dict[str, Any] = {
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
        {"AttributeName": "grantee_role", "AttributeType": "S"},
        {"AttributeName": "grant_id", "AttributeType": "S"},
    ],
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": BY_GRANTEE,
            "KeySchema": [{"AttributeName": "grantee_role", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
        {
            "IndexName": BY_GRANT_ID,
            "KeySchema": [{"AttributeName": "grant_id", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
    ],
    "BillingMode": "PAY_PER_REQUEST",
}


class ObjectGone(Exception):
    """The object a claim would hold is not (or no longer) registered."""


def role_key(role_name: str) -> str:
    # IAM role names are unique case-insensitively within an account.
    return f"ROLE#{role_name.lower()}"


def grant_key(physical_id: str) -> str:
    return f"GRANT#{physical_id}"


@dataclass(frozen=True)
class Claim:
    stack_id: str
    logical_id: str
    heal: bool = True
    on_delete: str = "Retain"
    # What this claim asked for (a spec's to_dict()); None for claims written before claims
    # stored their wants. Compared by key only.
    wants: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def sk(self) -> str:
        return f"{CLAIM}{self.stack_id}#{self.logical_id}"


@dataclass
class Record:
    key: str
    kind: str
    desired: dict[str, Any]
    created: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    # Pieces rolekeeper added to the object (ownership.py); None when never recorded.
    added: set[str] | None = None
    # When its last heal ended (0: never), as read: a heal that ends later changes it.
    healed_at: float = 0.0

    @property
    def healable(self) -> bool:
        return any(c.heal for c in self.claims)


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _cancelled_by(error: Exception) -> list[bool] | None:
    """For a cancelled transaction, which of its items failed their condition; None otherwise."""
    if aws.error_code(error) != "TransactionCanceledException":
        return None
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    return [r.get("Code") == "ConditionalCheckFailed" for r in reasons] or None


def _claim(item: dict[str, Any]) -> Claim:
    wants = item.get("wants", {}).get("S")
    return Claim(
        stack_id=item["stack_id"]["S"],
        logical_id=item["logical_id"]["S"],
        heal=item.get("heal", {}).get("BOOL", True),
        on_delete=item.get("on_delete", {}).get("S", "Retain"),
        wants=json.loads(wants) if wants else None,
    )


def _claim_item(key: str, claim: Claim) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": _s(key),
        "sk": _s(claim.sk),
        "stack_id": _s(claim.stack_id),
        "logical_id": _s(claim.logical_id),
        "heal": {"BOOL": claim.heal},
        "on_delete": _s(claim.on_delete),
    }
    if claim.wants is not None:
        item["wants"] = _s(json.dumps(claim.wants, sort_keys=True))
    return item


def _record(item: dict[str, Any]) -> Record:
    reserved = {
        "pk",
        "sk",
        "kind",
        "desired",
        "created",
        "heal_count",
        "heal_window",
        "heal_lease",
        "heal_lease_by",
        "healed_at",
        "updated_at",
        "added",
        "pieces_tracked",
    }
    added = item.get("added")
    return Record(
        key=item["pk"]["S"],
        kind=item.get("kind", {}).get("S", ""),
        desired=json.loads(item.get("desired", {}).get("S", "{}")),
        created=item.get("created", {}).get("BOOL", False),
        attrs={k: v["S"] for k, v in item.items() if k not in reserved and "S" in v},
        added=set(added.get("SS", []))
        if added is not None
        else (set() if "pieces_tracked" in item else None),
        healed_at=float(item.get("healed_at", {}).get("N", "0")),
    )


class Registry:
    def __init__(self, table_name: str) -> None:
        self.table = table_name

    def record(
        self,
        key: str,
        kind: str,
        desired: dict[str, Any],
        *,
        created_now: bool,
        attrs: dict[str, str],
        added: set[str] | frozenset[str] = frozenset(),
    ) -> bool:
        """Write the desired state and add pieces to the object's added set (a DynamoDB string set:
        concurrent writers' additions never overwrite each other). Returns whether rolekeeper
        created the object (now or before)."""
        names = {"#kind": "kind", "#desired": "desired", "#created": "created", "#updated": "updated_at"}
        values: dict[str, Any] = {
            ":kind": _s(kind),
            ":desired": _s(json.dumps(desired, sort_keys=True)),
            ":created": {"BOOL": created_now},
            ":updated": _s(str(int(time.time()))),
        }
        # pieces_tracked: the added set is kept for this object (DynamoDB drops an emptied set,
        # which must not read as a record written before rolekeeper kept one).
        names["#tracked"] = "pieces_tracked"
        values[":tracked"] = {"BOOL": True}
        sets = ["#kind = :kind", "#desired = :desired", "#updated = :updated", "#tracked = :tracked"]
        sets.append("#created = :created" if created_now else "#created = if_not_exists(#created, :created)")
        for i, (name, value) in enumerate(sorted(attrs.items())):
            names[f"#a{i}"] = name
            values[f":a{i}"] = _s(value)
            sets.append(f"#a{i} = :a{i}")
        expression = "SET " + ", ".join(sets)
        if added:
            names["#added"] = "added"
            values[":added"] = {"SS": sorted(added)}
            expression += " ADD #added :added"
        result = aws.dynamodb().update_item(
            TableName=self.table,
            Key={"pk": _s(key), "sk": _s(OBJECT)},
            UpdateExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return bool(result["Attributes"]["created"]["BOOL"])

    # Requests: Lambda may deliver an asynchronous event more than once (and retries it after a
    # function error); CloudFormation's RequestId tells a redelivery from a new request.
    def begin_request(self, request_id: str, *, now: float) -> bool:
        """Note the request; False when it was answered before (a redelivery)."""
        result = aws.dynamodb().update_item(
            TableName=self.table,
            Key={"pk": _s(f"REQUEST#{request_id}"), "sk": _s(REQUEST)},
            UpdateExpression="SET started_at = if_not_exists(started_at, :now), expires_at = :ttl ADD attempts :one",
            ExpressionAttributeValues={
                ":now": {"N": str(int(now))},
                ":ttl": {"N": str(int(now) + REQUEST_TTL_SECONDS)},
                ":one": {"N": "1"},
            },
            ReturnValues="ALL_OLD",
        )
        return "answered_at" not in result.get("Attributes", {})

    def answered(self, request_id: str, status: str, *, now: float) -> None:
        aws.dynamodb().update_item(
            TableName=self.table,
            Key={"pk": _s(f"REQUEST#{request_id}"), "sk": _s(REQUEST)},
            UpdateExpression="SET answered_at = :now, #status = :status",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":now": {"N": str(int(now))}, ":status": _s(status)},
        )

    def taken_away(self, key: str, pieces: set[str]) -> None:
        """Pieces rolekeeper removed again: no longer in the object's added set."""
        from botocore.exceptions import ClientError

        if not pieces:
            return
        try:
            aws.dynamodb().update_item(
                TableName=self.table,
                Key={"pk": _s(key), "sk": _s(OBJECT)},
                UpdateExpression="DELETE #added :gone",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#added": "added"},
                ExpressionAttributeValues={":gone": {"SS": sorted(pieces)}},
            )
        except ClientError as error:  # the object is gone, and its added set with it
            if aws.error_code(error) != "ConditionalCheckFailedException":
                raise

    # Claims and the object's claim_count change together in one transaction, so concurrent stacks
    # never lose a claim and exactly one Delete sees the count reach zero.
    def claim(self, key: str, claim: Claim) -> None:
        from botocore.exceptions import ClientError

        item = _claim_item(key, claim)
        db = aws.dynamodb()
        try:
            db.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(sk)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"pk": _s(key), "sk": _s(OBJECT)},
                            "UpdateExpression": "ADD claim_count :one",
                            # Never make an object item as a side effect: a claim restored after
                            # its object was forgotten must not leave a skeleton behind.
                            "ConditionExpression": "attribute_exists(kind)",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                ]
            )
        except ClientError as error:
            failed = _cancelled_by(error)
            if failed is not None and failed[1:] == [True]:
                raise ObjectGone(f"{key} is no longer registered") from None
            if failed != [True, False]:
                raise
            db.put_item(TableName=self.table, Item=item)  # claimed already: refresh Heal/OnDelete only

    def release(self, key: str, stack_id: str, logical_id: str) -> bool:
        """Remove one claim; False if this resource held none."""
        from botocore.exceptions import ClientError

        claim_key = {"pk": _s(key), "sk": _s(Claim(stack_id, logical_id).sk)}
        db = aws.dynamodb()
        try:
            db.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self.table,
                            "Key": claim_key,
                            "ConditionExpression": "attribute_exists(sk)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"pk": _s(key), "sk": _s(OBJECT)},
                            "UpdateExpression": "ADD claim_count :minus",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": {":minus": {"N": "-1"}},
                        }
                    },
                ]
            )
        except ClientError as error:
            failed = _cancelled_by(error)
            if failed is None:
                raise
            if failed[0]:
                return False
            db.delete_item(TableName=self.table, Key=claim_key)  # a claim left without its object
        return True

    def forget_if_unclaimed(self, key: str) -> Record | None:
        """Remove the object if rolekeeper created it and no claim remains; returns it if removed.
        Conditional, so of concurrent last Deletes exactly one gets it (and deletes the AWS object)."""
        from botocore.exceptions import ClientError

        try:
            result = aws.dynamodb().delete_item(
                TableName=self.table,
                Key={"pk": _s(key), "sk": _s(OBJECT)},
                ConditionExpression="created = :true AND (attribute_not_exists(claim_count) OR claim_count <= :zero)",
                ExpressionAttributeValues={":true": {"BOOL": True}, ":zero": {"N": "0"}},
                ReturnValues="ALL_OLD",
            )
        except ClientError as error:
            if aws.error_code(error) == "ConditionalCheckFailedException":
                return None
            raise
        old = result.get("Attributes")
        return _record(old) if old else None

    def get(self, key: str) -> Record | None:
        """The object and its claims, read consistently in one query."""
        items = list(
            self._pages(
                "query",
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(key)},
                ConsistentRead=True,
            )
        )
        records = self._group(items)
        return records[0] if records else None

    def forget(self, key: str) -> None:
        aws.dynamodb().delete_item(TableName=self.table, Key={"pk": _s(key), "sk": _s(OBJECT)})

    def all(self) -> list[Record]:
        """Every object with its claims: the table scanned in pages, not one call per object."""
        return self._group(self._pages("scan", ConsistentRead=True))

    def grants_naming(self, role_name: str) -> list[Record]:
        return self._by_index(BY_GRANTEE, "grantee_role", role_name.lower())

    def grant_by_id(self, grant_id: str) -> Record | None:
        found = self.grants_by_id(grant_id)
        return found[0] if found else None

    def grants_by_id(self, grant_id: str) -> list[Record]:
        """Every record that names this grant as its current one."""
        return self._by_index(BY_GRANT_ID, "grant_id", grant_id)

    def _by_index(self, index: str, attribute: str, value: str) -> list[Record]:
        keys = [
            item["pk"]["S"]
            for item in self._pages(
                "query",
                IndexName=index,
                KeyConditionExpression="#a = :v",
                ExpressionAttributeNames={"#a": attribute},
                ExpressionAttributeValues={":v": _s(value)},
            )
        ]
        return [r for r in (self.get(k) for k in dict.fromkeys(keys)) if r is not None]

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = aws.dynamodb().get_paginator(operation)  # type: ignore[call-overload]
        for page in paginator.paginate(TableName=self.table, **kwargs):
            yield from page.get("Items", [])

    @staticmethod
    def _group(items: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[Record]:
        objects: dict[str, Record] = {}
        claims: dict[str, list[Claim]] = {}
        for item in items:
            key, sk = item["pk"]["S"], item["sk"]["S"]
            if sk == OBJECT:
                objects[key] = _record(item)
            elif sk.startswith(CLAIM):
                claims.setdefault(key, []).append(_claim(item))
        for key, record in objects.items():
            record.claims = claims.get(key, [])
        return list(objects.values())

    # Healing bookkeeping: a short lease so concurrent invocations heal an object once, a
    # per-object count in a sliding hour so a fight with someone deleting it stops, and a final
    # write that lands only while the object is still registered, claimed, not being deleted and
    # the lease still this invocation's (a stack's last Delete never has its record written back).
    def begin_heal(
        self, key: str, *, token: str, now: float, lease_seconds: int, limit: int, window: int = 3600
    ) -> Lease:
        """Take the object's heal lease (heal_lease_by = token) and count the heal, in one
        conditional write: only while the object is registered, claimed and not being deleted,
        the lease is free and the hour's count is below limit. A second write only when the
        limit is reached and the hour has passed (a new window)."""
        db = aws.dynamodb()
        until = {"N": str(int(now) + lease_seconds)}
        values: dict[str, Any] = {
            **_LIVE_VALUES,
            ":now": {"N": str(int(now))},
            ":until": until,
            ":token": _s(token),
            ":one": {"N": "1"},
        }
        attempts = [
            (
                "SET heal_lease = :until, heal_lease_by = :token, heal_window = if_not_exists(heal_window, :now) "
                "ADD heal_count :one",
                "attribute_not_exists(heal_count) OR heal_count < :limit",
                {":limit": {"N": str(limit)}},
            ),
            (
                "SET heal_lease = :until, heal_lease_by = :token, heal_window = :now, heal_count = :one",
                "heal_window < :expired",
                {":expired": {"N": str(int(now) - window)}},
            ),
        ]
        lease = Lease("limited")
        for update, count_condition, extra in attempts:
            try:
                result = db.update_item(
                    TableName=self.table,
                    Key={"pk": _s(key), "sk": _s(OBJECT)},
                    UpdateExpression=update,
                    ConditionExpression=f"{_LIVE} AND {_LEASE_FREE} AND ({count_condition})",
                    ExpressionAttributeNames=_LIVE_NAMES,
                    ExpressionAttributeValues={**values, **extra},
                    ReturnValues="ALL_OLD",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except Exception as error:
                if aws.error_code(error) != "ConditionalCheckFailedException":
                    raise
                lease = Lease(_why_not(getattr(error, "response", {}).get("Item"), now=now))
                # Only a full hour's count with its window passed is worth the second write.
                if lease.state != "limited":
                    return lease
                continue
            old = result.get("Attributes", {})
            return Lease("taken", float(old.get("healed_at", {}).get("N", "0")))
        return lease

    def end_heal(
        self, key: str, *, token: str, healed_at: float | None = None, uncount: bool = False
    ) -> None:
        """Give the lease back without recording a heal (uncount: the heal counted by begin_heal
        did not happen). Only this invocation's lease; an item that is gone stays gone."""
        update = "REMOVE heal_lease, heal_lease_by"
        values: dict[str, Any] = {":token": _s(token)}
        sets = []
        if healed_at is not None:
            sets.append("healed_at = :t")
            values[":t"] = {"N": f"{healed_at:.3f}"}
        if sets:
            update = "SET " + ", ".join(sets) + " " + update
        if uncount:
            update += " ADD heal_count :minus"
            values[":minus"] = {"N": "-1"}
        try:
            aws.dynamodb().update_item(
                TableName=self.table,
                Key={"pk": _s(key), "sk": _s(OBJECT)},
                UpdateExpression=update,
                ConditionExpression="heal_lease_by = :token",
                ExpressionAttributeValues=values,
            )
        except Exception as error:
            if aws.error_code(error) != "ConditionalCheckFailedException":
                raise

    def record_heal(
        self,
        key: str,
        *,
        attrs: dict[str, str],
        created_now: bool,
        added: set[str] | frozenset[str] = frozenset(),
        token: str | None = None,
        healed_at: float | None = None,
        expected: dict[str, str] | None = None,
        now: float | None = None,
    ) -> str:
        """A heal's one write: what it made (attrs, created, added pieces) and, with token, the
        end of its lease; never desired (a concurrent Update's) and never a new item. Conditional
        on the object being registered, claimed and not being deleted, on holding the lease
        (token) and on expected attributes still as read. Returns "recorded", or why not: "gone",
        "unclaimed", "deleting", "lost" (the lease is someone else's) or "changed"."""
        names = dict(_LIVE_NAMES)
        values: dict[str, Any] = dict(_LIVE_VALUES)
        sets = ["pieces_tracked = :tracked"]
        values[":tracked"] = {"BOOL": True}
        if created_now:
            sets.append("created = :created")
            values[":created"] = {"BOOL": True}
        for i, (name, value) in enumerate(sorted(attrs.items())):
            names[f"#a{i}"] = name
            values[f":a{i}"] = _s(value)
            sets.append(f"#a{i} = :a{i}")
        if healed_at is not None:
            sets.append("healed_at = :t")
            values[":t"] = {"N": f"{healed_at:.3f}"}
        expression = "SET " + ", ".join(sets)
        conditions = [_LIVE]
        if token is not None:
            expression += " REMOVE heal_lease, heal_lease_by"
            conditions.append("heal_lease_by = :token")
            values[":token"] = _s(token)
        for i, (name, value) in enumerate(sorted((expected or {}).items())):
            names[f"#e{i}"] = name
            values[f":e{i}"] = _s(value)
            conditions.append(f"#e{i} = :e{i}")
        if added:
            names["#added"] = "added"
            values[":added"] = {"SS": sorted(added)}
            expression += " ADD #added :added"
        try:
            aws.dynamodb().update_item(
                TableName=self.table,
                Key={"pk": _s(key), "sk": _s(OBJECT)},
                UpdateExpression=expression,
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as error:
            if aws.error_code(error) != "ConditionalCheckFailedException":
                raise
            old = getattr(error, "response", {}).get("Item")
            why = _why_not(old, now=None)
            if why != "limited":
                return why
            return (
                "lost"
                if token is not None and old and old.get("heal_lease_by", {}).get("S") != token
                else "changed"
            )
        return "recorded"


# An object a heal may touch: registered (an item with its kind: never a skeleton), claimed, and
# not being deleted by a stack's last Delete (state "deleting"; absent means present).
_LIVE = (
    "attribute_exists(kind) AND claim_count > :zero AND (attribute_not_exists(#state) OR #state <> :deleting)"
)
_LIVE_NAMES = {"#state": "state"}
_LIVE_VALUES: dict[str, Any] = {":zero": {"N": "0"}, ":deleting": {"S": "deleting"}}
_LEASE_FREE = "(attribute_not_exists(heal_lease) OR heal_lease < :now)"


@dataclass(frozen=True)
class Lease:
    """Whether begin_heal took the lease ("taken") and, if not, why: "held" (another invocation
    heals it), "limited" (the hour's heals are used up), "gone", "unclaimed", "deleting"."""

    state: str
    last_healed: float = 0.0  # when the last heal ended (0: never), for "taken"

    @property
    def taken(self) -> bool:
        return self.state == "taken"


def _why_not(item: dict[str, Any] | None, *, now: float | None) -> str:
    """Why a conditional heal write failed, from the item as it was (ALL_OLD)."""
    if not item or "kind" not in item:
        return "gone"
    if item.get("state", {}).get("S") == "deleting":
        return "deleting"
    if float(item.get("claim_count", {}).get("N", "0")) <= 0:
        return "unclaimed"
    if now is not None and float(item.get("heal_lease", {}).get("N", "0")) >= int(now):
        return "held"
    return "limited"
