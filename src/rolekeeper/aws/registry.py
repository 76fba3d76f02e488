"""The registry: desired state per object and one item per claim (stack id + logical id).

Claims are separate items, so concurrent stacks adding or releasing claims never overwrite each
other; object items are written with update expressions, never read-modify-write.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rolekeeper.aws import clients as aws
from rolekeeper.domain.errors import Changed, HealInProgress, ObjectGone
from rolekeeper.domain.records import CLAIM, DELETING, Claim, Record

OBJECT = "OBJECT"
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


# An object item's lifecycle: no item (absent), present (no `state`), or DELETING: a last Delete
# (or a rollback) took it, and only that writer (`deleting_by`) removes the AWS object and then
# the item. A service-linked role's item stays DELETING, with IAM's `deletion_task_id`, until the
# asynchronous deletion is known to have finished. Every write that changes what the object is or
# who claims it bumps `version`, and a writer that read version N writes only if it is still N.
# Cancelled by a conflicting transaction (nothing was applied): tried again, a bounded number of times.
TRANSACT_ATTEMPTS = 8
sleep: Callable[[float], None] = time.sleep


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _reasons(error: Exception) -> list[str] | None:
    """For a cancelled transaction, each item's cancellation code ("None" for an item that was
    fine); None for any other error."""
    if aws.error_code(error) != "TransactionCanceledException":
        return None
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    return [str(r.get("Code") or "None") for r in reasons]


def _backoff(attempt: int) -> None:
    sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))


def _number(item: dict[str, Any], name: str) -> int:
    return int(item.get(name, {}).get("N", "0"))


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
        "state",
        "deleting_by",
        "deletion_task_id",
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
        version=_number(item, "version"),
        state=item.get("state", {}).get("S", ""),
        deleting_by=item.get("deleting_by", {}).get("S", ""),
        deletion_task_id=item.get("deletion_task_id", {}).get("S", ""),
        deleting_since=_number(item, "deleting_since"),
        claim_count=_number(item, "claim_count"),
        healed_at=float(item.get("healed_at", {}).get("N", "0")),
    )


class Registry:
    def __init__(self, table_name: str) -> None:
        self.table = table_name

    # Requests: Lambda may deliver an asynchronous event more than once (and retries it after a
    # function error); CloudFormation's RequestId tells a redelivery from a new request.
    def begin_request(
        self, request_id: str, *, now: float, until: float | None = None, invocation: str = ""
    ) -> bool:
        """Note the request; False when it was answered before (a redelivery) or another
        invocation is still working on it (until its deadline): either way, no second response.
        An invocation that died without answering holds it only until its own deadline."""
        until = now - 1 if until is None else until
        result = self._update(
            Key={"pk": _s(f"REQUEST#{request_id}"), "sk": _s(REQUEST)},
            UpdateExpression=(
                "SET started_at = if_not_exists(started_at, :now), expires_at = :ttl, busy_until = :until, "
                "busy_by = :me ADD attempts :one"
            ),
            # busy_by: this invocation's own earlier attempt, whose answer was lost, is not another.
            ConditionExpression=(
                "attribute_not_exists(answered_at) AND "
                "(attribute_not_exists(busy_until) OR busy_until < :now OR busy_by = :me)"
            ),
            ExpressionAttributeValues={
                ":now": {"N": str(int(now))},
                ":until": {"N": str(int(until))},
                ":me": _s(invocation or uuid.uuid4().hex),
                ":ttl": {"N": str(int(now) + REQUEST_TTL_SECONDS)},
                ":one": {"N": "1"},
            },
        )
        return result is not None

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

    # --- transactions and single writes that survive conflicts and lost answers -------------------

    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Apply the transaction; None when applied, else each item's cancellation code.

        A ClientRequestToken makes botocore's retry of an attempt whose answer was lost return
        success without applying it twice (DynamoDB keeps the token for 10 minutes). A
        cancellation for TransactionConflict applied nothing: it is tried again, bounded, with a
        new token."""
        from botocore.exceptions import ClientError

        db = aws.dynamodb()
        codes: list[str] = []
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                db.transact_write_items(
                    TransactItems=items,  # type: ignore[arg-type]
                    ClientRequestToken=uuid.uuid4().hex,
                )
                return None
            except ClientError as error:
                found = _reasons(error)
                if found is None:
                    raise
                codes = found
                if "TransactionConflict" not in codes or "ConditionalCheckFailed" in codes:
                    return codes
                _backoff(attempt)
        return codes

    def _update(self, **kwargs: Any) -> dict[str, Any] | None:
        """UpdateItem (or DeleteItem with delete=True); None when its condition failed, with the
        item as it was in self.last_refused. TransactionConflictException (the item is inside
        another writer's transaction) is tried again, bounded."""
        from botocore.exceptions import ClientError

        db = aws.dynamodb()
        delete = kwargs.pop("delete", False)
        if "ConditionExpression" in kwargs:
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        self.last_refused: dict[str, Any] = {}
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                call = db.delete_item if delete else db.update_item
                return dict(call(TableName=self.table, **kwargs))
            except ClientError as error:
                code = aws.error_code(error)
                if code == "ConditionalCheckFailedException":
                    self.last_refused = getattr(error, "response", {}).get("Item", {})
                    return None
                if code != "TransactionConflictException" or attempt + 1 == TRANSACT_ATTEMPTS:
                    raise
                _backoff(attempt)
        return None  # not reached

    # --- claims: written together with the object, at the version that was read -----------------

    def commit(
        self,
        key: str,
        kind: str,
        desired: dict[str, Any],
        *,
        read: Record | None,
        created_now: bool,
        attrs: dict[str, str],
        added: set[str] | frozenset[str] = frozenset(),
        claim: Claim | None = None,
        check_version: bool = True,
    ) -> bool:
        """Write the object's desired state and (optionally) one claim in one transaction, only if
        the object is still as `read` found it (None: no item; check_version=False: only still
        there and not being deleted, for a writer that adds and never takes away). A new claim adds to claim_count
        in the same transaction, so concurrent stacks never lose a claim. Raises Changed when the
        object changed meanwhile (or is being deleted): the caller reads it again and retries.
        Returns whether rolekeeper created the object (now or before)."""
        names: dict[str, str] = {
            "#kind": "kind",
            "#desired": "desired",
            "#created": "created",
            "#updated": "updated_at",
            "#tracked": "pieces_tracked",
            "#version": "version",
        }
        values: dict[str, Any] = {
            ":kind": _s(kind),
            ":desired": _s(json.dumps(desired, sort_keys=True)),
            ":created": {"BOOL": created_now},
            ":updated": _s(str(int(time.time()))),
            # pieces_tracked: the added set is kept for this object (DynamoDB drops an emptied
            # set, which must not read as a record written before rolekeeper kept one).
            ":tracked": {"BOOL": True},
            ":inc": {"N": "1"},
        }
        sets = [
            "#kind = :kind",
            "#desired = :desired",
            "#updated = :updated",
            "#tracked = :tracked",
            # Once created, always created: a writer that did not create it never says otherwise.
            "#created = :created" if created_now else "#created = if_not_exists(#created, :created)",
        ]
        for i, (name, value) in enumerate(sorted(attrs.items())):
            names[f"#a{i}"] = name
            values[f":a{i}"] = _s(value)
            sets.append(f"#a{i} = :a{i}")
        adds = ["#version :inc"]  # never SET: a writer that did not check it must not move it back
        if added:
            names["#added"] = "added"
            values[":added"] = {"SS": sorted(added)}
            adds.append("#added :added")
        new_claim = claim is not None and (read is None or read.claim_of(claim.sk) is None)
        if new_claim:
            names["#count"] = "claim_count"
            values[":one"] = {"N": "1"}
            adds.append("#count :one")
        expression = "SET " + ", ".join(sets) + (" ADD " + ", ".join(adds) if adds else "")
        if read is None:
            condition = "attribute_not_exists(pk)"
        else:
            names["#state"] = "state"
            values[":version"] = {"N": str(read.version)}
            values[":deleting"] = _s(DELETING)
            condition = "attribute_exists(pk) AND (attribute_not_exists(#state) OR #state <> :deleting)"
            if check_version:
                condition += " AND " + (
                    "#version = :version" if read.version else "attribute_not_exists(#version)"
                )
            else:
                del values[":version"]
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": {"pk": _s(key), "sk": _s(OBJECT)},
                    "UpdateExpression": expression,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        if claim is not None:
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": _claim_item(key, claim),
                        "ConditionExpression": "attribute_not_exists(sk)"
                        if new_claim
                        else "attribute_exists(sk)",
                    }
                }
            )
        codes = self._transact(items)
        if codes is not None:
            raise Changed(f"{key} changed while this request worked on it ({', '.join(codes)})")
        return created_now or bool(read and read.created)

    def claim(self, key: str, claim: Claim) -> None:
        """Put a released claim back (a Delete that failed part-way, or an abandoned Update). Never
        makes an object item as a side effect: a claim restored after its object was forgotten
        (or while it is being deleted) must not leave a skeleton behind."""
        item = _claim_item(key, claim)
        update = {
            "TableName": self.table,
            "Key": {"pk": _s(key), "sk": _s(OBJECT)},
            "UpdateExpression": "ADD claim_count :one, #version :one",
            "ConditionExpression": "attribute_exists(kind) AND (attribute_not_exists(#state) OR #state <> :deleting)",
            "ExpressionAttributeNames": {"#version": "version", "#state": "state"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":deleting": _s(DELETING)},
        }
        codes = self._transact(
            [
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(sk)",
                    }
                },
                {"Update": update},
            ]
        )
        if codes is None:
            return
        if codes[1:2] == ["ConditionalCheckFailed"]:
            raise ObjectGone(f"{key} is no longer registered (or is being deleted)")
        if codes[:1] != ["ConditionalCheckFailed"]:
            raise Changed(f"{key}: claim not restored ({', '.join(codes)})")
        # Claimed already: refresh what the claim stores, only while the claim is there.
        self._transact(
            [{"Put": {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_exists(sk)"}}]
        )

    def release(self, key: str, stack_id: str, logical_id: str) -> bool:
        """Remove one claim; False if this resource held none (already released: by an earlier
        attempt of the same request whose answer was lost, or never claimed)."""
        claim_key = {"pk": _s(key), "sk": _s(Claim(stack_id, logical_id).sk)}
        codes = self._transact(
            [
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
                        "UpdateExpression": "ADD claim_count :minus, #version :one",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeNames": {"#version": "version"},
                        "ExpressionAttributeValues": {":minus": {"N": "-1"}, ":one": {"N": "1"}},
                    }
                },
            ]
        )
        if codes is None:
            return True
        if codes[:1] == ["ConditionalCheckFailed"]:
            return False
        if codes[1:2] == ["ConditionalCheckFailed"]:  # a claim left without its object
            self._update(Key=claim_key, delete=True)
            return True
        raise Changed(f"{key}: claim not released ({', '.join(codes)})")

    # --- deletion: present -> deleting (one writer) -> absent ------------------------------------

    def begin_delete(self, key: str, token: str, *, now: float, absent_too: bool = False) -> Record | None:
        """Take the object for deletion: only if rolekeeper created it, no claim holds it and no
        heal is under way. Returns the record (the caller then deletes the AWS object and calls
        finish_delete), or None when it must stay. Idempotent for one token (the same request,
        or an attempt whose answer was lost). absent_too: a rollback of a role this request
        created before any record existed takes a fresh item. Raises HealInProgress while the
        healer's lease is held."""
        names = {"#state": "state", "#by": "deleting_by", "#version": "version", "#lease": "heal_lease"}
        values: dict[str, Any] = {
            ":deleting": _s(DELETING),
            ":token": _s(token),
            ":true": {"BOOL": True},
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":now": {"N": str(int(now))},
        }
        taken = (
            "created = :true AND (attribute_not_exists(claim_count) OR claim_count <= :zero)"
            " AND (attribute_not_exists(#state) OR #state <> :deleting OR #by = :token)"
            " AND (attribute_not_exists(#lease) OR #lease < :now)"
        )
        values[":since"] = {"N": str(int(now))}
        expression = "SET #state = :deleting, #by = :token, deleting_since = :since ADD #version :one"
        if absent_too:
            names["#kind"] = "kind"
            values[":kind"] = _s("role")
            expression = (
                "SET #state = :deleting, #by = :token, deleting_since = :since, created = :true, "
                "#kind = if_not_exists(#kind, :kind) ADD #version :one"
            )
            taken = f"attribute_not_exists(pk) OR ({taken})"
        result = self._update(
            Key={"pk": _s(key), "sk": _s(OBJECT)},
            UpdateExpression=expression,
            ConditionExpression=taken,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        if result is not None:
            return _record(result["Attributes"])
        old = self.last_refused
        lease = _number(old, "heal_lease")
        unclaimed = _number(old, "claim_count") <= 0 and old.get("created", {}).get("BOOL", False)
        free = old.get("state", {}).get("S") != DELETING
        if old and unclaimed and free and lease >= int(now):
            raise HealInProgress(f"{key} is being healed")
        return None

    def finish_delete(self, key: str, token: str, *, task_id: str | None = None) -> None:
        """The AWS object is deleted (a role), or its deletion submitted (a service-linked role,
        whose item keeps the task id until the deletion is known to have finished)."""
        key_ = {"pk": _s(key), "sk": _s(OBJECT)}
        names = {"#by": "deleting_by"}
        if task_id:
            self._update(
                Key=key_,
                UpdateExpression="SET deletion_task_id = :task",
                ConditionExpression="#by = :token",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":task": _s(task_id), ":token": _s(token)},
            )
            return
        self._update(
            Key=key_,
            delete=True,
            ConditionExpression="#by = :token",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":token": _s(token)},
        )

    def abort_delete(self, key: str, token: str) -> None:
        """The deletion did not happen (or a service-linked role's deletion task failed): the object
        is present again."""
        self._update(
            Key={"pk": _s(key), "sk": _s(OBJECT)},
            UpdateExpression="REMOVE #state, #by, deletion_task_id ADD #version :one",
            ConditionExpression="#by = :token",
            ExpressionAttributeNames={"#state": "state", "#by": "deleting_by", "#version": "version"},
            ExpressionAttributeValues={":token": _s(token), ":one": {"N": "1"}},
        )

    def drop(self, record: Record) -> bool:
        """Remove an object item exactly as it was read (a finished deletion, a grant released)."""
        return (
            self._update(
                Key={"pk": _s(record.key), "sk": _s(OBJECT)},
                delete=True,
                ConditionExpression="attribute_not_exists(#version) OR #version = :version",
                ExpressionAttributeNames={"#version": "version"},
                ExpressionAttributeValues={":version": {"N": str(record.version)}},
            )
            is not None
        )

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
        self._update(Key={"pk": _s(key), "sk": _s(OBJECT)}, delete=True)

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
