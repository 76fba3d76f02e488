"""End to end over HTTP: the real handlers against a moto server on 127.0.0.1, responses PUT by the
real sender (rolekeeper.aws.responses.put) to a local receiver standing in for CloudFormation.

Nothing here patches rolekeeper. The moto server is made to behave as AWS where rolekeeper depends
on it (tools/devkit/fidelity, installed by tools.devkit.embedded.moto_server), plus one thing only
a server needs: moto handles requests in threads without locking, where AWS makes
CreateServiceLinkedRole (one name per account) and DynamoDB writes (per item) atomic;
`_atomic_server` restores that.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from tools.devkit.embedded import moto_server
from tools.devkit.environment import OPT_IN
from tools.devkit.events import request_event as stack_request
from tools.devkit.events import stack_id
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Receiver, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
SPOT_FLEET_PATH = "/aws-service-role/spotfleet.amazonaws.com/"
ECS = "ecsInstanceRole"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
DEFAULT_OPERATIONS = {
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "CreateGrant",
    "DescribeKey",
    "ReEncryptFrom",
    "ReEncryptTo",
}
NARROWER = ["Decrypt", "DescribeKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo"]
CONCURRENCY = 20
CHILD_TIMEOUT = 120.0  # seconds for any one round of the subprocess test (imports included)


# --- the local AWS -----------------------------------------------------------------------------


class CountingBodies(dict[str, dict[str, Any]]):
    """The receiver's store, counting every PUT per request id (exactly one response per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self.puts[key] += 1
            super().__setitem__(key, value)


@dataclass
class ServerCalls:
    """Calls that reached the moto server, counted where the AWS facts matter to the tests."""

    delete_service_linked_role: int = 0
    create_service_linked_role: int = 0


def _atomic_server(patcher: pytest.MonkeyPatch, calls: ServerCalls) -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.iam import models as iam_models

    lock = threading.RLock()

    def atomic(owner: Any, name: str, count: str | None = None) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                if count:
                    setattr(calls, count, getattr(calls, count) + 1)
                return original(*args, **kwargs)

        patcher.setattr(owner, name, wrapper)

    atomic(iam_models.IAMBackend, "create_service_linked_role", "create_service_linked_role")
    atomic(iam_models.IAMBackend, "delete_service_linked_role", "delete_service_linked_role")
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        atomic(DynamoDBBackend, name)


@dataclass
class LocalAws:
    receiver: Receiver
    bodies: CountingBodies
    tasks: Any  # tools.devkit.fidelity.DeletionTasks
    calls: ServerCalls
    endpoint: str

    def iam(self) -> Any:
        return boto3.client("iam")

    def kms(self) -> Any:
        return boto3.client("kms")

    def registry(self) -> Any:
        from rolekeeper.aws.registry import Registry

        return Registry(os.environ["REGISTRY_TABLE_NAME"])


@pytest.fixture
def local_aws() -> Iterator[LocalAws]:
    """A moto server and a receiver on 127.0.0.1 (os.environ, moto and rolekeeper's clients put
    back by moto_server after)."""
    from rolekeeper.handlers import custom_resource

    # The response must travel through the real sender (not the conftest `sent` recorder).
    custom_resource.configure()
    bodies = CountingBodies()
    receiver = Receiver(bodies=bodies).start()
    try:
        with moto_server(asynchronous_slr_deletion=True) as tasks:
            patcher = pytest.MonkeyPatch()
            calls = ServerCalls()
            try:
                _atomic_server(patcher, calls)
                yield LocalAws(receiver, bodies, tasks, calls, os.environ["AWS_ENDPOINT_URL"])
            finally:
                patcher.undo()  # before moto_server undoes the fidelity layer it wraps
    finally:
        receiver.stop()


# --- requests as CloudFormation sends them -----------------------------------------------------


def request_event(receiver: Receiver, event_file: str, stack: str, **kwargs: Any) -> dict[str, Any]:
    return stack_request(event_file, stack, response_url=receiver.url, **kwargs)


def send(local: LocalAws, event_file: str, stack: str, **kwargs: Any) -> dict[str, Any]:
    """One request through the real handler; returns the body the receiver got over HTTP."""
    from rolekeeper.handlers.custom_resource import lambda_handler

    event = request_event(local.receiver, event_file, stack, **kwargs)
    returned = lambda_handler(copy.deepcopy(event), LambdaContext())
    request_id = event["RequestId"]
    assert local.bodies.puts[request_id] == 1, "exactly one response per request, delivered over HTTP"
    body = local.bodies[request_id]
    assert body == returned
    assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
        event["StackId"],
        request_id,
        event["LogicalResourceId"],
    )
    assert all(isinstance(v, str) for v in body["Data"].values()), "attributes are strings"
    return body


