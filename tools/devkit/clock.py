"""Time that moves only when waited on, for handlers run under test."""

from __future__ import annotations

import time
from typing import Any


class FakeClock:
    """Every wait rolekeeper makes is recorded (slept), none is slept: the time moves on by it
    (on_sleep: what a test does meanwhile, such as another writer finishing its work)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []
        self.on_sleep: Any = None

    def now(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def clock(self) -> Any:
        """This time as the rolekeeper.retry.Clock the handlers are built with."""
        from rolekeeper.retry import Clock

        return Clock(now=self.now, sleep=self.sleep)


# The clock of the test running now (tests/conftest.py's autouse fake_clock fixture makes a new
# one per test); handlers.rebuild_handlers() builds the handlers on it unless given another.
CLOCK = [FakeClock()]
