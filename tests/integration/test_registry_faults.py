"""Conflicts and lost answers on every write rolekeeper makes (issue 9, DESIGN.md "Concurrency and
lost answers are normal").

For Create, Update and Delete of a service role (ecs-instance and ec2-application), a
service-linked role and a KMS grant, each registry write (UpdateItem, PutItem, DeleteItem,
TransactWriteItems) meets, once, DynamoDB refusing it for another transaction on its items
(tests/faults.CONFLICT: TransactionCanceledException with a TransactionConflict reason, or
TransactionConflictException), and every write, registry or IAM or KMS, meets once "applied, but
the answer was lost" (the service carries it out, the client sees a read timeout and botocore
retries). Every occurrence of the operation in the request is hit in turn (a fresh moto each).

CloudFormation then does what it does (tests/interleave.World): a FAILED Create is followed by the
rollback Delete, a FAILED Update by the rollback Update, a FAILED Delete is retried by the operator
(twice). Then the invariants (tests/interleave.broken_invariants); then every stack still holding
the resource deletes it and the scheduled reconcile runs, and the invariants again, with the
deletion standing (the role gone, no grant left on the key).

The table of (scenario, operation) is checked against what a clean run of each scenario calls, so
a write operation added to rolekeeper shows up here as a missing row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from tests.faults import CONFLICT, REGISTRY_WRITES, SERVICE, TIMEOUT, WRITES, Faults
from tests.interleave import World, broken_invariants, deleted_roles
from tools.devkit.embedded import fast_aws, plain
from tools.devkit.environment import OPT_IN
from tools.devkit.events import EVENTS

ECS = "ecsInstanceRole"
ECS_CREATE = "role-ecs-instance-create.json"
APP = "app-web"
APP_CREATE = "role-ec2-application-create.json"
CLOUDWATCH = "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
SLR_CREATE = "slr-create.json"
GRANT_CREATE = "grant-create.json"
SCHEDULED = json.loads((EVENTS / "heal-scheduled.json").read_text())
LOST = "applied-answer-lost"


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[World], None]
    act: Callable[[World], Any]
    roles: tuple[tuple[str, str], ...] = ()  # (role, event file) whose deletion must stand at the end
    grants: bool = False  # no grant may be left on the key at the end


def _ok(response: dict[str, Any]) -> None:
    assert response["Status"] == "SUCCESS", response.get("Reason")


def _ecs(world: World) -> None:
    _ok(world.create("alpha", ECS_CREATE, {"OnDelete": "Delete"}))


def _app(world: World) -> None:
    _ok(world.create("alpha", APP_CREATE))


def _slr(world: World) -> None:
    _ok(world.create("alpha", SLR_CREATE, {"OnDelete": "Delete"}))


def _key(world: World) -> None:
    _slr(world)
    world.notes["key_arn"] = plain("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]


def _grant(world: World) -> None:
    _key(world)
    _ok(world.create("alpha", GRANT_CREATE, {"KeyId": world.notes["key_arn"]}))


def _nothing(_world: World) -> None:
    pass


SCENARIOS: dict[str, Scenario] = {
    "ecs-create": Scenario(
        _nothing, lambda w: w.create("alpha", ECS_CREATE, {"OnDelete": "Delete"}), ((ECS, ECS_CREATE),)
    ),
    "ecs-update": Scenario(
        _ecs,
        lambda w: w.update("alpha", "EcsInstanceRole", {"Tags": [{"Key": "team", "Value": "platform"}]}),
        ((ECS, ECS_CREATE),),
    ),
    "ecs-delete": Scenario(_ecs, lambda w: w.delete("alpha", "EcsInstanceRole"), ((ECS, ECS_CREATE),)),
    "app-create": Scenario(_nothing, lambda w: w.create("alpha", APP_CREATE), ((APP, APP_CREATE),)),
    "app-update": Scenario(
        _app,
        lambda w: w.update("alpha", "WebAppRole", {"ManagedPolicyArns": [CLOUDWATCH]}),
        ((APP, APP_CREATE),),
    ),
    "app-delete": Scenario(_app, lambda w: w.delete("alpha", "WebAppRole"), ((APP, APP_CREATE),)),
    "slr-create": Scenario(
        _nothing, lambda w: w.create("alpha", SLR_CREATE, {"OnDelete": "Delete"}), ((SPOT_FLEET, SLR_CREATE),)
    ),
    "slr-update": Scenario(
        _slr,
        lambda w: w.update(
            "alpha", "SpotFleetServiceLinkedRole", {"Description": "Spot Fleet for the batch platform"}
        ),
        ((SPOT_FLEET, SLR_CREATE),),
    ),
    "slr-delete": Scenario(
        _slr, lambda w: w.delete("alpha", "SpotFleetServiceLinkedRole"), ((SPOT_FLEET, SLR_CREATE),)
    ),
    "grant-create": Scenario(
        _key, lambda w: w.create("alpha", GRANT_CREATE, {"KeyId": w.notes["key_arn"]}), grants=True
    ),
    # A new grant (new physical id), then CloudFormation's cleanup Delete of the old one.
    "grant-update": Scenario(
        _grant,
        lambda w: w.update("alpha", "SpotFleetAmiKeyGrant", {"Operations": ["Decrypt", "DescribeKey"]}),
        grants=True,
    ),
    "grant-delete": Scenario(_grant, lambda w: w.delete("alpha", "SpotFleetAmiKeyGrant"), grants=True),
}

# The writes each scenario's request makes (test_the_table_covers_every_write checks it).
WRITES_MADE: dict[str, tuple[str, ...]] = {}


@contextmanager
def world() -> Iterator[tuple[World, Faults]]:
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.setenv("HEAL_RATE_LIMIT", "100000")
        with fast_aws(monkeypatch):
            made = World(monkeypatch)
            yield made, Faults().install(monkeypatch)
    finally:
        monkeypatch.undo()


@cache
def writes_of(name: str) -> dict[str, int]:
    """Write operation -> how many times a clean run of the scenario's request calls it."""
    scenario = SCENARIOS[name]
    with world() as (made, faults):
        scenario.setup(made)
        faults.forget()
        scenario.act(made)
        assert not faults.unknown, f"operations missing from tests/faults.SERVICE: {faults.unknown}"
        counts: dict[str, int] = {}
        for attempt in faults.attempts:
            if attempt.operation in WRITES and attempt.attempt == 1:
                counts[attempt.operation] = counts.get(attempt.operation, 0) + 1
        return counts