def ok(body: dict[str, Any]) -> dict[str, Any]:
    assert body["Status"] == "SUCCESS", body["Reason"]
    return body


def claims(local: LocalAws, key: str) -> int:
    record = local.registry().objects.read(key)
    return len(record.claims) if record else 0


# --- (a) the lifecycle, as in `make demo` ------------------------------------------------------


def test_lifecycle_over_http(local_aws: LocalAws) -> None:  # noqa: PLR0915 - one story, top to bottom
    from rolekeeper.domain.records import role_key

    iam, kms = local_aws.iam(), local_aws.kms()

    # 1. Stack 'platform' creates the Spot Fleet service-linked role.
    spot_fleet = ok(send(local_aws, "slr-create.json", "platform", props={"OnDelete": "Delete"}))
    role = iam.get_role(RoleName=SPOT_FLEET)["Role"]
    assert role["Path"] == SPOT_FLEET_PATH
    assert spot_fleet["PhysicalResourceId"] == role["Arn"]
    assert spot_fleet["Data"] == {
        "RoleName": SPOT_FLEET,
        "Arn": role["Arn"],
        "RoleId": role["RoleId"],
        "Created": "true",
    }

    # 2. A customer managed key and the grant that lets Spot Fleet use it.
    key_arn = kms.create_key(Description="encrypted AMIs", Tags=OPT_IN)["KeyMetadata"]["Arn"]
    grant = ok(send(local_aws, "grant-create.json", "platform", props={"KeyId": key_arn}))
    grant_id = grant["Data"]["GrantId"]
    assert grant["PhysicalResourceId"] == f"{key_arn}#{grant_id}"
    assert grant["Data"]["KeyArn"] == key_arn
    assert grant["Data"]["GranteePrincipal"] == role["Arn"]
    grants = kms.list_grants(KeyId=key_arn)["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"]) for g in grants] == [(grant_id, role["Arn"])]
    assert set(grants[0]["Operations"]) == DEFAULT_OPERATIONS

    # 3. Stack 'analytics' asks for the same role: adopted, not failed; two claims, one role.
    analytics = ok(send(local_aws, "slr-create.json", "analytics", props={"OnDelete": "Delete"}))
    assert analytics["PhysicalResourceId"] == spot_fleet["PhysicalResourceId"]
    assert analytics["Data"]["RoleId"] == role["RoleId"]
    names = [r["RoleName"] for page in iam.get_paginator("list_roles").paginate() for r in page["Roles"]]
    assert names.count(SPOT_FLEET) == 1
    assert claims(local_aws, role_key(SPOT_FLEET)) == 2

    # 4. 'platform' narrows the grant: a new grant (new physical id); the cleanup Delete revokes the old.
    narrower = ok(
        send(
            local_aws,
            "grant-update.json",
            "platform",
            props={"KeyId": key_arn, "Operations": NARROWER},
            old_props={"KeyId": key_arn},
            PhysicalResourceId=grant["PhysicalResourceId"],
        )
    )
    new_grant_id = narrower["Data"]["GrantId"]
    assert new_grant_id != grant_id
    assert narrower["PhysicalResourceId"] == f"{key_arn}#{new_grant_id}"
    ok(
        send(
            local_aws,
            "grant-delete.json",
            "platform",
            props={"KeyId": key_arn},
            PhysicalResourceId=grant["PhysicalResourceId"],
        )
    )
    grants = kms.list_grants(KeyId=key_arn)["Grants"]
    assert [g["GrantId"] for g in grants] == [new_grant_id]
    assert sorted(grants[0]["Operations"]) == sorted(NARROWER)

    # 5. The ECS instance role with its instance profile.
    ecs = ok(send(local_aws, "role-ecs-instance-create.json", "platform", props={"OnDelete": "Delete"}))
    assert ecs["Data"]["InstanceProfileName"] == ECS
    profile = iam.get_instance_profile(InstanceProfileName=ECS)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ECS]
    attached = iam.list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [ECS_POLICY]

    # 6. Delete both stacks.
    ok(
        send(
            local_aws,
            "grant-delete.json",
            "platform",
            props={"KeyId": key_arn},
            PhysicalResourceId=narrower["PhysicalResourceId"],
        )
    )
    assert kms.list_grants(KeyId=key_arn)["Grants"] == []
    ok(
        send(
            local_aws,
            "role-ecs-instance-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=ecs["PhysicalResourceId"],
        )
    )
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=ECS)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_instance_profile(InstanceProfileName=ECS)

    ok(
        send(
            local_aws,
            "slr-delete.json",
            "platform",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=spot_fleet["PhysicalResourceId"],
        )
    )
    # 'analytics' still claims it: nothing submitted, the role stays.
    assert local_aws.calls.delete_service_linked_role == 0
    assert iam.get_role(RoleName=SPOT_FLEET)["Role"]["RoleId"] == role["RoleId"]
    assert claims(local_aws, role_key(SPOT_FLEET)) == 1

    ok(
        send(
            local_aws,
            "slr-delete.json",
            "analytics",
            props={"OnDelete": "Delete"},
            PhysicalResourceId=analytics["PhysicalResourceId"],
        )
    )
    # Last claim released: deletion submitted (asynchronous, as in IAM), the function did not wait.
    assert local_aws.calls.delete_service_linked_role == 1
    assert len(local_aws.tasks.pending) == 1
    local_aws.tasks.finish()
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=SPOT_FLEET)
    # The record stays "deleting" with the task id until a later request sees the task over.
    [record] = list(local_aws.registry().objects.all())
    assert record.key == role_key(SPOT_FLEET) and record.deleting and not record.claims
    assert all(count == 1 for count in local_aws.bodies.puts.values())


