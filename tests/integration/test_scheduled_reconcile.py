"""The scheduled reconcile at scale: IAM and the registry read in pages (call counts from the fault
layer's recorded attempts), a run bounded by the invocation's deadline that stops cleanly and
saves a cursor, the next run resuming there, and the cursor invisible to every reader of objects.

Time is the test's clock (conftest's FakeClock): a check "takes" the seconds a test says by moving
that clock, so no assertion depends on how fast this machine is."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from rolekeeper.aws.registry import Cursor, Registry
from rolekeeper.domain.records import role_key
from tests.faults import Faults
from tools.devkit.clock import CLOCK
from tools.devkit.events import EVENTS, healer_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext

SCHEDULED = json.loads((EVENTS / "heal-scheduled.json").read_text())
POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
MARGIN = 10.0  # rolekeeper.handlers.healer.TIMEOUT_MARGIN, restated: the tests say what they expect


def app_name(i: int) -> str:
    return f"app-sched-{i:02d}"


@pytest.fixture
def reconcile(aws, monkeypatch) -> Iterator[Any]:
    """The scheduled event delivered as EventBridge would, with `remaining` seconds left in the
    invocation (Lambda's timeout less what ran before)."""
    from rolekeeper.handlers import healer
    from rolekeeper.healing import service as healing

    rebuild_handlers()
    monkeypatch.setattr(healing, "notify", lambda *_args: None)

    def deliver(remaining: float = 300.0) -> dict[str, Any]:
        context = LambdaContext(function_name="rolekeeper-HealerFunction", remaining_ms=int(remaining * 1000))
        return healer.lambda_handler(copy.deepcopy(SCHEDULED), context)

    yield deliver
    rebuild_handlers()


@pytest.fixture
def faults(aws, monkeypatch) -> Faults:
    """Every attempt on rolekeeper's clients recorded (none faulted)."""
    recorder = Faults().install(monkeypatch)
    rebuild_handlers()
    return recorder


def register(stack, count: int) -> list[str]:
    names = [app_name(i) for i in range(count)]
    for i, name in enumerate(names):
        response = stack.send(
            "role-ec2-application-create.json",
            logical_id=f"AppRole{i}",
            props={"RoleName": name, "ManagedPolicyArns": [POLICY], "OnDelete": "Delete"},
        )
        assert response["Status"] == "SUCCESS", response["Reason"]
    return names


def checks_take(monkeypatch, seconds: float) -> list[str]:
    """Each object's check moves the test's clock by `seconds`; returns the names checked, in order."""
    from rolekeeper.healing.service import Healer

    checked: list[str] = []
    real = Healer.heal_role

    def heal_role(self, name, **kwargs):
        checked.append(name)
        CLOCK[0].offset += seconds
        return real(self, name, **kwargs)

    monkeypatch.setattr(Healer, "heal_role", heal_role)
    return checked


def cursor() -> Cursor | None:
    return Registry(os.environ["REGISTRY_TABLE_NAME"]).cursor.read()


# --- pages ------------------------------------------------------------------------------------


def test_reconcile_reads_iam_in_pages_of_1000_and_each_record_once(stack, reconcile, faults):
    names = register(stack, 6)
    iam = boto3.client("iam")
    sent: list[dict[str, Any]] = []
    from rolekeeper.aws import clients

    clients.iam().meta.events.register(
        "before-call.iam.GetAccountAuthorizationDetails", lambda params, **_: sent.append(params)
    )
    iam.detach_role_policy(RoleName=names[3], PolicyArn=POLICY)
    faults.forget()
    result = reconcile()
    assert result["outcome"] == "reconciled" and result["complete"] is True
    assert result["checked"] == 6 and result["healthy"] == 5 and result["healed"] == 1
    assert [p["body"]["MaxItems"] for p in sent] == [1000]
    # The registry: the cursor (one Query), one Scan page; the drifted record alone costs more
    # (its heal: the lease, its record as of the lease, the final write).
    db = [
        a.operation
        for a in faults.attempts
        if a.operation in ("Query", "Scan", "UpdateItem", "TransactWriteItems")
    ]
    assert db.count("Scan") == 1
    assert db.count("Query") == 1 + 1
    assert len(faults.calls("GetAccountAuthorizationDetails")) == 1
    # No per-role IAM read for the healthy ones: only the drifted role's GetRole (its heal re-reads it).
    assert len(faults.calls("GetRole")) == 1 and len(faults.calls("ListAttachedRolePolicies")) == 1


def test_reconcile_pages_through_iam_and_the_registry_as_aws_pages_them(
    stack, reconcile, faults, monkeypatch
):
    from moto.dynamodb.models import table as moto_table

    from rolekeeper.aws import iam

    names = register(stack, 7)
    monkeypatch.setattr(iam, "ROLE_DETAILS_PAGE", 2)
    # DynamoDB ends a Scan page at 1 MB; moto too. A small page here makes 7 objects span pages,
    # an object's claim and object items falling on different pages.
    monkeypatch.setattr(moto_table, "RESULT_SIZE_LIMIT", 1500)
    boto3.client("iam").detach_role_policy(RoleName=names[5], PolicyArn=POLICY)
    faults.forget()
    result = reconcile()
    assert result["checked"] == 7 and result["healed"] == 1 and result["healthy"] == 6, result
    roles = len(boto3.client("iam").list_roles()["Roles"])
    assert len(faults.calls("GetAccountAuthorizationDetails")) == math.ceil(roles / 2)
    scans = len(faults.calls("Scan"))
    assert scans > 2
    # Every page holds at least one item, and the pages are all the reads there are for the
    # healthy records: a Query for the cursor and the healed record's read as of its lease.
    assert len(faults.calls("Query")) == 2


def test_reconcile_of_an_empty_registry_reads_no_iam(reconcile, faults):
    result = reconcile()
    assert result["outcome"] == "reconciled" and result["checked"] == 0
    assert faults.calls("GetAccountAuthorizationDetails") == []


# --- the deadline and the cursor ----------------------------------------------------------------


def test_reconcile_stops_before_its_deadline_and_resumes_where_it_stopped(stack, reconcile, monkeypatch):
    names = register(stack, 10)
    checked = checks_take(monkeypatch, 20.0)
    # 65 s to work in (75 left, less the margin): checks start at 0, 20, 40 and 60 s; at 80 s the
    # clock has run out, so the run stops after its fourth object.
    first = reconcile(remaining=MARGIN + 65)
    assert first["outcome"] == "stopped-early" and first["complete"] is False
    assert first["checked"] == 4 and first["healthy"] == 4
    saved = cursor()
    assert saved is not None and saved.after == role_key(checked[3])
    assert (saved.runs, saved.checked) == (1, 4)
    second = reconcile(remaining=MARGIN + 65)
    assert second["checked"] == 4 and second["complete"] is False
    assert cursor().after == role_key(checked[7])
    third = reconcile(remaining=MARGIN + 65)
    assert third["outcome"] == "reconciled" and third["complete"] is True and third["checked"] == 2
    assert cursor() is None  # the cycle is complete: the next run starts from the first object
    assert sorted(checked) == sorted(names)  # every object once, none twice
    fourth = reconcile(remaining=MARGIN + 65)
    assert fourth["checked"] == 4 and checked[10:] == checked[:4]


def test_reconcile_resumes_after_the_object_it_stopped_at_even_once_that_object_is_gone(
    stack, reconcile, monkeypatch
):
    names = register(stack, 6)
    checked = checks_take(monkeypatch, 20.0)
    assert reconcile(remaining=MARGIN + 45)["checked"] == 3
    last = checked[-1]
    # The stack lets go of the object the cursor names; its items are gone before the next run.
    response = stack.send(
        "role-ec2-application-delete.json",
        logical_id=f"AppRole{names.index(last)}",
        props={"RoleName": last, "ManagedPolicyArns": [POLICY], "OnDelete": "Delete"},
        PhysicalResourceId=f"arn:aws:iam::123456789012:role/{last}",
    )
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert cursor().after == role_key(last)
    result = reconcile(remaining=300)
    assert result["complete"] is True and result["checked"] == 3
    assert sorted(checked) == sorted(names)


def test_reconcile_with_no_time_left_checks_nothing_and_keeps_the_cursor(
    stack, reconcile, faults, monkeypatch
):
    register(stack, 3)
    checks_take(monkeypatch, 20.0)
    reconcile(remaining=MARGIN + 5)
    before = cursor()
    assert before is not None and before.runs == 1
    faults.forget()
    result = reconcile(remaining=MARGIN - 1)  # Lambda's time left is within the margin
    assert result["outcome"] == "stopped-early" and result["checked"] == 0
    assert faults.calls("GetAccountAuthorizationDetails") == [] and faults.calls("Scan") == []
    assert cursor() == before


def test_reconcile_that_runs_out_of_time_while_reading_iam_checks_nothing(
    stack, reconcile, faults, monkeypatch
):
    from rolekeeper.aws import clients, iam

    register(stack, 3)
    monkeypatch.setattr(iam, "ROLE_DETAILS_PAGE", 1)

    def slow_page(**_kwargs: Any) -> None:
        CLOCK[0].offset += 30  # each IAM page "takes" 30 s

    clients.iam().meta.events.register("before-call.iam.GetAccountAuthorizationDetails", slow_page)
    result = reconcile(remaining=MARGIN + 50)
    assert result["outcome"] == "stopped-early" and result["checked"] == 0
    assert len(faults.calls("GetAccountAuthorizationDetails")) == 2  # stopped after the page that ran out
    assert cursor() is None


def test_healer_bounds_an_event_heal_by_the_invocation_deadline(aws, stack, deletion_tasks, monkeypatch):
    """The same clock bounds an event's heal: waiting on a service-linked role's deletion task
    (up to about 60 s) stops where the invocation's time (less the margin) ends."""
    from rolekeeper.domain.errors import RetryLater
    from rolekeeper.handlers import healer
    from rolekeeper.healing import service as healing

    rebuild_handlers()
    monkeypatch.setattr(healing, "notify", lambda *_args: None)
    stack.send("slr-create.json")
    deletion_tasks.asynchronous = True
    task_id = boto3.client("iam").delete_service_linked_role(RoleName="AWSServiceRoleForEC2SpotFleet")[
        "DeletionTaskId"
    ]
    event = healer_event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id})
    context = LambdaContext(function_name="rolekeeper-HealerFunction", remaining_ms=int((MARGIN + 12) * 1000))
    with pytest.raises(RetryLater):
        healer.lambda_handler(event, context)
    assert 0 < sum(CLOCK[0].slept) <= 12


