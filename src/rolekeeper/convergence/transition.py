"""The one write path: every writer changes a registered object through `run`.

    read the record -> plan from it and apply to AWS -> write the registry, fenced
    (the version read, the writer's lease or no one else's) -> when the fence moved, read again
    and plan again (bounded, inside the deadline) -> when it keeps moving, or the request was
    answered elsewhere (the deadline's FAILED), undo what the attempts made.

What the attempts made accumulates in one `Made` across attempts: a policy an attempt attached
before it lost the race is already on the role, so the next attempt finds it there and would not
report it; `Made` still does, so the final write records it as rolekeeper's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aws_lambda_powertools import Logger

from rolekeeper.aws.registry import Change, Fence, FenceMoved, Objects
from rolekeeper.aws.registry.table import Write
from rolekeeper.convergence.outcomes import Made
from rolekeeper.domain.errors import AnsweredElsewhere, RolekeeperError
from rolekeeper.domain.records import Record
from rolekeeper.retry import FENCE, Clock, Patience

logger = Logger(child=True)

T = TypeVar("T")


@dataclass(frozen=True)
class Plan(Generic[T]):
    """One attempt's result: what to write under which fence, and what the writer answers.
    Without a change the transition is over: done (nothing to write), or, with abandon, given up
    (the object was let go meanwhile): what the attempts made is undone."""

    result: T
    fence: Fence | None = None
    change: Change | None = None
    abandon: bool = False


def reading(objects: Objects, key: str, first: Record | None = None) -> Callable[[], Record | None]:
    """The record for each attempt of `run`: first (as the caller just read it), if given, for the
    first attempt; a consistent read for every later one (the fence moved: the record did too)."""
    pending = [first] if first is not None else []
    return lambda: pending.pop() if pending else objects.read(key)


def run(
    objects: Objects,
    key: str,
    *,
    read: Callable[[], Record | None],
    attempt: Callable[[Record | None, Made], Plan[T]],
    undo: Callable[[Made], None],
    clock: Clock,
    also: Callable[[T], Sequence[Write]] = lambda _result: (),
    written: Callable[[T, Record | None], None] = lambda _result, _record: None,
    what: str,
    patience: Patience = FENCE,
) -> T:
    """Run one writer's transition on the object `key` (see the module's docstring). `also`: the
    items that join the final write (the request's answer); `written`: told the result and the
    record as that write left it (objects.as_written: the request's second phase plans from it
    without a read). Raises AnsweredElsewhere when the request was answered elsewhere meanwhile,
    RolekeeperError when the object kept changing; either way after undo(made)."""
    made = Made()
    try:
        for number in patience.tries(clock):
            plan = attempt(read(), made)
            if plan.change is None or plan.fence is None:
                if plan.abandon:
                    undo(made)
                return plan.result
            try:
                record = objects.write(key, plan.fence, plan.change, now=clock.now(), also=also(plan.result))
            except FenceMoved as moved:
                if moved.answered:
                    raise AnsweredElsewhere(f"{what}: the request was answered before this write") from None
                logger.info("object changed by another writer; reading it again", key=key, attempt=number + 1)
                continue
            written(plan.result, record)
            return plan.result
    except Exception:
        undo(made)
        raise
    undo(made)
    raise RolekeeperError(f"{what} kept changing under concurrent requests; retry the stack operation")
