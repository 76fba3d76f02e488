"""`make sam-local`: every file in events/ through `sam local invoke`, in a Lambda-like container,
against the embedded AWS (moto on 127.0.0.1 with tests/fidelity.py), checked as the e2e tests check.

tools/sam_local.sh prepares (packages, base image tarball, `sam build`) and runs `run` below in a
network namespace of its own, where only loopback and Docker's bridge exist. Inside it this module
starts a Docker daemon (its own socket, state and exec dirs), imports the base image, starts the
embedded AWS and, per function build dir, a Unix socket bridge to it (<build dir>/<fn>/.aws.sock);
the image's bootstrap relays the function's AWS calls through that socket. Then it invokes each
step of tools/sam_local.toml, checks the response and the AWS state, prints a table, and stops what
it started (by process id), also on failure.

    python -m tools.sam_local template <out>   # the template with Architectures x86_64
    python -m tools.sam_local run --sam ... --rootfs ... --build-dir ... --cache ...
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
PLAN = Path(__file__).with_name("sam_local.toml")
FUNCTIONS = ("ProvisionerFunction", "HealerFunction")
INVOKE_TIMEOUT = 420.0  # seconds for one `sam local invoke` (the healer's Timeout is 300)
DOCKERD_START = 90.0  # seconds for the daemon to answer


# --- the template -------------------------------------------------------------------------------


def write_template(out: Path) -> None:
    """template.yaml with the functions on x86_64: this machine runs x86_64 containers without
    emulation (see README, "Try it in a container")."""
    text = (ROOT / "template.yaml").read_text()
    local, count = re.subn(r"(?m)^(\s*)Architectures: \[arm64\]$", r"\1Architectures: [x86_64]", text)
    if count != 1:
        raise SystemExit(f"sam-local: expected one 'Architectures: [arm64]' in template.yaml, found {count}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by tools/sam_local.py from template.yaml: x86_64 for sam local.\n" + local)


# --- processes we start ---------------------------------------------------------------------------


@dataclass
class Started:
    """Every process started here, stopped by process id, newest first."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
            )
        self.processes.append((name, process))
        return process

    def stop_all(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    print(
                        f"sam-local: {name} (pid {process.pid}) ignored SIGTERM; killing it", file=sys.stderr
                    )
                    process.kill()
                    process.wait(timeout=15)
        self.processes.clear()


def wait_until(what: str, ready: Any, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(interval)
    raise SystemExit(f"sam-local: {what} not ready after {timeout:.0f} s")


# --- Docker ---------------------------------------------------------------------------------------


@dataclass
class Docker:
    host: str  # unix:///.../docker.sock

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "--host", self.host, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def answers(self) -> bool:
        try:
            return self.run("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_image(self, rootfs: Path) -> str:
        digest = hashlib.sha256(rootfs.name.encode()).hexdigest()[:12]
        # SAM names its rapid image after the base image's repository: a new repository per base image.
        image = f"rolekeeper-lambda-python-{digest}:3.13"
        if self.run("image", "inspect", image, check=False).returncode == 0:
            return image
        changes = [
            "ENV LAMBDA_TASK_ROOT=/var/task",
            "ENV LAMBDA_RUNTIME_DIR=/var/runtime",
            "ENV LANG=C.UTF-8",
            "ENV TZ=:/etc/localtime",
            "ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin",
            "WORKDIR /var/task",
        ]
        argv = ["import"]
        for change in changes:
            argv += ["--change", change]
        self.run(*argv, str(rootfs), image)
        return image


@contextlib.contextmanager
def docker_daemon(started: Started, cache: Path, state: Path) -> Iterator[Docker]:
    """dockerd in this network namespace: its own socket and exec dir under `state` (short path),
    images kept in `cache` so a second run reuses the base and SAM's rapid image."""
    data_root = cache / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    lock = (cache / "docker.lock").open("w")
    deadline = time.monotonic() + 900
    while True:  # one daemon per data root: wait (bounded) for another run to finish
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit(f"sam-local: {data_root} stayed in use by another run") from None
            time.sleep(2)
    docker = Docker(host=f"unix://{state}/docker.sock")
    started.start(
        "dockerd",
        [
            "dockerd",
            "--host",
            docker.host,
            "--data-root",
            str(data_root),
            "--exec-root",
            str(state / "exec"),
            "--pidfile",
            str(state / "docker.pid"),
            "--ip",
            "127.0.0.1",
        ],
        state / "dockerd.log",
    )
    try:
        wait_until("dockerd", docker.answers, DOCKERD_START)
        yield docker
    finally:
        # SAM removes its containers; anything left (an interrupted invoke) goes with the daemon.
        with contextlib.suppress(Exception):
            left = docker.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if left:
                docker.run("rm", "-f", *left, check=False, timeout=120)
        lock.close()


# --- the plan -------------------------------------------------------------------------------------


def load_plan() -> dict[str, Any]:
    plan = tomllib.loads(PLAN.read_text())
    named = [step["event"] for step in plan["step"]] + list(plan.get("not_in_container", {}))
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    missing = sorted(set(files) - set(named))
    unknown = sorted(set(named) - set(files))
    if missing or unknown:
        raise SystemExit(
            f"sam-local: {PLAN.name} must name every file in events/ exactly: missing {missing}, unknown {unknown}"
        )
    return plan


def function_for(event: dict[str, Any]) -> str:
    return "ProvisionerFunction" if "RequestType" in event else "HealerFunction"


def fill(template: str, facts: dict[str, str], strict: bool = True) -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in facts:
            if not strict:
                return match.group(0)
            raise SystemExit(f"sam-local: no fact {{{key}}} known yet (plan order?)")
        return facts[key]

    return re.sub(r"\{([a-z_]+)\}", one, template)


def prepared_event(
    step: dict[str, Any], plan: dict[str, Any], facts: dict[str, str], strict: bool = True
) -> dict[str, Any]:
    """The event file with the run-time values put in (step substitutions first)."""
    text = (EVENTS / step["event"]).read_text()
    for literal, value in {**step.get("substitute", {}), **plan.get("substitute", {})}.items():
        if literal in text:
            text = text.replace(literal, fill(value, facts, strict))
    event: dict[str, Any] = json.loads(text)
    return event


# --- AWS, as the tests see it ---------------------------------------------------------------------


class Aws:
    def __init__(self) -> None:
        import boto3

        self.iam = boto3.client("iam")
        self.kms = boto3.client("kms")

    def role(self, name: str) -> dict[str, Any] | None:
        try:
            role: dict[str, Any] = self.iam.get_role(RoleName=name)["Role"]
            return role
        except self.iam.exceptions.NoSuchEntityException:
            return None

    def attached(self, name: str) -> set[str]:
        pages = self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
        return {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}

    def profiles_of(self, name: str) -> list[str]:
        found = self.iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
        return sorted(p["InstanceProfileName"] for p in found)

    def tags(self, name: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.iam.list_role_tags(RoleName=name)["Tags"]}

    def grants(self, key_arn: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.kms.list_grants(KeyId=key_arn)["Grants"]
        return found

    def snapshot(self, key_arn: str | None) -> dict[str, Any]:
        """IAM and KMS as rolekeeper shapes them, without the ids AWS assigns (RoleId, GrantId)."""
        roles = {}
        for page in self.iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                name = role["RoleName"]
                trust: Any = role["AssumeRolePolicyDocument"]  # boto3 decodes it
                roles[name] = {
                    "path": role["Path"],
                    "trust": sorted(
                        json.dumps(statement, sort_keys=True) for statement in trust.get("Statement", [])
                    ),
                    "description": role.get("Description", ""),
                    "attached": sorted(self.attached(name)),
                    "profiles": self.profiles_of(name),
                    "tags": self.tags(name),
                }
        profiles = {
            p["InstanceProfileName"]: sorted(r["RoleName"] for r in p["Roles"])
            for page in self.iam.get_paginator("list_instance_profiles").paginate()
            for p in page["InstanceProfiles"]
        }
        grants = (
            sorted([g["GranteePrincipal"], sorted(g["Operations"])] for g in self.grants(key_arn))
            if key_arn
            else []
        )
        return {"roles": roles, "instance_profiles": profiles, "grants": grants}


def grantee_arn() -> str:
    return f"arn:aws:iam::{os.environ['MOTO_ACCOUNT_ID']}:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet"


def refresh_grant_facts(aws: Aws, facts: dict[str, str]) -> None:
    if "key_arn" not in facts:
        return
    held = [g["GrantId"] for g in aws.grants(facts["key_arn"]) if g["GranteePrincipal"] == grantee_arn()]
    if len(held) == 1:
        facts["grant_id"] = held[0]


# --- damage: the call a heal event reports, made as a person would ---------------------------------


def _lower_first(name: str) -> str:
    return name[:1].upper() + name[1:]


def replay(aws: Aws, event: dict[str, Any], facts: dict[str, str]) -> None:
    detail = event["detail"]
    params = {_lower_first(k): v for k, v in (detail.get("requestParameters") or {}).items()}
    name = detail["eventName"]
    if name == "DetachRolePolicy":
        aws.iam.detach_role_policy(**params)
    elif name == "RemoveRoleFromInstanceProfile":
        aws.iam.remove_role_from_instance_profile(**params)
    elif name == "DeleteInstanceProfile":
        profile = aws.iam.get_instance_profile(**params)["InstanceProfile"]
        for role in profile["Roles"]:
            aws.iam.remove_role_from_instance_profile(RoleName=role["RoleName"], **params)
        aws.iam.delete_instance_profile(**params)
    elif name == "UpdateAssumeRolePolicy":
        aws.iam.update_assume_role_policy(**params)
    elif name == "DeleteRole":
        role_name = params["RoleName"]
        for profile_name in aws.profiles_of(role_name):
            aws.iam.remove_role_from_instance_profile(RoleName=role_name, InstanceProfileName=profile_name)
            aws.iam.delete_instance_profile(InstanceProfileName=profile_name)
        for arn in aws.attached(role_name):
            aws.iam.detach_role_policy(RoleName=role_name, PolicyArn=arn)
        aws.iam.delete_role(**params)
    elif name == "DeleteServiceLinkedRole":
        facts["deletion_task_id"] = aws.iam.delete_service_linked_role(**params)["DeletionTaskId"]
    elif name == "RevokeGrant":
        aws.kms.revoke_grant(**params)
    elif name == "RetireGrant":
        aws.kms.retire_grant(
            KeyId=detail["responseElements"]["keyId"], GrantId=detail["additionalEventData"]["grantId"]
        )
    else:
        raise SystemExit(f"sam-local: no replay for {name}; give the step a damage list")


def damage(aws: Aws, step: dict[str, Any], event: dict[str, Any], facts: dict[str, str]) -> None:
    if "damage" not in step:
        replay(aws, event, facts)
        return
    for call in step["damage"]:
        service, method = call["call"].split(".")
        kwargs = {k: fill(v, facts) for k, v in call.items() if k != "call"}
        getattr(getattr(aws, service), method)(**kwargs)


# --- checks ---------------------------------------------------------------------------------------


class Expect:
    """Collects what differs from what a check wants."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, what: str, got: Any, want: Any) -> None:
        if got != want:
            self.problems.append(f"{what}: got {got!r}, want {want!r}")


def check_request(
    plan: dict[str, Any], event: dict[str, Any], response: dict[str, Any], aws: Aws, facts: dict[str, str]
) -> list[str]:
    """The response and the AWS state after a CloudFormation request, derived from the event."""
    expect = Expect()
    kind = event["ResourceType"]
    if event["RequestType"] == "Delete":
        _check_delete(expect, event, response, aws)
    elif kind == "Custom::ServiceLinkedRole":
        _check_service_linked_role(expect, event, response, aws, facts)
    elif kind == "Custom::ServiceRole":
        _check_service_role(expect, plan, event, response, aws, facts)
    elif kind == "Custom::SpotFleetKmsGrant":
        _check_grant(expect, plan, event, response, aws, facts)
    else:
        expect.problems.append(f"no checks for {kind}")
    if event["RequestType"] == "Update" and kind != "Custom::SpotFleetKmsGrant":
        expect(
            "PhysicalResourceId (in-place Update)",
            response.get("PhysicalResourceId"),
            event["PhysicalResourceId"],
        )
    return expect.problems


def _check_delete(expect: Expect, event: dict[str, Any], response: dict[str, Any], aws: Aws) -> None:
    props = event["ResourceProperties"]
    expect("PhysicalResourceId", response.get("PhysicalResourceId"), event["PhysicalResourceId"])
    if event["ResourceType"] == "Custom::SpotFleetKmsGrant":
        gone = event["PhysicalResourceId"].split("#")[-1]
        held = {g["GrantId"] for g in aws.grants(props["KeyId"])}
        expect("deleted grant still on the key", gone in held, False)
        return
    name = event["PhysicalResourceId"].rsplit("/", 1)[-1]
    on_delete = props.get("OnDelete", "Retain")
    expect(
        f"role {name} exists after Delete (OnDelete {on_delete})",
        aws.role(name) is not None,
        on_delete != "Delete",
    )


def _check_role_attributes(expect: Expect, response: dict[str, Any], role: dict[str, Any], arn: str) -> None:
    data = response.get("Data") or {}
    expect("PhysicalResourceId", response.get("PhysicalResourceId"), arn)
    expect("Data.RoleName", data.get("RoleName"), role["RoleName"])
    expect("Data.Arn", data.get("Arn"), arn)
    expect("Data.RoleId", data.get("RoleId"), role["RoleId"])


def _check_service_linked_role(
    expect: Expect, event: dict[str, Any], response: dict[str, Any], aws: Aws, facts: dict[str, str]
) -> None:
    from tests.fidelity import AWS_SERVICE_LINKED_ROLE_NAMES  # IAM's names, from the AWS documentation

    props = event["ResourceProperties"]
    service = props["AWSServiceName"]
    suffix = f"_{props['CustomSuffix']}" if props.get("CustomSuffix") else ""
    name = AWS_SERVICE_LINKED_ROLE_NAMES[service] + suffix
    role = aws.role(name)
    if role is None:
        expect.problems.append(f"role {name} missing")
        return
    _check_role_attributes(
        expect, response, role, f"arn:aws:iam::{facts['account']}:role/aws-service-role/{service}/{name}"
    )
    if "Description" in props:
        expect("role Description", role.get("Description"), props["Description"])


def _check_service_role(
    expect: Expect,
    plan: dict[str, Any],
    event: dict[str, Any],
    response: dict[str, Any],
    aws: Aws,
    facts: dict[str, str],
) -> None:
    props = event["ResourceProperties"]
    blueprint = plan["blueprints"][props["Blueprint"]]
    name = props.get("RoleName") or blueprint["role_name"]
    role = aws.role(name)
    if role is None:
        expect.problems.append(f"role {name} missing")
        return
    _check_role_attributes(
        expect, response, role, f"arn:aws:iam::{facts['account']}:role{props.get('Path', '/')}{name}"
    )
    want_policies = set(blueprint["policies"]) | set(props.get("ManagedPolicyArns", []))
    expect("attached policies", aws.attached(name), want_policies)
    tags = aws.tags(name)
    for tag in props.get("Tags", []):
        expect(f"tag {tag['Key']}", tags.get(tag["Key"]), tag["Value"])
    if str(props.get("InstanceProfile", blueprint["instance_profile"])).lower() == "true":
        expect("Data.InstanceProfileName", (response.get("Data") or {}).get("InstanceProfileName"), name)
        expect("instance profiles holding the role", aws.profiles_of(name), [name])


def _check_grant(
    expect: Expect,
    plan: dict[str, Any],
    event: dict[str, Any],
    response: dict[str, Any],
    aws: Aws,
    facts: dict[str, str],
) -> None:
    props = event["ResourceProperties"]
    data = response.get("Data") or {}
    key_arn = props["KeyId"]
    grant_id = data.get("GrantId", "")
    physical = response.get("PhysicalResourceId")
    expect("PhysicalResourceId", physical, f"{key_arn}#{grant_id}")
    expect("Data.KeyArn", data.get("KeyArn"), key_arn)
    expect("Data.GranteePrincipal", data.get("GranteePrincipal"), grantee_arn())
    on_key = {g["GrantId"]: g for g in aws.grants(key_arn)}
    if grant_id not in on_key:
        expect.problems.append(f"grant {grant_id} not on {key_arn}")
        return
    expect("grantee", on_key[grant_id]["GranteePrincipal"], grantee_arn())
    want_ops = props.get("Operations") or plan["grants"]["default_operations"]
    expect("grant operations", sorted(on_key[grant_id]["Operations"]), sorted(want_ops))
    if event["RequestType"] == "Update":
        if physical == event["PhysicalResourceId"]:
            expect.problems.append("a changed grant must get a new PhysicalResourceId")
        facts["replaced_grant_id"] = event["PhysicalResourceId"].split("#")[-1]
    facts["grant_id"] = grant_id


def check_heal(
    step: dict[str, Any],
    result: dict[str, Any],
    before: dict[str, Any],
    damaged: dict[str, Any],
    after: dict[str, Any],
) -> list[str]:
    problems = []
    if result.get("outcome") != step["outcome"]:
        problems.append(
            f"outcome: got {result.get('outcome')!r} ({result.get('detail')}), want {step['outcome']!r}"
        )
    if step["outcome"] == "reconciled" and not result.get("healed"):
        problems.append(f"reconcile healed nothing: {result}")
    state = step.get("state", "restored")
    if state == "unchanged":
        want = damaged
    elif state == "restored":
        want = before
    elif state == "restored_keeping_additions":
        # The healer adds back what the blueprint needs and removes nothing: the trust policy is
        # what it was plus the statements the damage put in.
        want = copy.deepcopy(before)
        for name, role in want["roles"].items():
            added = [t for t in damaged["roles"].get(name, {}).get("trust", []) if t not in role["trust"]]
            role["trust"] = sorted(role["trust"] + added)
    else:
        return [*problems, f"unknown state {state!r} in {PLAN.name}"]
    if after != want:
        problems.append(f"AWS state not {state}: {diff(want, after)}")
    return problems


def diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    parts = []
    for section, wanted in want.items():
        if isinstance(wanted, dict):
            for name in sorted(set(wanted) | set(got[section])):
                if wanted.get(name) != got[section].get(name):
                    parts.append(f"{section}.{name}: {got[section].get(name)!r} != {wanted.get(name)!r}")
        elif wanted != got[section]:
            parts.append(f"{section}: {got[section]!r} != {wanted!r}")
    return "; ".join(parts)[:1500]


# --- sam local invoke -----------------------------------------------------------------------------


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
                Tags=[{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}],
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
    from tools.local_aws import embedded_aws

    begin = time.monotonic()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
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
            with embedded_aws() as _tasks:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sam_local")
    sub = parser.add_subparsers(dest="command", required=True)
    template = sub.add_parser("template")
    template.add_argument("out")
    runner = sub.add_parser("run")
    runner.add_argument("--sam", required=True)
    runner.add_argument("--rootfs", required=True)
    runner.add_argument("--build-dir", required=True)
    runner.add_argument("--cache", required=True)
    runner.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    if args.command == "template":
        write_template(Path(args.out))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
