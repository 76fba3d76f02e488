"""Staging one interleaving exactly: Lambda invocations, each in a thread of its own (its own
execution environment), with another invocation's whole run, a deadline or the end of the
environment placed at a chosen AWS call.

The explorer (tests/interleave.py) runs every schedule up to a bound; the issue cases need one
schedule each, named by what happens where ("the Delete lands after the heal's CreateGrant"), and
must keep naming the same moment whatever the code between the calls becomes. So steps are tied to
AWS calls (an operation, optionally a predicate on its parameters, the n-th such call of one
invocation), before the call is made or after its answer came back, never to rolekeeper's own
functions.

- Stage: runs invocations one at a time (the test's thread waits for each), labels their threads,
  and runs staged steps inside the labelled invocation's AWS call while it waits there. A step
  usually runs another invocation to its end (Stage.run from inside the step: a second
  environment), which is exactly "the other writer's request lands between these two calls".
  Every call a labelled invocation makes is logged in order (Stage.calls), with whether it
  succeeded, so a test can check an order (what was created after what was released).
- Killed: raised in an invocation at a chosen call: the environment is frozen or ended by Lambda
  and never resumes (a BaseException, which rolekeeper does not catch).
- Deadline: every threading.Timer made while it is installed is held until the test fires it, so
  "the deadline passes here" is a chosen moment rather than a race against the clock (rolekeeper's
  deadline timer is a threading.Timer).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

HOOKED = ("iam", "kms", "dynamodb")
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})


class Killed(BaseException):
    """The invocation's environment is gone (Lambda froze or ended it); the thread never resumes."""


class Stuck(AssertionError):
    pass


@dataclass
class Call:
    """One AWS call of a labelled invocation, as the hooks saw it."""

    label: str
    service: str
    operation: str
    params: dict[str, Any]
    ok: bool | None = None  # None until its answer came back


@dataclass
class Step:
    label: str
    operation: str
    action: Callable[[Call], None]
    after: bool
    nth: int
    where: Callable[[Call], bool] | None
    seen: int = 0
    done: bool = False


@dataclass
class Outcome:
    """How an invocation ended: its result, or the exception it raised (Killed included)."""

    label: str
    result: Any = None
    error: BaseException | None = None

    @property
    def killed(self) -> bool:
        return isinstance(self.error, Killed)