# --- (b) concurrency: one process per invocation, as Lambda isolates them ----------------------

CHILD = r"""
import json, os, sys, uuid
from dataclasses import dataclass

from rolekeeper.handlers.custom_resource import lambda_handler


@dataclass
class Context:
    aws_request_id: str
    function_name: str = "rolekeeper-ProvisionerFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:rolekeeper-ProvisionerFunction"

    def get_remaining_time_in_millis(self):
        return 120_000


print("READY", flush=True)
for line in sys.stdin:
    event = json.loads(line)
    result = lambda_handler(event, Context(aws_request_id=str(uuid.uuid4())))
    print("RESULT " + json.dumps(result), flush=True)
os._exit(0)  # as a Lambda container ends: no interpreter teardown to wait for
"""


class Workers:
    """CONCURRENCY warm 'Lambda containers': separate processes, each handling one request at a time."""

    def __init__(self, count: int, directory: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT))),
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.outputs = [directory / f"worker-{i}.log" for i in range(count)]
        self.processes: list[subprocess.Popen[str]] = []
        for path in self.outputs:
            with path.open("w") as out:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD],
                        stdin=subprocess.PIPE,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                        env=env,
                        cwd=ROOT,
                    )
                )

    def lines(self, i: int) -> list[str]:
        return self.outputs[i].read_text().splitlines()

    def results(self, i: int) -> list[dict[str, Any] | None]:
        return [json.loads(line[7:]) for line in self.lines(i) if line.startswith("RESULT ")]

    def wait_until(self, done: Callable[[int], bool], what: str, timeout: float = CHILD_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(done(i) for i in range(len(self.processes))):
                return
            dead = [i for i, p in enumerate(self.processes) if p.poll() is not None and not done(i)]
            if dead:
                raise AssertionError(f"worker {dead[0]} exited early:\n" + "\n".join(self.lines(dead[0])))
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def start(self) -> None:
        self.wait_until(lambda i: "READY" in self.lines(i), "the workers to import the handler")

    def run(self, events: list[dict[str, Any]]) -> None:
        """Hand every worker its event at once (they are already warm), then wait for all answers."""
        before = [len(self.results(i)) for i in range(len(self.processes))]
        for process, event in zip(self.processes, events, strict=True):
            assert process.stdin is not None
            process.stdin.write(json.dumps(event) + "\n")
            process.stdin.flush()
        self.wait_until(lambda i: len(self.results(i)) > before[i], "every worker's response")

    def errors(self) -> list[str]:
        problems = []
        for i in range(len(self.processes)):
            for line in self.lines(i):
                if line.startswith(("READY", "RESULT ")):
                    continue
                try:
                    level = json.loads(line).get("level")
                except ValueError:
                    problems.append(f"worker {i}: {line}")  # a traceback or stray output
                    continue
                if level in ("ERROR", "CRITICAL"):
                    problems.append(f"worker {i}: {line}")
        return problems

    def close(self) -> None:
        for process in self.processes:
            if process.stdin and not process.stdin.closed:
                process.stdin.close()
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def workers() -> Iterator[Callable[[], Workers]]:
    made: list[Workers] = []
    with tempfile.TemporaryDirectory() as directory:

        def start() -> Workers:
            pool = Workers(CONCURRENCY, Path(directory))
            made.append(pool)
            pool.start()
            return pool

        try:
            yield start
        finally:
            for pool in made:
                pool.close()


def test_twenty_stacks_at_once_share_one_service_linked_role(
    local_aws: LocalAws, workers: Callable[[], Workers]
) -> None:
    from rolekeeper.domain.records import role_key

    pool = workers()
    stacks = [f"concurrent-{i:02d}" for i in range(CONCURRENCY)]
    creates = [
        request_event(local_aws.receiver, "slr-create.json", stack, props={"OnDelete": "Delete"})
        for stack in stacks
    ]
    pool.run(creates)

    bodies = [local_aws.bodies[e["RequestId"]] for e in creates]
    assert [b["Status"] for b in bodies] == ["SUCCESS"] * CONCURRENCY, [b["Reason"] for b in bodies]
    assert all(local_aws.bodies.puts[e["RequestId"]] == 1 for e in creates)
    iam = local_aws.iam()
    names = [r["RoleName"] for page in iam.get_paginator("list_roles").paginate() for r in page["Roles"]]
    assert names.count(SPOT_FLEET) == 1, names
    role = iam.get_role(RoleName=SPOT_FLEET)["Role"]
    assert {b["PhysicalResourceId"] for b in bodies} == {role["Arn"]}
    assert {b["Data"]["RoleId"] for b in bodies} == {role["RoleId"]}
    assert local_aws.calls.create_service_linked_role >= 1
    record = local_aws.registry().objects.read(role_key(SPOT_FLEET))
    assert record is not None
    assert record.created, "rolekeeper created the role, whichever stack's request did it"
    assert sorted(c.stack_id for c in record.claims) == sorted(stack_id(s) for s in stacks)

    deletes = [
        request_event(
            local_aws.receiver,
            "slr-delete.json",
            stack,
            props={"OnDelete": "Delete"},
            PhysicalResourceId=role["Arn"],
        )
        for stack in stacks
    ]
    pool.run(deletes)

    bodies = [local_aws.bodies[e["RequestId"]] for e in deletes]
    assert [b["Status"] for b in bodies] == ["SUCCESS"] * CONCURRENCY, [b["Reason"] for b in bodies]
    assert all(local_aws.bodies.puts[e["RequestId"]] == 1 for e in deletes)
    assert claims(local_aws, role_key(SPOT_FLEET)) == 0
    assert pool.errors() == []
    submitted = local_aws.calls.delete_service_linked_role
    assert submitted == 1, (
        f"DeleteServiceLinkedRole was submitted {submitted} times for one role: more than one of the "
        "concurrent Deletes released its claim, then read 'no claim remains'"
    )
    local_aws.tasks.finish()
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=SPOT_FLEET)


