"""One scheduled reconcile in a fresh process, as a Lambda environment's first invocation would
run it, against the bench's embedded AWS over HTTP. Prints one line, RESULT <json>: the handler's
answer, the AWS calls made (service, operation, seconds since the invocation began), the wall
time, the peak RSS (VmHWM) and, with `trace`, tracemalloc's peak over the invocation.

    python -m tools.bench.reconcile_child <endpoint> <remaining ms> rss|trace
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path


def main() -> None:
    endpoint, remaining_ms, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from tools.bench import EVENTS

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    import boto3

    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    calls: list[tuple[str, str, float]] = []
    began = [time.perf_counter()]

    def hook(model: object = None, **_kwargs: object) -> None:
        service = model.service_model.service_name  # type: ignore[attr-defined]
        calls.append((service, model.name, time.perf_counter() - began[0]))  # type: ignore[attr-defined]

    boto3.DEFAULT_SESSION.events.register("before-call", hook)
    from rolekeeper.handlers.healer import lambda_handler
    from tools.bench.inprocess import Context

    event = json.loads((EVENTS / "heal-scheduled.json").read_text())
    context = Context("HealerFunction", remaining_ms)
    if mode == "trace":
        tracemalloc.start()
    start = began[0] = time.perf_counter()
    error = ""
    try:
        answer = lambda_handler(event, context)  # type: ignore[arg-type]
    except Exception as caught:  # the handler raises when objects failed: report it
        answer, error = {}, f"{type(caught).__name__}: {caught}"
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if mode == "trace" else 0
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    rss_kb = int(status["VmHWM"].split()[0]) if "VmHWM" in status else 0
    result = {
        "answer": answer,
        "error": error,
        "calls": calls,
        "elapsed": elapsed,
        "traced_peak": peak,
        "rss_kb": rss_kb,
    }
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