def run_case(name: str, operation: str, fault: str, occurrence: int) -> list[str]:
    scenario = SCENARIOS[name]
    with world() as (made, faults):
        scenario.setup(made)
        faults.forget()
        if fault == CONFLICT:
            faults.conflict(operation, skip=occurrence)
        else:
            faults.time_out_after_applying(operation, skip=occurrence)
        scenario.act(made)
        assert faults.injected(operation), f"{operation} #{occurrence + 1} was never called"
        faults.disarm()
        broken = broken_invariants(made)
        for stack, logical_id in sorted(made.held):
            made.delete(stack, logical_id)
        made.settle()
        reconciled = made.heal(SCHEDULED)
        after = broken_invariants(made, deleted=deleted_roles(made, scenario.roles))
        if isinstance(reconciled, dict) and "raised" in reconciled:
            after.append(f"the scheduled reconcile raised {reconciled['raised']}")
        if scenario.grants and "key_arn" in made.notes:
            left = plain("kms").list_grants(KeyId=made.notes["key_arn"])["Grants"]
            if left:
                after.append(
                    f"(v) deletion undone: {len(left)} grant(s) left on the key after the grant's Delete"
                )
        return broken + [f"after the epilogue: {b}" for b in after]


# (scenario, operation) rows; faults: CONFLICT for registry writes, LOST for every write.
TABLE: tuple[tuple[str, str], ...] = (
    ("ecs-create", "UpdateItem"),
    ("ecs-create", "CreateRole"),
    ("ecs-create", "AttachRolePolicy"),
    ("ecs-create", "CreateInstanceProfile"),
    ("ecs-create", "AddRoleToInstanceProfile"),
    ("ecs-create", "TransactWriteItems"),
    ("ecs-update", "UpdateItem"),
    ("ecs-update", "TagRole"),
    ("ecs-update", "TransactWriteItems"),
    ("ecs-delete", "UpdateItem"),
    ("ecs-delete", "TransactWriteItems"),
    ("ecs-delete", "RemoveRoleFromInstanceProfile"),
    ("ecs-delete", "DeleteInstanceProfile"),
    ("ecs-delete", "DetachRolePolicy"),
    ("ecs-delete", "DeleteRole"),
    ("ecs-delete", "DeleteItem"),
    ("app-create", "UpdateItem"),
    ("app-create", "CreateRole"),
    ("app-create", "AttachRolePolicy"),
    ("app-create", "CreateInstanceProfile"),
    ("app-create", "AddRoleToInstanceProfile"),
    ("app-create", "TransactWriteItems"),
    ("app-update", "UpdateItem"),
    ("app-update", "AttachRolePolicy"),
    ("app-update", "DetachRolePolicy"),
    ("app-update", "TransactWriteItems"),
    ("app-delete", "UpdateItem"),
    ("app-delete", "TransactWriteItems"),
    ("app-delete", "RemoveRoleFromInstanceProfile"),
    ("app-delete", "DeleteInstanceProfile"),
    ("app-delete", "DetachRolePolicy"),
    ("app-delete", "DeleteRole"),
    ("app-delete", "DeleteItem"),
    ("slr-create", "UpdateItem"),
    ("slr-create", "CreateServiceLinkedRole"),
    ("slr-create", "TransactWriteItems"),
    ("slr-update", "UpdateItem"),
    ("slr-update", "UpdateRole"),
    ("slr-update", "TransactWriteItems"),
    ("slr-delete", "UpdateItem"),
    ("slr-delete", "TransactWriteItems"),
    ("slr-delete", "DeleteServiceLinkedRole"),
    ("slr-delete", "DeleteItem"),
    ("grant-create", "UpdateItem"),
    ("grant-create", "CreateGrant"),
    ("grant-create", "TransactWriteItems"),
    ("grant-update", "UpdateItem"),
    ("grant-update", "CreateGrant"),
    ("grant-update", "TransactWriteItems"),
    ("grant-update", "RevokeGrant"),
    ("grant-update", "DeleteItem"),
    ("grant-delete", "UpdateItem"),
    ("grant-delete", "TransactWriteItems"),
    ("grant-delete", "RevokeGrant"),
    ("grant-delete", "DeleteItem"),
)

