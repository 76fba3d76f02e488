"""Cold start: importing each handler module in a fresh process, against the floor (boto3 and an
IAM client) and a reference handler written as Powertools' examples write one."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.bench import ROOT
from tools.bench.report import Table, verdict

RUNS = 10

REFERENCE_HANDLER = '''\
"""A custom resource handler module as Powertools' examples write one (crhelper, which the
README pattern adds, is no longer among rolekeeper's dependencies)."""
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import CloudFormationCustomResourceCreateModel

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="x")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=CloudFormationCustomResourceCreateModel)
def lambda_handler(event, context):
    return {"PhysicalResourceId": "physical-id"}
'''

TIMED_IMPORT = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update(PYTHONPATH=os.pathsep.join((str(ROOT / "src"), str(ROOT))))
    env.update(extra)
    return env


def cold_start(table: Table) -> None:
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "reference_handler.py").write_text(REFERENCE_HANDLER)
        variants = {
            "floor": "import boto3; boto3.client('iam', region_name='us-east-1')",
            "reference": "import reference_handler",
            "custom_resource": "import rolekeeper.handlers.custom_resource",
            "healer": "import rolekeeper.handlers.healer",
            "custom_resource+iam": "import rolekeeper.handlers.custom_resource; "
            "from rolekeeper.aws import clients; clients.client('iam')",
        }
        # As in Lambda (Tracer enables itself only there); PYTHONPATH=src as the artifact's CodeUri.
        env = subprocess_env(
            PYTHONPATH=os.pathsep.join((str(ROOT / "src"), directory)),
            LAMBDA_TASK_ROOT=directory,
            AWS_LAMBDA_FUNCTION_NAME="rolekeeper-bench",
        )
        times: dict[str, list[float]] = {name: [] for name in variants}
        # One untimed round warms the file cache; then rounds interleaved, so drift in machine load
        # hits every variant alike.
        for round_ in range(RUNS + 1):
            for name, statement in variants.items():
                out = subprocess.run(
                    [sys.executable, "-c", TIMED_IMPORT.format(statement=statement)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                    cwd=directory,
                ).stdout
                if round_:
                    times[name].append(float(out.strip().splitlines()[-1]))
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    floor, reference = median["floor"], median["reference"]
    for handler in ("custom_resource", "healer"):
        value = median[handler]
        table.add(
            f"Cold start: import `rolekeeper.handlers.{handler}` (median of {RUNS})",
            f"{value:.0f} ms",
            f"floor {floor:.0f} ms (boto3 + IAM client); reference {reference:.0f} ms",
            f"{value / floor:.2f}x floor; {value / reference:.2f}x reference",
            "<= 1.5x floor",
            verdict(value <= 1.5 * floor),
        )
    value = median["custom_resource+iam"]
    table.add(
        "Cold start: `custom_resource` import + first IAM client (what the first request adds)",
        f"{value:.0f} ms",
        f"floor {floor:.0f} ms",
        f"{value / floor:.2f}x floor",
        "(information)",
        "-",
    )
    table.notes.append(
        "Cold start: python -c timing the import only, Lambda-like environment (LAMBDA_TASK_ROOT set, "
        "so the reference's Tracer is active); the reference is Powertools' Logger, Tracer, Metrics "
        "and parser."
    )
