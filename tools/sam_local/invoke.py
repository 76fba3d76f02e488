"""`sam local invoke` of one event, and what its output says (the response, the healer's result)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.sam_local.aws_state import Aws
from tools.sam_local.checks import check_heal, check_request

INVOKE_TIMEOUT = 420.0  # seconds for one `sam local invoke` (the healer's Timeout is 300)


def json_objects(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("{", index + 1)
            continue
        yield value
        index = text.find("{", end)


@dataclass
class Invoker:
    sam: str
    template: Path
    image: str
    env_file: Path
    docker_host: str
    log: Path

    def invoke(self, function: str, event_file: Path) -> tuple[str, str, float]:
        argv = [
            self.sam, "local", "invoke", function,
            "--template", str(self.template),
            "--event", str(event_file),
            "--invoke-image", self.image,
            "--skip-pull-image",
            "--region", "us-east-1",
            "--env-vars", str(self.env_file),
            "--container-host-interface", "127.0.0.1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env.update(
            DOCKER_HOST=self.docker_host,
            SAM_CLI_TELEMETRY="0",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's
            AWS_EC2_METADATA_DISABLED="true",
        )
        start = time.monotonic()
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=INVOKE_TIMEOUT, check=False
        )
        seconds = time.monotonic() - start
        with self.log.open("a") as log:
            log.write(f"\n===== {function} {event_file.name} rc={done.returncode} {seconds:.1f}s\n")
            log.write(done.stderr + "\n----- stdout\n" + done.stdout + "\n")
        return done.stdout, done.stderr, seconds


@dataclass
class Row:
    event: str
    function: str
    status: str
    seconds: float
    problems: list[str]


def check_provisioner_output(
    plan: dict[str, Any],
    step: dict[str, Any],
    event: dict[str, Any],
    stderr: str,
    aws: Aws,
    facts: dict[str, str],
) -> tuple[str, list[str]]:
    # The handler prints its response to the function's output (sam local shows it on stderr);
    # stdout is the function's return value.
    responses = [
        o for o in json_objects(stderr)
        if isinstance(o, dict) and o.get("RequestId") == event["RequestId"] and "Status" in o
    ]  # fmt: skip
    if len(responses) != 1:
        return "-", [f"{len(responses)} CloudFormation responses printed, want exactly 1"]
    response = responses[0]
    status = str(response["Status"])
    if status != step["status"]:
        return status, [f"Status {status} ({response.get('Reason')}), want {step['status']}"]
    if status == "SUCCESS":
        return status, check_request(plan, event, response, aws, facts)
    return status, []


def check_healer_output(
    step: dict[str, Any], stdout: str, before: dict[str, Any], damaged: dict[str, Any], after: dict[str, Any]
) -> tuple[str, list[str]]:
    results = [o for o in json_objects(stdout) if isinstance(o, dict) and "outcome" in o]
    if not results:
        return "-", ["the healer returned no result"]
    return str(results[-1]["outcome"]), check_heal(step, results[-1], before, damaged, after)
