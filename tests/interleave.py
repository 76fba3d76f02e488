"""An interleaving explorer: two rolekeeper invocations, each in its own thread, run one at a time
and switch only where rolekeeper calls AWS (IAM, KMS, DynamoDB), through every schedule up to a
bound; and the world they run in (Lambda invocations as CloudFormation and EventBridge make them)
with the invariants DESIGN.md's "Concurrency and lost answers are normal" promises.

How it runs. A `before-call` handler on rolekeeper's own clients (hooked as tests/faults.py hooks
them) parks the calling thread and hands control back to the scheduler, so exactly one thread runs
at any time and a "step" is one thread's run from one AWS call to its next (the call itself and
the code after it). At each point where more than one thread could run, the scheduler decides.
A schedule is the list of those decisions; beyond a forced prefix the running thread keeps running
(no preemption). Exploration is iterative context bounding (CHESS, Musuvathi and Qadeer 2007):
schedules are taken in order of their number of preemptions (switching away from a thread that
could have continued), and each explored schedule adds its alternatives, one per later decision,
within the bound. So every schedule with 0, then 1, ... up to `bound` preemptions is run (until
`cap` schedules: the tier the cap cuts is sampled in a seeded random order), the first violation
found has the fewest preemptions, and no schedule runs twice.

Calls on a request's own bookkeeping item (REQUEST#<RequestId>: begin_request, answered) commute
with everything the other thread does, so they are not switch points (a partial-order reduction).

Every wait is bounded: a thread that does not come back to the scheduler within `step_timeout`
fails the schedule (printed), and the threads still parked are released with Abort (a
BaseException, which rolekeeper's `except Exception` does not swallow).

Concurrent invocations share the handler modules' request handling, which keeps nothing of one
request for the next (each invocation is its own), as separate execution environments would.

The scheduler also keeps the schedule's History: every call made, whether it succeeded, and which
registry keys held a claim after each registry write, so an invariant can say what happened after
what (a role created after its last claim was released).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from tools.devkit import cloudformation
from tools.devkit.clock import CLOCK
from tools.devkit.environment import ACCOUNT
from tools.devkit.events import load_event, request_event, stack_id
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

HOOKED = ("iam", "kms", "dynamodb")
HEALER_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:rolekeeper-HealerFunction"
REGISTRY = "rolekeeper-test-registry"
NAMES = "ABCDEFGH"


class Abort(BaseException):
    """Raised in a parked thread when its schedule is abandoned (stuck or failed)."""


class Stuck(AssertionError):
    pass


# --- the scheduler --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    enabled: tuple[int, ...]
    chosen: int
    previous: int | None  # the thread that ran the step before (None at the start)
    yielded: bool = False  # the previous thread stopped in a sleep (it waits for the others)

    @property
    def preempts(self) -> bool:
        return (
            self.previous is not None
            and self.previous in self.enabled
            and self.chosen != self.previous
            and not self.yielded
        )


@dataclass
class Run:
    steps: list[tuple[int, str]] = field(default_factory=list)  # (thread, the AWS call it went on with)
    decisions: list[Decision] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    errors: list[BaseException | None] = field(default_factory=list)
    diverged: bool = False  # a forced choice was not possible (the replay went elsewhere)

    @property
    def preemptions(self) -> int:
        return sum(d.preempts for d in self.decisions)

    def describe(self, labels: Sequence[str] = ()) -> str:
        """The schedule, each thread's consecutive steps grouped: A[start Query GetRole] B[...]."""
        names = [labels[i] if i < len(labels) else NAMES[i] for i in range(len(self.results))]
        groups = []
        for thread, steps in itertools.groupby(self.steps, key=lambda s: s[0]):
            groups.append(f"{names[thread]}[{' '.join(point for _, point in steps)}]")
        return " ".join(groups)


def _is_bookkeeping(params: Any) -> bool:
    """A DynamoDB call on the request's own REQUEST# item (begin_request, answered)."""
    if not isinstance(params, dict):
        return False
    body = params.get("body")
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body or "{}")
        except ValueError:
            return False
    if not isinstance(body, dict):
        return False
    return str(body.get("Key", {}).get("pk", {}).get("S", "")).startswith("REQUEST#")


@dataclass
class Happened:
    """One AWS call a scheduled thread made, in the order the calls were made."""

    thread: int
    operation: str
    role_name: str | None  # IAM calls: the role named
    ok: bool | None = None  # None until its answer came back
    claimed: frozenset[str] | None = None  # after a registry write: the keys holding a claim


