"""Delete latency of a service-linked role (last claim, and Retain) against in-process moto."""

from __future__ import annotations

import statistics
import time

from tools.bench.inprocess import Calls, cfn, mocked_aws, request
from tools.bench.report import Table, verdict

RUNS = 10


def delete_latency(table: Table, calls: Calls) -> None:
    timings: dict[str, list[float]] = {"Delete, last claim": [], "Retain": []}
    with mocked_aws(calls) as world:
        for i in range(RUNS + 1):  # the first round warms clients and moto up, untimed
            for mode, on_delete in (("Delete, last claim", "Delete"), ("Retain", "Retain")):
                stack = f"latency-{on_delete}-{i}"
                arn = cfn(world, request("slr-create.json", stack, {"OnDelete": on_delete}))[
                    "PhysicalResourceId"
                ]
                event = request("slr-delete.json", stack, {"OnDelete": on_delete}, PhysicalResourceId=arn)
                start = time.perf_counter()
                cfn(world, event)
                if i:
                    timings[mode].append((time.perf_counter() - start) * 1000)
    for mode, values in timings.items():
        value = statistics.median(values)
        table.add(
            f"Delete latency: `Custom::ServiceLinkedRole` ({mode}), moto in-process",
            f"{value:.1f} ms median",
            f"min {min(values):.1f} / max {max(values):.1f} ms over {len(values)}",
            "-",
            "< 1000 ms",
            verdict(value < 1000),
        )
