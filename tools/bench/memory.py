"""Peak memory of one custom resource request (a service-linked role's Create) in a fresh process,
against the embedded AWS over HTTP, a local receiver standing in for the ResponseURL."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import uuid

from tools.bench import EVENTS, ROOT
from tools.bench.cold_start import subprocess_env
from tools.bench.inprocess import reset_moto, stack_id
from tools.bench.report import Table, verdict

CHILD = r"""
import json, resource, sys, tracemalloc


class Context:
    function_name = "rolekeeper-ProvisionerFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:rolekeeper-ProvisionerFunction"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self):
        return 120_000


event = json.loads(sys.argv[1])
trace = sys.argv[2] == "trace"
from rolekeeper.handlers.custom_resource import lambda_handler

if trace:
    tracemalloc.start()
body = lambda_handler(event, Context())
peak = tracemalloc.get_traced_memory()[1] if trace else 0
# VmHWM is this program's peak RSS. ru_maxrss is not: Linux carries the forked parent's high-water
# mark across exec, so a child of a 200 MB bench would report 200 MB.
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_kb = int(status["VmHWM"].split()[0]) if "VmHWM" in status else maxrss_kb
result = {"status": body["Status"], "peak": peak, "rss_kb": rss_kb, "maxrss_kb": maxrss_kb}
print("RESULT " + json.dumps(result), flush=True)
"""


def memory(table: Table) -> None:
    from tools.devkit.embedded import moto_server as embedded_aws
    from tools.devkit.responses import Receiver

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = dict(os.environ)
    receiver = Receiver().start()
    results = {}
    try:
        # No CloudFormation stands behind this request: nothing to confirm it against (the
        # in-process rows count the confirmation), and its answer goes to the local receiver.
        with embedded_aws(REGISTRY_TABLE_NAME=os.environ["REGISTRY_TABLE_NAME"]):
            env = subprocess_env(
                AWS_ENDPOINT_URL=os.environ["AWS_ENDPOINT_URL"],
                VERIFY_REQUESTS="false",
                LOCAL_RESPONSE_URLS="true",
                POWERTOOLS_LOG_LEVEL="ERROR",
            )
            for mode, stack in (("rss", "memory-rss"), ("trace", "memory-trace")):
                event = json.loads((EVENTS / "slr-create.json").read_text())
                request_id = str(uuid.uuid4())
                event.update(
                    StackId=stack_id(stack), RequestId=request_id, ResponseURL=receiver.url(request_id)
                )
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, json.dumps(event), mode],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                    cwd=ROOT,
                ).stdout
                line = next(x for x in reversed(out.splitlines()) if x.startswith("RESULT "))
                results[mode] = json.loads(line[len("RESULT ") :])
                assert receiver.bodies[request_id]["Status"] == "SUCCESS", receiver.bodies[request_id]
    finally:
        receiver.stop()
        reset_moto()
        os.environ.clear()
        os.environ.update(saved)
    rss_mb = results["rss"]["rss_kb"] / 1024
    peak_mb = results["trace"]["peak"] / 1024 / 1024
    suggested = max(128, math.ceil(rss_mb * 1.5 / 64) * 64)
    table.add(
        "Peak memory: one SLR create in a fresh process (over HTTP to moto)",
        f"peak RSS (VmHWM) {rss_mb:.0f} MB; tracemalloc peak {peak_mb:.1f} MB (Python heap, import excluded)",
        "template.yaml MemorySize 256 MB",
        f"{rss_mb / 256:.0%} of 256 MB",
        f"suggested MemorySize >= {suggested} MB (1.5x RSS, 64 MB steps)",
        verdict(rss_mb * 1.5 <= 256),
    )
    table.notes.append(
        "Memory: VmHWM, not ru_maxrss (Linux carries the forked parent's high-water mark across exec)."
    )
