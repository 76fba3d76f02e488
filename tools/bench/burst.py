"""A burst of CloudTrail events for one deleted role, ten at a time: healed once."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tools.bench.inprocess import (
    ECS,
    Calls,
    cfn,
    delete_ecs_role_by_hand,
    heal,
    heal_event,
    mocked_aws,
    request,
    serialise_moto,
)
from tools.bench.report import Table, quiet, verdict

EVENTS = 50
WORKERS = 10


def heal_burst(table: Table, calls: Calls) -> None:
    import pytest

    names = ("RemoveRoleFromInstanceProfile", "DeleteInstanceProfile", "DetachRolePolicy", "DeleteRole")
    patcher = pytest.MonkeyPatch()
    try:
        with mocked_aws(calls) as world:
            serialise_moto(patcher)
            cfn(world, request("role-ecs-instance-create.json", "platform", {"OnDelete": "Delete"}))
            delete_ecs_role_by_hand()
            events = []
            for i in range(EVENTS):
                name = names[i % len(names)]
                parameters = (
                    {"instanceProfileName": ECS}
                    if name == "DeleteInstanceProfile"
                    else {"roleName": ECS, "instanceProfileName": ECS}
                )
                events.append(
                    heal_event("heal-delete-role.json", eventName=name, requestParameters=parameters)
                )
            outcomes: Counter[str] = Counter()
            with calls.counting() as made, quiet():
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                    for result in pool.map(lambda e: heal(e, silent=False), events):
                        outcomes[result["outcome"]] += 1
                elapsed = time.perf_counter() - start
            import boto3

            healed = boto3.client("iam").get_role(RoleName=ECS)["Role"]["RoleName"] == ECS
    finally:
        patcher.undo()
    creates = sum(1 for _service, op in made if op == "CreateRole")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    table.add(
        f"Heal burst: {EVENTS} events for one deleted `ecsInstanceRole` ({WORKERS} at a time)",
        f"CreateRole x{creates}; {elapsed:.2f} s wall",
        f"outcomes: {summary}; role back: {'yes' if healed else 'no'}",
        f"{len(made)} AWS calls in all ({len(made) / EVENTS:.1f} per event)",
        "CreateRole = 1",
        verdict(creates == 1 and healed),
    )