class History:
    """The calls of one schedule, with the registry's claimed keys after every write: enough to
    tell what was created after what was released."""

    def __init__(self) -> None:
        self.events: list[Happened] = []
        self.start: frozenset[str] = frozenset()

    def begin(self) -> None:
        self.events = []
        self.start = claimed_keys()

    def before(self, thread: int, operation: str, params: Any) -> Happened:
        body = params.get("body") if isinstance(params, dict) else None
        name = body.get("RoleName") if isinstance(body, dict) else None
        happened = Happened(thread, operation, str(name) if name else None)
        self.events.append(happened)
        return happened

    def after(self, happened: Happened, ok: bool) -> None:
        happened.ok = ok
        if ok and happened.operation in REGISTRY_WRITES:
            happened.claimed = claimed_keys()

    def recreated_after_release(self, key: str, role_name: str) -> int:
        """How many CreateRole of role_name succeeded after the last write that left key without a
        claim (0 if no write released it during the schedule)."""
        claimed, released = key in self.start, None
        for position, happened in enumerate(self.events):
            if happened.claimed is None:
                continue
            if claimed and key not in happened.claimed:
                released = position
            claimed = key in happened.claimed
        if released is None:
            return 0
        return sum(
            1
            for h in self.events[released + 1 :]
            if h.operation == "CreateRole" and h.ok and (h.role_name or "").lower() == role_name.lower()
        )


REGISTRY_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})


def claimed_keys() -> frozenset[str]:
    return frozenset(i["pk"]["S"] for i in registry_items() if i["sk"]["S"].startswith("CLAIM#"))


