"""DynamoDB as AWS documents it, where moto differs:
- TransactWriteItems with a ClientRequestToken is idempotent (moto ignores the token).
  The API reference (TransactWriteItems, request parameter ClientRequestToken): "Providing a
  ClientRequestToken makes the call to TransactWriteItems idempotent, meaning that multiple
  identical calls have the same effect as one single call." "A client request token is valid for
  10 minutes after the first request that uses it is completed. After 10 minutes, any request
  with the same client token is treated as a new request." "If you submit a request with the
  same client token but a change in other parameters within the 10-minute idempotency window,
  DynamoDB returns an IdempotentParameterMismatch exception."
  (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html)
  botocore fills the token in itself (idempotencyToken in the model) when the caller does not,
  and its retries resend the same body: a retried transaction whose answer was lost is not
  applied twice in AWS.
- Global secondary indexes are eventually consistent: "All reads from GSIs and streams are
  eventually consistent" and an eventually consistent read "may not reflect the results of a
  recently completed write operation"
  (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.ReadConsistency.html);
  and there is no way round it: "Strongly consistent reads are not supported on global secondary
  indexes. If you query a global secondary index with ConsistentRead set to true, you will
  receive a ValidationException." (API_Query, ConsistentRead). moto already refuses
  ConsistentRead on a GSI; it answers every index read from the table as it is now, so a lag
  is modelled here (IndexLag, installed when a test passes one).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tools.devkit.environment import ACCOUNT, REGION


@dataclass
class RequestTokens:
    """DynamoDB's memory of TransactWriteItems client request tokens: token -> (the request's
    other parameters, when it completed). Only a transaction that succeeded is remembered (one
    that was cancelled changed nothing). now() is the clock the 10-minute window runs on."""

    window: float = 600.0
    now: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    repeats: int = 0  # requests answered from memory, not applied again


def install_request_tokens(monkeypatch: pytest.MonkeyPatch, tokens: RequestTokens) -> None:
    from moto.core.responses import ActionResult
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.transact_write_items

    def transact_write_items(self: Any) -> Any:
        token = self.body.get("ClientRequestToken")
        if not token:
            return original(self)
        parameters = json.dumps(
            {k: v for k, v in self.body.items() if k != "ClientRequestToken"}, sort_keys=True
        )
        known = tokens.seen.get(token)
        if known is not None and tokens.now() - known[1] < tokens.window:
            if known[0] != parameters:
                raise DynamodbException(
                    ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical request.",
                )
            tokens.repeats += 1
            return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
        result = original(self)
        tokens.seen[token] = (parameters, tokens.now())
        return result

    monkeypatch.setattr(DynamoHandler, "transact_write_items", transact_write_items)


@dataclass
class IndexLag:
    """Global secondary indexes that have not caught up. Between freeze(table) and thaw(table), a
    Query or Scan on one of the table's GSIs answers from the table as it stood at freeze(): writes
    made since (new items, changed or removed index keys) are not yet propagated to the index.
    Reads of the table itself stay current (a ConsistentRead sees every completed write)."""

    frozen: dict[str, Any] = field(default_factory=dict)  # table name -> the table as it stood
    stale_reads: int = 0  # index reads answered from a frozen view

    def freeze(self, table_name: str, account: str = ACCOUNT, region: str = REGION) -> None:
        from moto.backends import get_backend

        backend = get_backend("dynamodb")[account][region]  # type: ignore[index]
        self.frozen[table_name] = copy.deepcopy(backend.get_table(table_name))

    def thaw(self, table_name: str | None = None) -> None:
        if table_name is None:
            self.frozen.clear()
        else:
            self.frozen.pop(table_name, None)

    def view(self, table: Any, index_name: str | None) -> Any:
        """The table an index read of `table` is answered from."""
        stale = self.frozen.get(table.name)
        if stale is None or not index_name or index_name not in {i.name for i in table.global_indexes}:
            return table
        self.stale_reads += 1
        return stale


def install_index_lag(monkeypatch: pytest.MonkeyPatch, lag: IndexLag | None) -> None:
    if lag is None:  # indexes as moto keeps them: always up to date
        return
    from moto.dynamodb.models.table import Table

    original_query, original_scan = Table.query, Table.scan

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[7] if len(args) > 7 else None)
        return original_query(lag.view(self, index_name), *args, **kwargs)

    def scan(self: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[4] if len(args) > 4 else None)
        return original_scan(lag.view(self, index_name), *args, **kwargs)

    monkeypatch.setattr(Table, "query", query)
    monkeypatch.setattr(Table, "scan", scan)
