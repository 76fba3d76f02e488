"""The scheduled reconcile's cursor: where a run that ran out of time stopped, so the next run
resumes there and every object is checked within a bounded number of runs. One small item of its
own (items.RECONCILE), read consistently, written whole; no reader of objects sees it."""

from __future__ import annotations

from rolekeeper.aws.registry.items import RECONCILE, Cursor, cursor_key, cursor_of, cursor_values, decode_item
from rolekeeper.aws.registry.table import Table, Write


class Cursors:
    def __init__(self, table: Table) -> None:
        self.table = table

    def read(self) -> Cursor | None:
        items = self.table.partition(RECONCILE)
        return cursor_of(decode_item(items[0])) if items else None

    def save(self, cursor: Cursor, *, now: float) -> None:
        values = cursor_values(cursor)
        names = {f"#{name}": name for name in values}
        self.table.write(
            Write(
                key=cursor_key(),
                update="SET " + ", ".join(f"#{name} = :{name}" for name in values) + ", saved_at = :now",
                names=names,
                values={**{f":{name}": value for name, value in values.items()}, ":now": int(now)},
            )
        )

    def clear(self) -> None:
        """The cycle is complete: the next run starts from the first object."""
        self.table.write(Write(key=cursor_key(), delete=True))