# --- (c) the sender: bounded when CloudFormation's URL is unreachable or refuses ---------------


@dataclass
class Refuser:
    """A ResponseURL that answers every PUT with one status, counting attempts."""

    status: int
    attempts: int = 0
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Refuser:
        refuser = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                refuser.attempts += 1
                self.send_response(refuser.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/refused?X-Amz-Signature=x"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _send_attempts() -> int:
    from rolekeeper.aws.responses import DELIVERY

    return DELIVERY.attempts


def _timed_create(local: LocalAws, response_url: str) -> tuple[float, dict[str, Any] | None]:
    from rolekeeper.handlers.custom_resource import lambda_handler

    event = request_event(local.receiver, "slr-create.json", "unreachable", ResponseURL=response_url)
    start = time.monotonic()
    returned = lambda_handler(event, LambdaContext())
    return time.monotonic() - start, returned


def test_unreachable_response_url_returns_promptly(local_aws: LocalAws) -> None:
    port = free_port()  # bound and released: nothing listens there
    elapsed, returned = _timed_create(local_aws, f"http://127.0.0.1:{port}/closed?X-Amz-Signature=x")
    assert elapsed < 10, f"the handler took {elapsed:.1f} s with an unreachable ResponseURL"
    assert returned is not None
    assert returned["Status"] == "SUCCESS"  # the work was done; only the delivery failed
    assert local_aws.iam().get_role(RoleName=SPOT_FLEET)["Role"]["Arn"] == returned["PhysicalResourceId"]


def test_response_url_answering_500_is_retried_a_bounded_number_of_times(local_aws: LocalAws) -> None:
    refuser = Refuser(500).start()
    try:
        elapsed, returned = _timed_create(local_aws, refuser.url())
    finally:
        refuser.stop()
    assert elapsed < 10, f"the handler took {elapsed:.1f} s against a ResponseURL answering 500"
    assert returned is not None
    assert refuser.attempts == _send_attempts()
    assert 1 < refuser.attempts <= 5


def test_response_url_answering_403_is_not_retried(local_aws: LocalAws) -> None:
    # An expired or wrong pre-signed URL does not get better by retrying.
    refuser = Refuser(403).start()
    try:
        elapsed, _returned = _timed_create(local_aws, refuser.url())
    finally:
        refuser.stop()
    assert elapsed < 10
    assert refuser.attempts == 1