class Scheduler:
    def __init__(self, step_timeout: float = 20.0) -> None:
        self.step_timeout = step_timeout
        self.history = History()
        self._happening: dict[int, list[Happened]] = {}
        self._cond = threading.Condition()
        self._threads: dict[int, int] = {}  # thread ident -> index in the current run
        self._turn: int | None = None
        self._points: list[str | None] = []
        self._yielding: list[bool] = []
        self._done: list[bool] = []
        self._aborted = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Scheduler:
        """Hook every IAM, KMS and DynamoDB client rolekeeper.aws makes from now on."""
        from rolekeeper.aws import clients as aws

        # The uncached maker underneath (a scheduler installed before in this test is replaced, not
        # stacked on).
        make = getattr(aws.client, "interleave_make", None) or aws.client.__wrapped__

        @cache
        def client(service: str, *args: Any) -> Any:
            made = make(service, *args)
            service_id = made.meta.service_model.service_id.hyphenize()
            if service_id in HOOKED:
                made.meta.events.register(f"before-call.{service_id}", self._before_call)
                made.meta.events.register(f"after-call.{service_id}", self._after_call)
                made.meta.events.register(f"after-call-error.{service_id}", self._after_call_error)
            return made

        client.interleave_make = make  # type: ignore[attr-defined]
        monkeypatch.setattr(aws, "client", client)
        # rolekeeper's waits (for IAM, for another writer, for a deletion task) are where a thread
        # lets the others run: a switch there is not a preemption, and it costs no time.
        from rolekeeper.handlers import custom_resource, healer
        from rolekeeper.retry import Clock

        def sleep(seconds: float) -> None:
            CLOCK[0].offset += seconds  # time passes for the sleeper as for everyone
            self._sleep(seconds)

        custom_resource.configure(clock=Clock(now=CLOCK[0].now, sleep=sleep))
        healer.configure(clock=Clock(now=CLOCK[0].now, sleep=sleep))
        return self

    def _sleep(self, _seconds: float) -> None:
        index = self._threads.get(threading.get_ident())
        if index is not None:
            self._park(index, "sleep", yielding=True)

    def wait(self) -> None:
        """A scheduled thread waits for the others (not a preemption); elsewhere, nothing."""
        self._sleep(0.0)

    def _before_call(self, event_name: str, params: Any = None, **_kwargs: Any) -> None:
        index = self._threads.get(threading.get_ident())
        if index is None:  # the test's own thread: setup and checks run unscheduled
            return
        operation = event_name.rsplit(".", 1)[-1]
        if event_name.endswith((".dynamodb.UpdateItem", ".dynamodb.PutItem")) and _is_bookkeeping(params):
            return
        self._park(index, operation)
        happened = self.history.before(index, operation, params)
        self._happening.setdefault(threading.get_ident(), []).append(happened)

    def _after_call(self, event_name: str = "", http_response: Any = None, **_kwargs: Any) -> None:
        self._answered(event_name, getattr(http_response, "status_code", 200) < 300)

    def _after_call_error(self, event_name: str = "", **_kwargs: Any) -> None:
        self._answered(event_name, False)

    def _answered(self, event_name: str, ok: bool) -> None:
        pending = self._happening.get(threading.get_ident())
        operation = event_name.rsplit(".", 1)[-1]
        found = next((h for h in reversed(pending or []) if h.operation == operation), None)
        if pending is not None and found is not None:
            pending.remove(found)
            self.history.after(found, ok)

    def _park(self, index: int, point: str, *, yielding: bool = False) -> None:
        with self._cond:
            self._points[index] = point
            self._yielding[index] = yielding
            self._turn = None
            self._cond.notify_all()
            # A parked thread may wait while the others run many steps: the scheduler's own
            # bounded waits decide when a schedule is stuck; this bound only keeps a stray thread
            # from living forever.
            self._cond.wait_for(lambda: self._turn == index or self._aborted, timeout=self.step_timeout * 30)
            if self._turn != index:
                raise Abort(f"schedule abandoned at {point}")

    def run(self, operations: Sequence[Callable[[], Any]], forced: Sequence[int] = ()) -> Run:  # noqa: PLR0915 - one handshake, top to bottom
        count = len(operations)
        run = Run(results=[None] * count, errors=[None] * count)
        self.history.begin()
        self._happening = {}
        with self._cond:
            self._turn = None
            self._points = ["start"] * count
            self._yielding = [False] * count
            self._done = [False] * count
            self._aborted = False
            self._threads = {}
        started = threading.Event()

        def body(index: int) -> None:
            with self._cond:
                self._threads[threading.get_ident()] = index
                if len(self._threads) == count:
                    started.set()
                self._cond.wait_for(lambda: self._turn == index or self._aborted, timeout=self.step_timeout)
                go = self._turn == index
            try:
                if not go:
                    raise Abort("never scheduled")
                run.results[index] = operations[index]()
            except BaseException as error:  # reported with the schedule (Abort included)
                run.errors[index] = error
            finally:
                with self._cond:
                    self._done[index] = True
                    self._points[index] = None
                    if self._turn == index:
                        self._turn = None
                    self._cond.notify_all()

        threads = [
            threading.Thread(target=body, args=(i,), daemon=True, name=f"interleave-{NAMES[i]}")
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        if not started.wait(self.step_timeout):
            self._abort()
            raise Stuck("the threads did not start")
        previous: int | None = None
        try:
            while True:
                with self._cond:
                    if not self._cond.wait_for(lambda: self._turn is None, timeout=self.step_timeout):
                        raise Stuck(
                            f"{NAMES[previous or 0]} did not reach its next AWS call within "
                            f"{self.step_timeout:.0f} s; schedule so far: {run.describe()}"
                        )
                    enabled = tuple(i for i in range(count) if not self._done[i])
                    if not enabled:
                        break
                    yielded = previous is not None and self._yielding[previous]
                    others = [i for i in enabled if i != previous]
                    # the running thread goes on, unless it waits in a sleep while others can run
                    keep = previous in enabled and not (yielded and others)
                    chosen = previous if keep and previous is not None else others[0]
                    if len(enabled) > 1:
                        position = len(run.decisions)
                        if position < len(forced):
                            if forced[position] in enabled:
                                chosen = forced[position]
                            else:
                                run.diverged = True
                        run.decisions.append(Decision(enabled, chosen, previous, yielded))
                    point = self._points[chosen] or "?"
                    run.steps.append((chosen, point))
                    self._points[chosen] = None
                    self._turn = chosen
                    previous = chosen
                    self._cond.notify_all()
        except BaseException:
            self._abort()
            raise
        finally:
            for thread in threads:
                thread.join(timeout=self.step_timeout)
        if any(thread.is_alive() for thread in threads):
            self._abort()
            raise Stuck(f"a thread did not finish; schedule: {run.describe()}")
        with self._cond:
            self._threads = {}
        return run

    def _abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


@dataclass
class Exploration:
    schedules: int = 0
    by_preemptions: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[Run, list[str]]] = field(default_factory=list)
    truncated: bool = False  # the cap stopped it before every schedule within the bound ran
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the process's CPU time (all threads): wall time on a shared machine lies