@dataclass
class Stage:
    calls: list[Call] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    join_timeout: float = 120.0
    _labels: dict[int, str] = field(default_factory=dict)
    _pending: dict[int, list[Call]] = field(default_factory=dict)
    _busy: set[int] = field(default_factory=set)  # threads inside a step: their calls pass through
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Stage:
        """Hook every IAM, KMS and DynamoDB client rolekeeper.aws makes from now on."""
        from rolekeeper.aws import clients as aws

        make = aws.client.__wrapped__

        @cache
        def client(service: str, *args: Any) -> Any:
            made = make(service, *args)
            service_id = made.meta.service_model.service_id.hyphenize()
            if service_id in HOOKED:
                made.meta.events.register(f"before-parameter-build.{service_id}", self._before)
                made.meta.events.register(f"after-call.{service_id}", self._after)
                made.meta.events.register(f"after-call-error.{service_id}", self._after_error)
            return made

        monkeypatch.setattr(aws, "client", client)
        return self

    # --- staging -----------------------------------------------------------------------------

    def at(
        self,
        label: str,
        operation: str,
        action: Callable[[Call], None],
        *,
        after: bool = False,
        nth: int = 1,
        where: Callable[[Call], bool] | None = None,
    ) -> Step:
        """Run action(call) once, in the invocation `label`, at its nth call of `operation` ("*":
        any) that `where` accepts: before the call is made, or after its answer came back."""
        step = Step(label, operation, action, after, nth, where)
        self.steps.append(step)
        return step

    def kill(self, label: str, operation: str = "*", **kwargs: Any) -> Step:
        """End the invocation at that call: nothing after it runs, in AWS or in rolekeeper."""

        def end(call: Call) -> None:
            raise Killed(f"{label}'s environment ended at {call.operation}")

        return self.at(label, operation, end, **kwargs)

    def run(self, label: str, body: Callable[[], Any], *, profile: Any = None) -> Outcome:
        """Run one invocation in a thread of its own labelled `label` and wait for it (bounded).
        profile: a sys.setprofile function for that thread."""
        outcome = Outcome(label)

        def main() -> None:
            with self._lock:
                self._labels[threading.get_ident()] = label
            if profile is not None:
                sys.setprofile(profile)
            try:
                outcome.result = body()
            except BaseException as error:  # reported to the test (Killed is the expected one)
                outcome.error = error
            finally:
                sys.setprofile(None)
                with self._lock:
                    self._labels.pop(threading.get_ident(), None)

        thread = threading.Thread(target=main, name=f"lambda-{label}", daemon=True)
        thread.start()
        thread.join(self.join_timeout)
        if thread.is_alive():
            raise Stuck(f"invocation {label} did not finish within {self.join_timeout:.0f} s")
        return outcome

    def made(self, label: str | None = None, operation: str | None = None) -> list[Call]:
        """The calls that succeeded, of one invocation and/or one operation."""
        return [
            c
            for c in self.calls
            if c.ok
            and (label is None or c.label == label)
            and (operation is None or c.operation == operation)
        ]

    # --- the hooks ---------------------------------------------------------------------------

    def _mine(self) -> str | None:
        ident = threading.get_ident()
        if ident in self._busy:
            return None
        return self._labels.get(ident)

    def _before(self, params: Any = None, event_name: str = "", **_kwargs: Any) -> None:
        label = self._mine()
        if label is None:
            return
        _, service, operation = event_name.split(".", 2)
        call = Call(label, service, operation, dict(params or {}))
        self._fire(call, after=False)
        # Logged as it is made: after what the steps before it ran (a Killed step: never made).
        with self._lock:
            self.calls.append(call)
            self._pending.setdefault(threading.get_ident(), []).append(call)

    def _finish(self, event_name: str, ok: bool) -> None:
        label = self._mine()
        if label is None:
            return
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            pending = self._pending.get(threading.get_ident(), [])
            call = next((c for c in reversed(pending) if c.operation == operation), None)
            if call is None:
                return
            pending.remove(call)
        call.ok = ok
        self._fire(call, after=True)

    def _after(self, http_response: Any = None, event_name: str = "", **_kwargs: Any) -> None:
        status = getattr(http_response, "status_code", 200)
        self._finish(event_name, status < 300)

    def _after_error(self, event_name: str = "", **_kwargs: Any) -> None:
        self._finish(event_name, False)

    def _fire(self, call: Call, *, after: bool) -> None:
        ident = threading.get_ident()
        self._busy.add(ident)  # what a step or a predicate calls is not itself staged or logged
        try:
            for step in list(self.steps):
                if step.done or step.after != after or step.label not in ("*", call.label):
                    continue
                if step.operation not in ("*", call.operation):
                    continue
                if step.where is not None and not step.where(call):
                    continue
                step.seen += 1
                if step.seen != step.nth:
                    continue
                step.done = True
                step.action(call)
        finally:
            self._busy.discard(ident)


# --- the deadline ---------------------------------------------------------------------------------


class HeldTimer(threading.Thread):
    """threading.Timer's interface; its function runs only when the test fires it (or never, once
    cancelled)."""

    def __init__(
        self,
        interval: float,
        function: Callable[..., Any],
        args: Any = None,
        kwargs: Any = None,
        *,
        limit: float = 300.0,
    ) -> None:
        super().__init__(daemon=True, name="held-timer")
        self.interval = interval
        self.function = function
        self.args = args if args is not None else []
        self.kwargs = kwargs if kwargs is not None else {}
        self.finished = threading.Event()
        self._fired = False
        self._limit = limit

    def cancel(self) -> None:
        self.finished.set()

    def fire(self) -> None:
        self._fired = True
        self.finished.set()

    @property
    def pending(self) -> bool:
        return self.is_alive() and not self.finished.is_set()

    def run(self) -> None:
        self.finished.wait(self._limit)
        if self._fired:
            self.function(*self.args, **self.kwargs)


@dataclass
class Deadline:
    """Lambda's deadline as the test decides it: while installed, threading.Timer makes HeldTimers."""

    timers: list[HeldTimer] = field(default_factory=list)
    fired: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Deadline:
        monkeypatch.setattr(threading, "Timer", self._make)
        return self

    def _make(
        self, interval: float, function: Callable[..., Any], args: Any = None, kwargs: Any = None
    ) -> HeldTimer:
        timer = HeldTimer(interval, function, args, kwargs)
        self.timers.append(timer)
        return timer

    def pass_now(self, *, timeout: float = 30.0) -> int:
        """The deadline passes now: every pending timer fires, the earliest first (as they would),
        each run to its end before this returns. Returns how many fired."""
        due = sorted((t for t in self.timers if t.pending), key=lambda t: t.interval)
        for timer in due:
            timer.fire()
            timer.join(timeout)
            if timer.is_alive():
                raise Stuck(f"the deadline's timer did not finish within {timeout:.0f} s")
        self.fired += len(due)
        return len(due)
