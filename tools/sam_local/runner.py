"""The run: Docker, the embedded AWS and its socket bridges, then every step of the plan, a table
of the results, and everything it started stopped (by process id), also on failure."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.devkit.embedded import moto_server
from tools.devkit.environment import OPT_IN
from tools.sam_local.aws_state import Aws, refresh_grant_facts
from tools.sam_local.damage import damage
from tools.sam_local.docker import docker_daemon
from tools.sam_local.invoke import (
    INVOKE_TIMEOUT,
    Invoker,
    Row,
    check_healer_output,
    check_provisioner_output,
)
from tools.sam_local.plan import EVENTS, function_for, load_plan, prepared_event
from tools.sam_local.processes import Started, wait_until

FUNCTIONS = ("ProvisionerFunction", "HealerFunction")


def run_plan(invoker: Invoker, work: Path) -> list[Row]:
    import boto3

    plan = load_plan()
    aws = Aws()
    facts: dict[str, str] = {"account": plan["function_account"]}
    rows: list[Row] = []
    (work / "events").mkdir(parents=True, exist_ok=True)
    for step in plan["step"]:
        if step["event"].startswith("grant-") and "key_arn" not in facts:
            # The key opts in to Custom::SpotFleetKmsGrant (README), as an operator's key would.
            facts["key_arn"] = boto3.client("kms").create_key(
                Description="sam-local AMI key",
                Tags=OPT_IN,
            )["KeyMetadata"]["Arn"]
        refresh_grant_facts(aws, facts)
        raw = json.loads((EVENTS / step["event"]).read_text())
        function = function_for(raw)
        before = damaged = None
        if function == "HealerFunction":
            before = aws.snapshot(facts.get("key_arn"))
            damage(aws, step, prepared_event(step, plan, facts, strict=False), facts)
            damaged = aws.snapshot(facts.get("key_arn"))
        event = prepared_event(step, plan, facts)
        event_file = work / "events" / step["event"]
        event_file.write_text(json.dumps(event, indent=2))
        try:
            stdout, stderr, seconds = invoker.invoke(function, event_file)
        except subprocess.TimeoutExpired:
            rows.append(
                Row(step["event"], function, "-", INVOKE_TIMEOUT, [f"no answer in {INVOKE_TIMEOUT:.0f} s"])
            )
            print(f"sam-local: {step['event']}: sam local invoke timed out; stopping", flush=True)
            break
        if function == "ProvisionerFunction":
            status, problems = check_provisioner_output(plan, step, event, stderr, aws, facts)
        else:
            assert before is not None and damaged is not None
            status, problems = check_healer_output(
                step, stdout, before, damaged, aws.snapshot(facts.get("key_arn"))
            )
        rows.append(Row(step["event"], function, status, seconds, problems))
        mark = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(
            f"sam-local: {step['event']:<45} {function:<20} {status:<10} {seconds:5.1f} s  {mark}", flush=True
        )
    return rows


def print_table(rows: list[Row], plan: dict[str, Any], total: float) -> None:
    print()
    print("| event | function | status | seconds | check |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.event} | {row.function} | {row.status} | {row.seconds:.1f} | {'ok' if not row.problems else 'FAILED'} |"
        )
    for name, why in plan.get("not_in_container", {}).items():
        print(f"| {name} | - | not run | - | {why} |")
    invoked = sum(r.seconds for r in rows)
    print(f"\n{len(rows)} invokes in {invoked:.0f} s (whole run {total:.0f} s)")
    passed = sum(1 for r in rows if not r.problems)
    print(f"sam-local: {passed} passed, {len(rows) - passed} failed")


# --- run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    begin = time.monotonic()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    cache = Path(args.cache).resolve()
    build_dir = Path(args.build_dir).resolve()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "invokes.log"
    log.write_text("")
    started = Started()
    # Short path: the daemon's sockets live here (Unix socket paths are limited to 108 bytes).
    state = Path(tempfile.mkdtemp(prefix="rk-sam-"))

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(f"sam-local: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        with docker_daemon(started, cache, state) as docker:
            t = time.monotonic()
            image = docker.ensure_image(Path(args.rootfs))
            print(f"sam-local: base image {image} ready in {time.monotonic() - t:.0f} s", flush=True)
            plan = load_plan()
            os.environ["MOTO_ACCOUNT_ID"] = plan["function_account"]
            with moto_server():
                endpoint = os.environ["AWS_ENDPOINT_URL"]
                port = endpoint.rsplit(":", 1)[-1]
                for function in FUNCTIONS:
                    sock = build_dir / function / ".aws.sock"
                    sock.unlink(missing_ok=True)
                    started.start(
                        f"socket bridge {function}",
                        ["socat", f"UNIX-LISTEN:{sock},fork,mode=666", f"TCP:127.0.0.1:{port}"],
                        work / "bridge.log",
                    )
                    wait_until(f"socket {sock}", sock.exists, 10, 0.1)
                env_file = work / "env.json"
                env = {**plan["environment"], "REGISTRY_TABLE_NAME": os.environ["REGISTRY_TABLE_NAME"]}
                env_file.write_text(json.dumps({"Parameters": env}, indent=2))
                invoker = Invoker(
                    sam=args.sam,
                    template=build_dir / "template.yaml",
                    image=image,
                    env_file=env_file,
                    docker_host=docker.host,
                    log=log,
                )
                rows = run_plan(invoker, work)
    finally:
        started.stop_all()
        for function in FUNCTIONS:
            (build_dir / function / ".aws.sock").unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    print_table(rows, load_plan(), time.monotonic() - begin)
    print(f"sam-local: each invoke's output is in {log}")
    return 0 if all(not r.problems for r in rows) else 1