# Broken by the code as it stands (issue 9); strict, so the fix's XPASS says to remove the mark.
# Cases the code breaks (strict: a fix's XPASS says to remove the mark). None now.
XFAIL: dict[tuple[str, str, str], str] = {}


def cases() -> list[Any]:
    params = []
    for name, operation in TABLE:
        faults = (CONFLICT, LOST) if operation in REGISTRY_WRITES else (LOST,)
        for fault in faults:
            reason = XFAIL.get((name, operation, fault))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(name, operation, fault, id=f"{name}:{operation}:{fault}", marks=marks))
    return params


@pytest.mark.parametrize(("name", "operation", "fault"), cases())
def test_a_conflict_or_a_lost_answer_keeps_the_invariants(name: str, operation: str, fault: str) -> None:
    count = writes_of(name).get(operation, 0)
    assert count, f"{name} no longer calls {operation}: remove the row"
    broken = {
        f"#{occurrence + 1} of {count}: {b}": None
        for occurrence in range(count)
        for b in run_case(name, operation, CONFLICT if fault == CONFLICT else TIMEOUT, occurrence)
    }
    assert not broken, "\n".join(broken)


def test_the_table_covers_every_write() -> None:
    made = {(name, operation) for name in SCENARIOS for operation in writes_of(name)}
    assert made == set(TABLE), (
        f"missing rows: {sorted(made - set(TABLE))}; rows no longer called: {sorted(set(TABLE) - made)}"
    )
    assert {op for _, op in TABLE} <= set(SERVICE)
