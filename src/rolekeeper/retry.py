"""The one retry helper: how long to wait between attempts, on a clock that is passed in.

Every loop in rolekeeper that waits (another writer's conflict, IAM's eventual consistency, a
service-linked role's deletion task, a heal lease held by another invocation) is a `Patience`
walked with `Clock.pause`; the clock is the process's own in Lambda and a fake one in tests, so no
test patches a module's `sleep`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Clock:
    """Wall time and waiting. `deadline` (a wall time, 0: none) bounds every wait: a wait that
    would pass it is cut short, so a request still answers before Lambda stops it."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    deadline: float = 0.0

    def pause(self, seconds: float) -> None:
        if self.deadline:
            seconds = min(seconds, max(self.deadline - self.now(), 0.0))
        if seconds > 0:
            self.sleep(seconds)

    def left(self) -> float:
        """Seconds until the deadline (infinite without one)."""
        return self.deadline - self.now() if self.deadline else float("inf")

    def until(self, deadline: float) -> Clock:
        """The same clock, bounded by deadline (the earlier of the two)."""
        bound = min(deadline, self.deadline) if self.deadline else deadline
        return Clock(self.now, self.sleep, bound)


@dataclass(frozen=True)
class Patience:
    """At most `attempts` tries; before try n+1 a wait of `first * factor**n` seconds, at most
    `cap`, with equal jitter (half fixed, half random) when `jitter` is set, so two writers that
    met once do not meet again."""

    attempts: int
    first: float
    factor: float = 2.0
    cap: float = 15.0
    jitter: bool = False
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        wait = min(self.cap, self.first * self.factor**attempt)
        return wait * (0.5 + self.rng() / 2) if self.jitter else wait

    def tries(self, clock: Clock) -> Iterator[int]:
        """Yields 0, 1, ... attempts-1, waiting between them; stops early once the clock's
        deadline has passed (the caller then reports what it could not finish)."""
        for attempt in range(self.attempts):
            if attempt:
                if clock.left() <= 0:
                    return
                clock.pause(self.delay(attempt - 1))
            yield attempt

    @property
    def total(self) -> float:
        """The longest the waits can add up to (without jitter's random half)."""
        return sum(min(self.cap, self.first * self.factor**n) for n in range(self.attempts - 1))


# The waits rolekeeper uses, in one place.
# Another writer's DynamoDB transaction held an item (TransactionConflict): nothing was applied.
CONFLICT = Patience(attempts=8, first=0.1, cap=2.0, jitter=True)
# A fenced write found the object changed (another writer committed first): read and plan again.
FENCE = Patience(attempts=6, first=0.2, factor=1.5, cap=2.0, jitter=True)
# IAM is eventually consistent: a role just created may not be returned by GetRole for seconds.
IAM_VISIBLE = Patience(attempts=8, first=0.5, factor=1.5, cap=3.0)
# Another request's deletion of the object (about 15 s in all).
DELETION_ELSEWHERE = Patience(attempts=6, first=0.5, cap=8.0)
# A heal under way holds the object's lease (heals take seconds; about 30 s in all).
HEAL_UNDER_WAY = Patience(attempts=6, first=1.0, cap=15.0)
# A service-linked role's deletion task, which IAM finishes asynchronously (about 60 s in all).
SLR_DELETION = Patience(attempts=8, first=1.0, cap=15.0)