# --- the cursor is no object ------------------------------------------------------------------


def test_the_cursor_is_invisible_to_objects_and_status(stack, reconcile, monkeypatch):
    from rolekeeper import cli

    names = register(stack, 3)
    checks_take(monkeypatch, 20.0)
    reconcile(remaining=MARGIN + 5)
    assert cursor() is not None
    table = os.environ["REGISTRY_TABLE_NAME"]
    records = list(Registry(table).objects.all())
    assert sorted(r.key for r in records) == sorted(role_key(n) for n in names)
    entries = cli.status(table, check_drift=False)
    assert sorted(e["key"] for e in entries) == sorted(role_key(n) for n in names)


def test_reconcile_whose_scan_fails_saves_where_it_got_to_for_lambdas_retry(
    stack, reconcile, faults, monkeypatch
):
    from moto.dynamodb.models import table as moto_table

    from tests.faults import DENIED, Armed

    names = register(stack, 6)
    checked = checks_take(monkeypatch, 0.0)
    monkeypatch.setattr(moto_table, "RESULT_SIZE_LIMIT", 1500)  # a few items per Scan page
    faults.forget()
    assert reconcile()["checked"] == 6
    pages = len(faults.calls("Scan"))
    checked.clear()
    faults.armed["Scan"] = Armed(DENIED, None, skip=pages - 1)  # the last page is refused
    with pytest.raises(Exception, match="AccessDenied"):
        reconcile()
    assert 0 < len(checked) < len(names)
    saved = cursor()
    assert saved is not None and saved.after == role_key(checked[-1])
    faults.disarm()
    result = reconcile()  # Lambda's retry of the scheduled event
    assert result["complete"] is True
    assert sorted(checked) == sorted(names)