def explore(
    attempt: Callable[[Sequence[int]], tuple[Run, list[str]]],
    *,
    bound: int = 2,
    cap: int = 200,
    seed: int = 9,
) -> Exploration:
    """Run schedules in order of preemptions (at most `bound`), at most `cap` of them. attempt(forced)
    builds a fresh world, runs the operations with the forced prefix of decisions and returns the
    run with the invariants it broke."""
    found = Exploration()
    start, cpu_start = time.monotonic(), time.process_time()
    # Within one number of preemptions, a seeded shuffle: when the cap cuts a tier short, what ran
    # is spread over the whole operation rather than bunched at its start.
    order = random.Random(seed)
    work: list[tuple[int, float, tuple[int, ...]]] = [(0, order.random(), ())]
    while work:
        if found.schedules >= cap:
            found.truncated = True
            break
        _, _, forced = heapq.heappop(work)
        run, broken = attempt(forced)
        found.schedules += 1
        found.by_preemptions[run.preemptions] += 1
        if broken:
            found.failures.append((run, broken))
        if run.diverged:
            continue
        so_far = sum(d.preempts for d in run.decisions[: len(forced)])
        for position in range(len(forced), len(run.decisions)):
            decision = run.decisions[position]
            for other in decision.enabled:
                if other == decision.chosen:
                    continue
                extra = Decision(decision.enabled, other, decision.previous, decision.yielded).preempts
                if so_far + extra <= bound:
                    prefix = (*(d.chosen for d in run.decisions[:position]), other)
                    heapq.heappush(work, (so_far + extra, order.random(), prefix))
            so_far += decision.preempts
    found.seconds = time.monotonic() - start
    found.cpu_seconds = time.process_time() - cpu_start
    return found


# --- the world: Lambda invocations as CloudFormation and EventBridge make them ---------------------


@dataclass
class Held:
    """A resource as CloudFormation believes it exists (Create or Update answered SUCCESS)."""

    event_file: str
    logical_id: str
    physical_id: str
    props: dict[str, Any]


