"""The bench's output: one markdown table, notes under it."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

HEADER = ("Measure", "rolekeeper", "Baseline / minimum", "Ratio / excess", "Target", "Result")


@dataclass
class Table:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said once, under the table
    calls: list[str] = field(default_factory=list)  # each measured operation's calls, in order

    def add(self, *cells: str) -> None:
        assert len(cells) == len(HEADER), cells
        self.rows.append(tuple(cells))

    def render(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Handlers print Powertools logs and EMF metrics to stdout; keep them out of the table."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
