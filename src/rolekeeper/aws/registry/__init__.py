"""The registry (one DynamoDB table): objects and their claims, heal leases, request answers.
Item conversion lives in items.py; the table's writes in table.py; each store one concern."""

from __future__ import annotations

from rolekeeper.aws.registry.cursor import Cursors
from rolekeeper.aws.registry.items import OBJECT, Cursor
from rolekeeper.aws.registry.leases import Lease, Leases, LeaseState
from rolekeeper.aws.registry.objects import Change, Fence, FenceMoved, Objects
from rolekeeper.aws.registry.requests import Begun, Delivery, Requests
from rolekeeper.aws.registry.table import TABLE_SCHEMA, Table
from rolekeeper.retry import Clock


class Registry:
    def __init__(self, table_name: str, *, clock: Clock | None = None) -> None:
        self.table = Table(table_name, clock=clock or Clock())
        self.objects = Objects(self.table)
        self.leases = Leases(self.table)
        self.requests = Requests(self.table)
        self.cursor = Cursors(self.table)


__all__ = [
    "OBJECT",
    "TABLE_SCHEMA",
    "Begun",
    "Change",
    "Cursor",
    "Cursors",
    "Delivery",
    "Fence",
    "FenceMoved",
    "Lease",
    "LeaseState",
    "Leases",
    "Objects",
    "Registry",
    "Requests",
]
