"""The registry table: its schema, and the three ways rolekeeper writes to it (a transaction, one
conditional update, one conditional delete), each surviving another writer's conflict and a lost
answer. Reads are consistent where a decision depends on them (Query on a key, Scan); the two
indexes are for finding candidates only (they are eventually consistent).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rolekeeper.aws import clients
from rolekeeper.aws.registry.items import encode_item
from rolekeeper.retry import CONFLICT, Clock

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


@dataclass(frozen=True)
class Write:
    """One item's part of a write: an Update (expression), a Put (item) or a Delete, with its
    condition. Names and values are Python values; items.encode does the rest."""

    key: Mapping[str, Any]  # already encoded (items.key_of)
    update: str = ""
    put: Mapping[str, Any] | None = None  # already encoded (a whole item)
    delete: bool = False
    condition: str = ""
    names: Mapping[str, str] | None = None
    values: Mapping[str, Any] | None = None

    def params(self, table: str) -> dict[str, Any]:
        params: dict[str, Any] = {"TableName": table}
        if self.put is not None:
            params["Item"] = dict(self.put)
        else:
            params["Key"] = dict(self.key)
        if self.update:
            params["UpdateExpression"] = self.update
        if self.condition:
            params["ConditionExpression"] = self.condition
        if self.names:
            params["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            params["ExpressionAttributeValues"] = encode_item(self.values)
        return params

    @property
    def action(self) -> str:
        return "Put" if self.put is not None else ("Delete" if self.delete else "Update")


class Refused(Exception):
    """A conditional write whose condition did not hold. `codes`: each item's cancellation code
    for a transaction ("None" for the items that were fine); `old`: the item as it was, for a
    single write (ReturnValuesOnConditionCheckFailure)."""

    def __init__(self, codes: list[str], old: Mapping[str, Any] | None = None) -> None:
        super().__init__(", ".join(codes))
        self.codes = codes
        self.old = dict(old or {})

    def failed(self, index: int) -> bool:
        return len(self.codes) > index and self.codes[index] == "ConditionalCheckFailed"


class Table:
    def __init__(self, name: str, *, clock: Clock, client: Callable[[], Any] = clients.dynamodb) -> None:
        self.name = name
        self.clock = clock
        self._client = client

    # --- writes -------------------------------------------------------------------------------

    def transact(self, writes: list[Write]) -> None:
        """All or nothing; raises Refused with each item's code when a condition did not hold.

        A ClientRequestToken makes botocore's retry of an attempt whose answer was lost succeed
        without applying it twice (DynamoDB keeps the token for 10 minutes). A cancellation for
        TransactionConflict (another transaction held an item) applied nothing: tried again,
        bounded, with a new token."""
        from botocore.exceptions import ClientError

        items = [{write.action: write.params(self.name)} for write in writes]
        codes: list[str] = []
        for _ in CONFLICT.tries(self.clock):
            try:
                self._client().transact_write_items(TransactItems=items, ClientRequestToken=uuid.uuid4().hex)
                return
            except ClientError as error:
                if clients.error_code(error) != "TransactionCanceledException":
                    raise
                reasons = getattr(error, "response", {}).get("CancellationReasons", [])
                codes = [str(r.get("Code") or "None") for r in reasons]
                if "TransactionConflict" not in codes or "ConditionalCheckFailed" in codes:
                    raise Refused(codes) from None
        raise Refused(codes)

    def write(self, write: Write, *, returns: str = "NONE") -> dict[str, Any]:
        """One conditional UpdateItem or DeleteItem; raises Refused (with the item as it was) when
        its condition did not hold. TransactionConflictException (the item is inside another
        writer's transaction) is tried again, bounded. Returns the Attributes asked for."""
        from botocore.exceptions import ClientError

        params = write.params(self.name)
        if write.condition:
            params["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if returns != "NONE":
            params["ReturnValues"] = returns
        call = self._client().delete_item if write.delete else self._client().update_item
        error: ClientError | None = None
        for _ in CONFLICT.tries(self.clock):
            try:
                return dict(call(**params).get("Attributes", {}))
            except ClientError as caught:
                code = clients.error_code(caught)
                if code == "ConditionalCheckFailedException":
                    raise Refused(
                        ["ConditionalCheckFailed"], getattr(caught, "response", {}).get("Item")
                    ) from None
                if code != "TransactionConflictException":
                    raise
                error = caught
        assert error is not None
        raise error

    # --- reads --------------------------------------------------------------------------------

    def partition(self, pk: str) -> list[dict[str, Any]]:
        """Every item under one key, read consistently in one query (paged)."""
        return list(
            self._pages(
                "query",
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues=encode_item({":pk": pk}),
                ConsistentRead=True,
            )
        )

    def scan(self, *, after: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item, read consistently in Scan pages (up to 1 MB each, read as they are needed),
        from the start or from just after the item keyed `after` (encoded, items.key_of). That
        item need not exist any more: DynamoDB takes a key the caller made as ExclusiveStartKey
        and starts after where it would be (the Alternator maintainers, who test against
        DynamoDB: https://github.com/scylladb/scylladb/issues/26988)."""
        params: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        if after is not None:
            params["ExclusiveStartKey"] = dict(after)
        while True:
            page = self._client().scan(**params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def index(self, index: str, attribute: str, value: str) -> list[str]:
        """Keys of the items an index lists under value (eventually consistent: candidates)."""
        return [
            str(item["pk"]["S"])
            for item in self._pages(
                "query",
                IndexName=index,
                KeyConditionExpression="#a = :v",
                ExpressionAttributeNames={"#a": attribute},
                ExpressionAttributeValues=encode_item({":v": value}),
            )
        ]

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._client().get_paginator(operation)
        for page in paginator.paginate(TableName=self.name, **kwargs):
            yield from page.get("Items", [])