class World:
    """Stacks, the healer and CloudFormation's view of what each stack holds. send() plays
    CloudFormation's part for one request (tools/devkit/cloudformation.py); create/update/delete add
    what CloudFormation does next with the answer (a rollback Delete after a FAILED Create, the
    cleanup Delete of a replaced physical id, the rollback Update after a FAILED Update, the
    operator's retry of a FAILED Delete)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from rolekeeper.handlers import custom_resource
        from rolekeeper.healing import service as healing

        self.cfn = cloudformation.CloudFormation()
        self.sent = Sent(issued=self.cfn.issued)
        cloudformation.install(monkeypatch, self.cfn)
        # One execution environment's request handling serves every thread: it keeps no state of
        # a request between invocations (each invocation is its own), as in Lambda.
        custom_resource.configure(sender=self.sent)
        monkeypatch.setattr(healing, "notify", lambda *_a: None)
        rebuild_handlers()
        self.held: dict[tuple[str, str], Held] = {}
        self.requests: list[str] = []  # every RequestId CloudFormation sent
        # (stack, event file, request type, status, properties), in the order the answers came
        self.journal: list[tuple[str, str, str, str, dict[str, Any]]] = []
        self.heals: list[Any] = []
        self.notes: dict[str, Any] = {}  # what a setup wants its operations to know (a key ARN, ...)
        # Let the other invocations run while this one waits (the explorer's scheduler puts its own
        # here; run alone, there is no one else to wait for).
        self.wait: Callable[[], None] = lambda: None
        self.history: History | None = None  # the explorer's record of the schedule's AWS calls
        self.deadline: Any = None  # tests/staging.Deadline, for a pair that controls the deadline
        self._lock = threading.Lock()
        self._saved: tuple[Any, ...] | None = None

    def save(self) -> None:
        """Remember this moment (AWS as moto holds it, CloudFormation's view): restore() returns
        to it, far cheaper than a fresh moto and the setup again for every schedule."""
        self._saved = copy.deepcopy((self.held, self.cfn.stacks, self.cfn.resources, self.notes))
        self._saved_aws = save_aws()

    def restore(self) -> None:
        assert self._saved is not None, "save() first"
        held, stacks, resources, notes = copy.deepcopy(self._saved)
        self.held, self.notes = held, notes
        self.cfn.stacks.clear()
        self.cfn.stacks.update(stacks)
        self.cfn.resources.clear()
        self.cfn.resources.update(resources)
        restore_aws(self._saved_aws)
        self.sent.responses.clear()
        self.requests.clear()
        self.journal.clear()
        self.heals.clear()

    stack_id = staticmethod(stack_id)

    def event(
        self,
        stack: str,
        event_file: str,
        *,
        request_type: str | None = None,
        physical_id: str | None = None,
        props: dict[str, Any] | None = None,
        old_props: dict[str, Any] | None = None,
        logical_id: str | None = None,
    ) -> dict[str, Any]:
        """events/<event_file> as this stack's CloudFormation sends it (a fresh RequestId); old_props
        are the new properties but for these."""
        overrides: dict[str, Any] = {}
        if request_type:
            overrides["RequestType"] = request_type
        if physical_id is not None:
            overrides["PhysicalResourceId"] = physical_id
        event = request_event(event_file, stack, logical_id=logical_id, props=props, **overrides)
        if old_props is not None:
            event["OldResourceProperties"] = {**event["ResourceProperties"], **old_props}
        return event

    def send(
        self,
        stack: str,
        event_file: str,
        *,
        request_type: str | None = None,
        physical_id: str | None = None,
        props: dict[str, Any] | None = None,
        old_props: dict[str, Any] | None = None,
        logical_id: str | None = None,
        context: LambdaContext | None = None,
    ) -> dict[str, Any]:
        event = self.event(
            stack,
            event_file,
            request_type=request_type,
            physical_id=physical_id,
            props=props,
            old_props=old_props,
            logical_id=logical_id,
        )
        return self.deliver(stack, event_file, event, context=context)

    def deliver(
        self, stack: str, event_file: str, event: dict[str, Any], *, context: LambdaContext | None = None
    ) -> dict[str, Any]:
        """CloudFormation sends the request and takes the answer, also when the invocation never
        returns (its environment ended after the deadline answer went out)."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        with self._lock:
            self.requests.append(event["RequestId"])
        self.cfn.before(event)
        try:
            lambda_handler(event, context or LambdaContext())
        finally:
            response = self.answer(event["RequestId"])
            if response["Status"] != "NONE":
                self.cfn.after(event, response)
            with self._lock:
                self.journal.append(
                    (stack, event_file, event["RequestType"], response["Status"], event["ResourceProperties"])
                )
        return response

    def redeliver(self, event: dict[str, Any], context: LambdaContext | None = None) -> None:
        """Lambda delivers the same event again (its asynchronous retry after a function error or
        timeout, or a duplicate): CloudFormation sent nothing new and waits for nothing more."""
        from rolekeeper.handlers.custom_resource import lambda_handler

        lambda_handler(copy.deepcopy(event), context or LambdaContext())

    def answer(self, request_id: str) -> dict[str, Any]:
        """The response sent for a RequestId (the last, if several were)."""
        mine = [r for r in self.sent.responses if r.get("RequestId") == request_id]
        return mine[-1] if mine else {"Status": "NONE", "Reason": "no response", "PhysicalResourceId": ""}

    # CloudFormation's part around one resource of a stack

    def create(
        self, stack: str, event_file: str, props: dict[str, Any] | None = None, *, roll_back: bool = True
    ) -> dict[str, Any]:
        """roll_back=False: a FAILED Create's rollback Delete is left to the caller."""
        response = self.send(stack, event_file, props=props)
        logical_id = load_event(event_file)["LogicalResourceId"]
        if response["Status"] == "SUCCESS":
            self.held[(stack, logical_id)] = Held(
                event_file, logical_id, response["PhysicalResourceId"], dict(props or {})
            )
        elif roll_back:  # the stack rolls back: a Delete of the physical id the failed Create answered
            self.send(
                stack,
                event_file,
                request_type="Delete",
                physical_id=response["PhysicalResourceId"],
                props=props,
            )
        return response

    def update(self, stack: str, logical_id: str, props: dict[str, Any]) -> dict[str, Any]:
        held = self.held[(stack, logical_id)]
        new_props = {**held.props, **props}
        response = self.send(
            stack,
            held.event_file,
            request_type="Update",
            physical_id=held.physical_id,
            props=new_props,
            old_props=held.props,
        )
        if response["Status"] == "SUCCESS":
            old = held.physical_id
            self.held[(stack, logical_id)] = Held(
                held.event_file, logical_id, response["PhysicalResourceId"], new_props
            )
            if response["PhysicalResourceId"] != old:  # UPDATE_COMPLETE_CLEANUP_IN_PROGRESS
                self.send(stack, held.event_file, request_type="Delete", physical_id=old, props=held.props)
        else:  # UPDATE_ROLLBACK_IN_PROGRESS: the old properties again
            self.send(
                stack,
                held.event_file,
                request_type="Update",
                physical_id=held.physical_id,
                props=held.props,
                old_props=new_props,
            )
        return response

    def delete(self, stack: str, logical_id: str, *, retries: int = 2) -> dict[str, Any]:
        held = self.held[(stack, logical_id)]
        for _ in range(retries + 1):  # DELETE_FAILED: the operator deletes the stack again
            response = self.send(
                stack, held.event_file, request_type="Delete", physical_id=held.physical_id, props=held.props
            )
            if response["Status"] == "SUCCESS":
                del self.held[(stack, logical_id)]
                break
        return response

    def heal(self, payload: dict[str, Any]) -> Any:
        from rolekeeper.handlers import healer

        context = LambdaContext(function_name="rolekeeper-HealerFunction", invoked_function_arn=HEALER_ARN)
        try:
            result: Any = healer.lambda_handler(copy.deepcopy(payload), context)
        except Exception as error:  # Lambda's async retry delivers it again
            result = {"raised": f"{type(error).__name__}: {error}"}
        self.heals.append(result)
        return result

    def settle(self) -> Any:
        """The provisioner's schedule once every invocation's deadline passed: it settles what an
        invocation left pending (a release whose second phase met a fault, say)."""
        from rolekeeper.handlers import custom_resource

        CLOCK[0].offset += 3600
        event = {
            "id": "settle",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": "2026-12-07T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {},
            "version": "0",
        }
        return custom_resource.lambda_handler(event, LambdaContext())

    def heal_until_done(self, payload: dict[str, Any], attempts: int = 3) -> Any:
        """Lambda's async invocation: a raised error is retried (twice)."""
        result = None
        for _ in range(attempts):
            result = self.heal(payload)
            if not (isinstance(result, dict) and "raised" in result):
                break
        return result


SAVED_SERVICES = ("iam", "kms", "dynamodb", "sts")


def save_aws() -> dict[str, dict[str, dict[str, Any]]]:
    """A deep copy of moto's backends for the services rolekeeper uses (not CloudFormation: the
    double in tools/devkit/cloudformation.py answers for it)."""
    from moto.backends import get_backend

    saved: dict[str, dict[str, dict[str, Any]]] = {}
    for service in SAVED_SERVICES:
        backends = get_backend(service)  # type: ignore[call-overload]
        saved[service] = {
            account: {region: copy.deepcopy(backend) for region, backend in dict.items(regions)}
            for account, regions in dict.items(backends)
        }
    return saved


def restore_aws(saved: dict[str, dict[str, dict[str, Any]]]) -> None:
    from moto.backends import get_backend

    for service, accounts in saved.items():
        backends = get_backend(service)  # type: ignore[call-overload]
        for account in list(dict.keys(backends)):
            if account not in accounts:
                dict.__delitem__(backends, account)
        for account, regions in accounts.items():
            held = backends[account]
            for region in list(dict.keys(held)):
                if region not in regions:
                    dict.__delitem__(held, region)
            for region, backend in regions.items():
                dict.__setitem__(held, region, copy.deepcopy(backend))


# --- the invariants ---------------------------------------------------------------------------------


def _role(iam: Any, name: str) -> dict[str, Any] | None:
    try:
        return iam.get_role(RoleName=name)["Role"]  # type: ignore[no-any-return]
    except iam.exceptions.NoSuchEntityException:
        return None


def _profile_roles(iam: Any, name: str) -> list[str] | None:
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        return None
    return [r["RoleName"] for r in profile["Roles"]]


def _grant_ids(kms: Any, key_arn: str) -> set[str]:
    return {g["GrantId"] for g in kms.list_grants(KeyId=key_arn)["Grants"]}


def registry_items() -> list[dict[str, Any]]:
    from tools.devkit.embedded import plain

    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": REGISTRY, "ConsistentRead": True}
    while True:
        page = plain("dynamodb").scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return [i for i in items if i["sk"]["S"] != "REQUEST"]
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _releasing(claim_item: dict[str, Any]) -> bool:
    """The claim's release is pending (its Delete answered; the second phase not done yet)."""
    pending = claim_item.get("pending", {}).get("M", {})
    return bool(pending.get("release", {}).get("BOOL"))


def _wants(claim_item: dict[str, Any]) -> dict[str, Any]:
    """A claim item's wants: a map (this version) or a JSON string (0.1.0)."""
    from rolekeeper.aws.registry.items import decode_item

    wants = decode_item({"wants": claim_item["wants"]})["wants"]
    return json.loads(wants) if isinstance(wants, str) else dict(wants)


def broken_invariants(  # noqa: PLR0915 - the invariants, in order
    world: World, *, deleted: Sequence[str] = (), retained: Sequence[str] = (), history: History | None = None
) -> list[str]:
    """What does not hold at the end (empty: all of it holds).

    (i) no claimed object missing: every object item with a claim item, and every resource
        CloudFormation holds, is there in AWS: the role with every policy and the instance
        profile its claims want, the KMS grant the record names; and CloudFormation's resources
        each have their claim item (no claim lost).
    (ii) no orphan claim: no claim item without its object item; an object's claim_count (when
        kept) is its number of claim items.
    (iii) no unclaimed "created" object left live: no object item with created=true and no claim
        item, unless marked state="deleting". (An object whose last claim went with OnDelete:
        Retain keeps its record by design: the keys in `retained`.)
    (iv) exactly one response per RequestId CloudFormation sent.
    (v) a stack's deliberate deletion is not undone: each role in `deleted` (whose last claim a
        Delete with OnDelete: Delete released, CloudFormation holding nothing of it at the end)
        does not exist, nor its instance profile.
    (vi)-(ix): see the functions of those names below.
    """
    from rolekeeper.domain.records import object_key
    from tools.devkit.embedded import plain

    iam, kms = plain("iam"), plain("kms")
    broken: list[str] = []
    items = registry_items()
    objects = {i["pk"]["S"]: i for i in items if i["sk"]["S"] == "OBJECT"}
    claims: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if item["sk"]["S"].startswith("CLAIM#"):
            claims.setdefault(item["pk"]["S"], []).append(item)

    def present(key: str, wants: list[dict[str, Any]], why: str) -> None:
        obj = objects.get(key)
        if key.startswith("GRANT#"):
            if obj is None:
                broken.append(f"(i) {why}: grant record {key} missing")
                return
            key_arn, grant_id = obj["key_arn"]["S"], obj["grant_id"]["S"]
            if grant_id not in _grant_ids(kms, key_arn):
                broken.append(f"(i) {why}: grant {grant_id[:8]}… of {key[-12:]} missing on the key")
            return
        name = obj["name"]["S"] if obj is not None and "name" in obj else key.split("#", 1)[1]
        role = _role(iam, name)
        if role is None:
            broken.append(f"(i) {why}: role {name} missing")
            return
        name = role["RoleName"]
        attached = {
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        }
        for want in wants:
            for arn in want.get("policy_arns", []):
                if arn not in attached:
                    broken.append(f"(i) {why}: {name} lacks wanted policy {arn.rsplit('/', 1)[-1]}")
            if want.get("instance_profile") and _profile_roles(iam, name) != [name]:
                broken.append(f"(i) {why}: {name}'s wanted instance profile missing or not holding it")

    for key, held in sorted(claims.items()):
        wants = [_wants(c) for c in held if "wants" in c]
        if not any(_releasing(c) for c in held):  # a release under way takes pieces away
            present(key, wants, "claimed in the registry")
        if key not in objects:
            broken.append(f"(ii) orphan claim: {len(held)} claim item(s) on {key} without its object item")
    for (stack, logical_id), resource in sorted(world.held.items()):
        key = object_key(resource.physical_id) or resource.physical_id
        sk = f"CLAIM#{world.stack_id(stack)}#{logical_id}"
        if not any(c["sk"]["S"] == sk for c in claims.get(key, [])):
            broken.append(
                f"(i) claim lost: {stack}/{logical_id} holds {key} in CloudFormation, no claim item"
            )
        present(key, [], f"held by {stack}/{logical_id}")
    for key, obj in sorted(objects.items()):
        count = int(obj.get("claim_count", {}).get("N", "0"))
        holders = len(claims.get(key, []))
        if "claim_count" in obj and count != holders:
            broken.append(f"(ii) {key}: claim_count {count} but {holders} claim item(s)")
        deleting = obj.get("state", {}).get("S") == "deleting"
        if obj.get("created", {}).get("BOOL") and not holders and not deleting and key not in retained:
            broken.append(f"(iii) unclaimed created record left live: {key}")
    answers = Counter(r.get("RequestId") for r in world.sent.responses)
    for request_id in world.requests:
        if answers[request_id] != 1:
            broken.append(f"(iv) {answers[request_id]} responses to RequestId {request_id[:8]}")
    for name in deleted:
        if _role(iam, name) is not None:
            broken.append(f"(v) deletion undone: {name} exists after its last Delete (OnDelete: Delete)")
        if _profile_roles(iam, name) is not None:
            broken.append(f"(v) deletion undone: instance profile {name} exists after its last Delete")
    broken += claims_without_their_holder(world, claims)
    broken += grants_no_record_names(world, objects)
    broken += unwanted_policies(world)
    if history is not None:
        broken += recreated_after_release(history, claims)
    return broken


def claims_without_their_holder(world: World, claims: dict[str, list[dict[str, Any]]]) -> list[str]:
    """(vi) no claim without its holder: every claim item names a resource CloudFormation holds,
    on the object that resource's physical id names (so none is left for a resource CloudFormation
    got FAILED for once its rollback Delete ran, nor for a replaced physical id after its cleanup)."""
    from rolekeeper.domain.records import object_key

    holders = {
        (world.stack_id(stack), logical_id): object_key(held.physical_id) or held.physical_id
        for (stack, logical_id), held in world.held.items()
    }
    broken = []
    for key, items in sorted(claims.items()):
        for item in items:
            if _releasing(item):
                continue  # its release is pending: the schedule settles it (world.settle)
            stack_id, logical_id = item["sk"]["S"].removeprefix("CLAIM#").rsplit("#", 1)
            holds = holders.get((stack_id, logical_id))
            if holds != key:
                stack = stack_id.split("/")[1] if stack_id.count("/") >= 2 else stack_id
                where = (
                    f"CloudFormation holds it as {holds}" if holds else "CloudFormation holds nothing of it"
                )
                broken.append(f"(vi) claim without its holder: {stack}/{logical_id} on {key}; {where}")
    return broken


def grants_no_record_names(world: World, objects: dict[str, dict[str, Any]]) -> list[str]:
    """(vii) no live rolekeeper-made grant on a key (the pair's notes["key_arn"]) that no record
    names: nothing would ever revoke it."""
    from tools.devkit.embedded import plain

    key_arn = world.notes.get("key_arn")
    if not key_arn:
        return []
    named = {o["grant_id"]["S"] for o in objects.values() if "grant_id" in o}
    grants = plain("kms").list_grants(KeyId=key_arn)["Grants"]
    return [
        f"(vii) grant {g['GrantId'][:8]}… ({g['Name'][:40]}…) live on the key, no record names it"
        for g in grants
        if str(g.get("Name", "")).startswith("rolekeeper-") and g["GrantId"] not in named
    ]


def unwanted_policies(world: World) -> list[str]:
    """(ix) nothing rolekeeper attached that no claim wants: a role the pairs name with
    ManagedPolicyArns (rolekeeper creates those, nobody else touches them) carries no allowed
    managed policy that no resource CloudFormation holds asks for."""
    import os

    from tools.devkit.embedded import plain

    allowed = set(filter(None, os.environ.get("ALLOWED_MANAGED_POLICY_ARNS", "").split(",")))
    wanted: dict[str, set[str]] = {}
    for entry in world.journal:
        props = entry[4]
        if "ManagedPolicyArns" in props and props.get("RoleName"):
            wanted.setdefault(str(props["RoleName"]), set())
    for held in world.held.values():
        props = {**load_event(held.event_file)["ResourceProperties"], **held.props}
        if props.get("RoleName") in wanted:
            wanted[props["RoleName"]] |= set(props.get("ManagedPolicyArns", []))
    iam, broken = plain("iam"), []
    settling = {
        i["pk"]["S"] for i in registry_items() if i["sk"]["S"].startswith("CLAIM#") and "pending" in i
    }
    for name, policies in sorted(wanted.items()):
        if _role(iam, name) is None or f"ROLE#{name.lower()}" in settling:
            continue  # gone, or a change under way takes its pieces away once settled (world.settle)
        attached = {
            p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        }
        for arn in sorted((attached & allowed) - policies):
            broken.append(
                f"(ix) {name} carries {arn.rsplit('/', 1)[-1]}, which no claim CloudFormation holds wants"
            )
    return broken


def recreated_after_release(history: History, claims: dict[str, list[dict[str, Any]]]) -> list[str]:
    """(viii) nothing recreated after its last release: a role that a write of the schedule left
    without any claim, and that is unclaimed at the end, was not created again after that write
    (unless it was deleted again: then it is not there)."""
    from tools.devkit.embedded import plain

    iam, broken = plain("iam"), []
    names = {h.role_name for h in history.events if h.operation == "CreateRole" and h.ok and h.role_name}
    for name in sorted(n for n in names if n):
        key = f"ROLE#{name.lower()}"
        if key in claims or _role(iam, name) is None:
            continue
        if count := history.recreated_after_release(key, name):
            broken.append(
                f"(viii) {name} created again ({count} CreateRole) after its last claim was released, "
                "and left standing unclaimed"
            )
    return broken


def deleted_roles(world: World, candidates: Sequence[tuple[str, str]]) -> list[str]:
    """The roles (name, event file) whose deletion must stand: CloudFormation holds none of them
    at the end, and the last request about them that succeeded was a Delete with OnDelete: Delete."""
    gone = []
    for name, event_file in candidates:
        if any(h.event_file == event_file for h in world.held.values()):
            continue
        deletes = [j for j in world.journal if j[1:4] == (event_file, "Delete", "SUCCESS")]
        if deletes and deletes[-1][4].get("OnDelete") == "Delete":
            gone.append(name)
    return gone
