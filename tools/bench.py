"""make bench: cold start, AWS calls per operation, latency, heal burst, reconcile scaling, memory.

Prints the date and machine, then one markdown table (and a few notes on what the numbers mean).
Call counts come from botocore's before-call event on boto3's default session, so every client
rolekeeper makes is counted (IAM, KMS, DynamoDB, SNS), pages included. AWS is moto in-process
(mock_aws) made AWS-like by tests/fidelity.py, except where a fresh process must reach AWS over
HTTP (memory), which uses tools.local_aws's moto server. Not part of the Lambda artifact.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before anything imports Powertools or rolekeeper: quiet logs, fake credentials, the settings
# template.yaml would give, plus a name pattern for the reconcile's app-bench-N roles.
BENCH_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
    "REGISTRY_TABLE_NAME": "rolekeeper-bench",
    "ALLOWED_SERVICE_NAMES": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
    "ecs.amazonaws.com,autoscaling.amazonaws.com",
    "ALLOWED_MANAGED_POLICY_ARNS": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    "ALLOWED_ROLE_NAMES": "aws-ec2-spot-fleet-tagging-role,AmazonEC2SpotFleetRole,AmazonEC2SpotFleetTaggingRole,ecsInstanceRole,"
    "AWSBatchServiceRole,app-*",
    "HEAL_MODE": "heal",
    "HEAL_RATE_LIMIT": "5",
    "VERIFY_REQUESTS": "false",  # no CloudFormation behind the bench's requests (tools/local_aws.py)
    "LOCAL_RESPONSE_URLS": "true",
    "POWERTOOLS_SERVICE_NAME": "rolekeeper",
    "POWERTOOLS_METRICS_NAMESPACE": "rolekeeper",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
}
os.environ.update(BENCH_ENV)
for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "NOTIFICATION_TOPIC_ARN"):
    os.environ.pop(_name, None)

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
ACCOUNT = "123456789012"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
ECS = "ecsInstanceRole"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
SSM_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"

COLD_RUNS = 10
LATENCY_RUNS = 10
BURST_EVENTS = 50
BURST_WORKERS = 10
RECONCILE_SIZES = (10, 100, 1000)
GAAD_PAGE = 100  # IAM's default MaxItems for GetAccountAuthorizationDetails

# The fewest calls (IAM, KMS, DynamoDB) each operation's semantics allow, written down independently
# of what rolekeeper does today.
MINIMUM: dict[str, tuple[int, int, int]] = {
    # CreateServiceLinkedRole + GetRole (the design waits until IAM returns the new role);
    # one TransactWriteItems writes object and claim (created is known to be true).
    "SLR create (absent)": (2, 0, 1),
    # GetRole (exists; ARN and RoleId for the answer); UpdateItem ALL_NEW (was it created by
    # rolekeeper?) + PutItem claim.
    "SLR create (present)": (1, 0, 2),
    # GetRole of AWSServiceRoleForEC2SpotFleet (its RoleId is part of the grant Name); DescribeKey
    # (customer managed? key ARN) + CreateGrant; one TransactWriteItems (object + claim).
    "Grant create": (1, 2, 1),
    # One TransactWriteItems releases the claim and decrements the object's claim_count (Retain: done).
    "SLR delete (Retain)": (0, 0, 1),
    # Release, then the conditional delete of the object (claims remain: the condition fails). The
    # condition is what makes exactly one of concurrent last Deletes delete the role.
    "SLR delete (Delete, claims remain)": (0, 0, 2),
    # Release, conditional delete of the object (succeeds); DeleteServiceLinkedRole.
    "SLR delete (Delete, last claim)": (1, 0, 2),
    # CreateRole (tags included), GetRole until IAM returns it, AttachRolePolicy,
    # CreateInstanceProfile, AddRoleToInstanceProfile; one TransactWriteItems.
    "ecs-instance create (absent)": (5, 0, 1),
    # ListInstanceProfilesForRole, ListAttachedRolePolicies, ListRolePolicies (others may have added
    # pieces; DeleteRole fails while any remain) + RemoveRoleFromInstanceProfile,
    # DeleteInstanceProfile, DetachRolePolicy, DeleteRole; release, conditional delete of the object.
    "ecs-instance delete (Delete, last claim)": (7, 0, 2),
    # GetRole (missing) + CreateRole, GetRole, AttachRolePolicy, CreateInstanceProfile,
    # AddRoleToInstanceProfile; Query record+claims, one conditional UpdateItem taking the lease and
    # counting the heal, one conditional UpdateItem recording the new RoleId and dropping the lease.
    "Heal: deleted ecsInstanceRole (with profile)": (6, 0, 3),
    # GetRole (is it still rolekeeper's role, or one someone made since under that name?) +
    # ListAttachedRolePolicies (still detached?) + AttachRolePolicy: the event names role and
    # policy, nothing else is checked; DynamoDB as above.
    "Heal: detached policy": (3, 0, 3),
    # GetRole (the boundary and the marker tag come with it) + PutRolePermissionsBoundary.
    "Heal: removed boundary": (2, 0, 3),
    # GetServiceLinkedRoleDeletionStatus (SUCCEEDED) + GetRole (missing) + CreateServiceLinkedRole
    # + GetRole (until IAM returns it); per grant naming it: CreateGrant + RevokeGrant (the stale
    # one). DynamoDB: 3 for the role, the ByGrantee index (keys only) once, and per grant its
    # record and one conditional write. Two grant resources name the role by then.
    "Heal: deleted SLR (task id in the event), 2 grants": (4, 4, 3 + 1 + 2 * 2),
    # As above, GetRole polled (once here) instead of the deletion status.
    "Heal: deleted SLR (no task id), 2 grants": (3, 4, 3 + 1 + 2 * 2),
    # ListGrants by GrantId (really gone?) + CreateGrant; GetRole (grantee's current RoleId for the
    # Name); the grant's record read by its key (key ARN and grant id from the event), lease+count,
    # record.
    "Heal: retired grant": (1, 2, 3),
    # The grant the heal above issued: its record's key still names the first grant id, so the
    # ByGrantId index (keys only) and then the record.
    "Heal: revoked grant (re-issued once before)": (1, 2, 4),
}


# --- output ----------------------------------------------------------------------------------


@dataclass
class Table:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(tuple(cells))

    def render(self) -> str:
        header = ("Measure", "rolekeeper", "Baseline / minimum", "Ratio / excess", "Target", "Result")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Handlers print Powertools logs and EMF metrics to stdout; keep them out of the table."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update(PYTHONPATH=os.pathsep.join((str(ROOT / "src"), str(ROOT))))
    env.update(extra)
    return env


# --- 1. cold start ---------------------------------------------------------------------------

REFERENCE_HANDLER = '''\
"""A handler module as crhelper's README and Powertools' examples write one."""
from aws_lambda_powertools import Logger, Metrics, Tracer
from crhelper import CfnResource

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="x")
helper = CfnResource()


@helper.create
@helper.update
def create(event, context):
    return "physical-id"


@helper.delete
def delete(event, context):
    return None


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    helper(event, context)
'''

TIMED_IMPORT = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"


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
            POWERTOOLS_LOG_LEVEL="ERROR",
        )
        times: dict[str, list[float]] = {name: [] for name in variants}
        # One untimed round warms the file cache; then rounds interleaved, so drift in machine load
        # hits every variant alike.
        for round_ in range(COLD_RUNS + 1):
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
            f"Cold start: import `rolekeeper.handlers.{handler}` (median of {COLD_RUNS})",
            f"{value:.0f} ms",
            f"floor {floor:.0f} ms (boto3 + IAM client); reference {reference:.0f} ms",
            f"{value / floor:.2f}x floor; {value / reference:.2f}x reference",
            "<= 1.5x floor and <= 0.5x reference",
            f"{verdict(value <= 1.5 * floor)} (floor); {verdict(value <= 0.5 * reference)} (reference)",
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


# --- in-process moto with call counting ------------------------------------------------------


@dataclass
class Calls:
    active: bool = False
    made: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, model: Any = None, **_kwargs: Any) -> None:
        if self.active and model is not None:
            with self.lock:
                self.made.append((model.service_model.service_name, model.name))

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[tuple[str, str]]]:
        made: list[tuple[str, str]] = []
        self.made, self.active = made, True
        try:
            yield made
        finally:
            self.active = False


def by_service(made: list[tuple[str, str]]) -> Counter[str]:
    return Counter(service for service, _ in made)


def _page_authorization_details(patcher: Any) -> None:
    """moto returns every role in one GetAccountAuthorizationDetails page (IsTruncated false);
    IAM pages at MaxItems (default 100). Page the roles as IAM does, so pagination is exercised."""
    from moto.core.responses import ActionResult
    from moto.iam import responses as iam_responses

    def paged(self: Any) -> Any:
        filters = self._get_param("Filter", [])
        details = self.backend.get_account_authorization_details(filters)
        size = int(self._get_param("MaxItems") or GAAD_PAGE)
        start = int(self._get_param("Marker") or 0)
        every = list(details["roles"])
        roles = every[start : start + size]
        truncated = start + size < len(every)
        result: dict[str, Any] = {
            "UserDetailList": details["users"] if start == 0 else [],
            "GroupDetailList": details["groups"] if start == 0 else [],
            "RoleDetailList": roles,
            "Policies": details["managed_policies"] if start == 0 else [],
            "IsTruncated": truncated,
        }
        if truncated:
            result["Marker"] = str(start + size)
        return ActionResult(result)

    patcher.setattr(iam_responses.IamResponse, "get_account_authorization_details", paged)


def _untrack_model_instances(patcher: Any) -> None:
    """moto keeps every model object it ever made (BaseModel.__new__ appends it to its class's
    instances_tracked, for the moto server's dashboard), and its TransactWriteItems deep-copies
    every table it touches first (its rollback copy). Each registration's claim is a transaction,
    so registering 1000 roles kept ~2000 copies of a growing table alive: the bench peaked at
    3.2 GB, quadratic in the registry's size. The bench needs no dashboard: stop the tracking."""
    from moto.core.common_models import BaseModel

    def untracked(cls: type, *_args: Any, **_kwargs: Any) -> Any:
        return object.__new__(cls)

    patcher.setattr(BaseModel, "__new__", untracked)


@contextlib.contextmanager
def mocked_aws(calls: Calls) -> Iterator[Any]:
    """moto in-process, AWS-like (fidelity), the registry table, no sleeps, responses recorded."""
    import boto3
    import pytest
    from moto import mock_aws

    from rolekeeper.aws import clients as aws
    from rolekeeper.aws import iam
    from rolekeeper.aws.registry import TABLE_SCHEMA
    from rolekeeper.config import settings
    from rolekeeper.handlers import custom_resource, healer
    from rolekeeper.healing import service as healing
    from tests import fidelity

    fidelity.use_only_the_managed_policies_rolekeeper_needs()  # moto's IAM setup in ms, not seconds
    patcher = pytest.MonkeyPatch()
    tasks = fidelity.DeletionTasks()
    fidelity.install(patcher, tasks)
    _page_authorization_details(patcher)
    _untrack_model_instances(patcher)
    patcher.setattr(iam, "sleep", lambda _s: None)
    patcher.setattr(healing, "sleep", lambda _s: None)
    patcher.setattr(custom_resource.helper, "sender", lambda _url, _body, **_kw: True)
    try:
        with mock_aws():
            boto3.setup_default_session()
            assert boto3.DEFAULT_SESSION is not None
            boto3.DEFAULT_SESSION.events.register("before-call", calls.hook)
            for cached in (aws.client, settings, custom_resource.provisioner, healer.healer):
                cached.cache_clear()
            boto3.client("dynamodb").create_table(
                TableName=os.environ["REGISTRY_TABLE_NAME"], **copy.deepcopy(TABLE_SCHEMA)
            )
            yield tasks
    finally:
        for cached in (aws.client, settings, custom_resource.provisioner, healer.healer):
            cached.cache_clear()
        patcher.undo()


def stack_id(stack: str) -> str:
    return f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/{stack}/{uuid.uuid5(uuid.NAMESPACE_DNS, stack)}"


def cfn(
    event_file: str,
    stack: str,
    props: dict[str, Any] | None = None,
    old_props: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One custom resource request through the real handler (response recorded, not sent)."""
    from rolekeeper.handlers.custom_resource import lambda_handler
    from tools.local_aws import Context

    event = json.loads((EVENTS / event_file).read_text())
    event["StackId"] = stack_id(stack)
    event["RequestId"] = str(uuid.uuid4())
    event["ResourceProperties"].update(props or {})
    if old_props is not None:
        event["OldResourceProperties"] = {**event.get("OldResourceProperties", {}), **old_props}
    event.update(overrides)
    with quiet():
        body = lambda_handler(event, Context())
    assert body is not None and body["Status"] == "SUCCESS", body
    return body


def heal_event(event_file: str, **detail: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / event_file).read_text())
    event["id"] = str(uuid.uuid4())
    event["detail"]["eventID"] = str(uuid.uuid4())
    for key, value in detail.items():
        if isinstance(value, dict) and isinstance(event["detail"].get(key), dict):
            event["detail"][key].update(value)
        else:
            event["detail"][key] = value
    return event


def heal(event: dict[str, Any], *, silent: bool = True) -> dict[str, Any]:
    """One event through the real healer handler. From threads pass silent=False and wrap the
    whole pool in quiet(): redirect_stdout is process-wide, not per thread."""
    from rolekeeper.handlers.healer import lambda_handler
    from tools.local_aws import Context

    context = Context(
        function_name="rolekeeper-HealerFunction",
        invoked_function_arn=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:rolekeeper-HealerFunction",
    )
    with quiet() if silent else contextlib.nullcontext():
        return lambda_handler(copy.deepcopy(event), context)


def delete_ecs_role_by_hand() -> None:
    import boto3

    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    iam.delete_instance_profile(InstanceProfileName=ECS)
    iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    iam.delete_role(RoleName=ECS)


# --- 2. AWS calls per operation --------------------------------------------------------------


def call_counts(table: Table, calls: Calls) -> None:
    import boto3

    measured: dict[str, list[tuple[str, str]]] = {}

    def measure(name: str, action: Callable[[], Any]) -> Any:
        with calls.counting() as made:
            result = action()
        measured[name] = made
        return result

    with mocked_aws(calls):
        spot = measure(
            "SLR create (absent)", lambda: cfn("slr-create.json", "platform", {"OnDelete": "Delete"})
        )
        measure("SLR create (present)", lambda: cfn("slr-create.json", "analytics", {"OnDelete": "Delete"}))
        key_arn = boto3.client("kms").create_key(
            Description="bench", Tags=[{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}]
        )["KeyMetadata"]["Arn"]
        measure("Grant create", lambda: cfn("grant-create.json", "platform", {"KeyId": key_arn}))
        arn = spot["PhysicalResourceId"]
        cfn("slr-create.json", "keeper", {"OnDelete": "Retain"})
        measure(
            "SLR delete (Retain)",
            lambda: cfn("slr-delete.json", "keeper", {"OnDelete": "Retain"}, PhysicalResourceId=arn),
        )
        measure(
            "SLR delete (Delete, claims remain)",
            lambda: cfn("slr-delete.json", "analytics", {"OnDelete": "Delete"}, PhysicalResourceId=arn),
        )
        # The grant's own claim does not hold the role; the platform stack's SLR claim is the last.
        measure(
            "SLR delete (Delete, last claim)",
            lambda: cfn("slr-delete.json", "platform", {"OnDelete": "Delete"}, PhysicalResourceId=arn),
        )
        ecs = measure(
            "ecs-instance create (absent)",
            lambda: cfn("role-ecs-instance-create.json", "platform", {"OnDelete": "Delete"}),
        )
        measure(
            "ecs-instance delete (Delete, last claim)",
            lambda: cfn(
                "role-ecs-instance-delete.json",
                "platform",
                {"OnDelete": "Delete"},
                PhysicalResourceId=ecs["PhysicalResourceId"],
            ),
        )
        measure_heals(measure, key_arn)

    for name, made in measured.items():
        counts = by_service(made)
        got = (counts["iam"], counts["kms"], counts["dynamodb"])
        minimum = MINIMUM[name]
        excess = [g - m for g, m in zip(got, minimum, strict=True)]
        extra = f"; SNS {counts['sns']}" if counts["sns"] else ""
        table.add(
            f"AWS calls: {name}",
            f"IAM {got[0]} / KMS {got[1]} / DynamoDB {got[2]}{extra}",
            f"IAM {minimum[0]} / KMS {minimum[1]} / DynamoDB {minimum[2]}",
            " / ".join(f"{e:+d}" for e in excess),
            "= minimum",
            "PASS" if all(e <= 0 for e in excess) else f"MISS (+{sum(max(e, 0) for e in excess)})",
        )
        sequence = ", ".join(f"{op}" for _service, op in made)
        table.notes.append(f"{name}: {sequence}")


def measure_heals(measure: Callable[[str, Callable[[], Any]], Any], key_arn: str) -> None:
    """Heals: put the objects back under a claim, damage them by hand (not counted), heal."""
    import boto3

    cfn("role-ecs-instance-create.json", "platform", {"OnDelete": "Delete"})
    delete_ecs_role_by_hand()
    result = measure(
        "Heal: deleted ecsInstanceRole (with profile)", lambda: heal(heal_event("heal-delete-role.json"))
    )
    assert result["outcome"] == "healed", result
    boto3.client("iam").detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    result = measure("Heal: detached policy", lambda: heal(heal_event("heal-detach-role-policy.json")))
    assert result["outcome"] == "healed", result
    cfn("slr-create.json", "platform", {"OnDelete": "Delete"})
    grant = cfn("grant-create.json", "platform", {"KeyId": key_arn})
    grant_id = grant["Data"]["GrantId"]
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=grant_id)
    retire = heal_event(
        "heal-retire-grant.json",
        responseElements={"keyId": key_arn},
        additionalEventData={"grantId": grant_id},
        resources=[{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key_arn}],
    )
    result = measure("Heal: retired grant", lambda: heal(retire))
    assert result["outcome"] == "healed", result
    from rolekeeper.aws.registry import Registry
    from rolekeeper.domain.records import grant_key

    reissued = Registry(os.environ["REGISTRY_TABLE_NAME"]).objects.read(
        grant_key(grant["PhysicalResourceId"])
    )
    assert reissued is not None
    boto3.client("kms").revoke_grant(KeyId=key_arn, GrantId=reissued.attrs["grant_id"])
    revoke = heal_event(
        "heal-revoke-grant.json",
        requestParameters={"keyId": key_arn, "grantId": reissued.attrs["grant_id"]},
        resources=[{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key_arn}],
    )
    result = measure("Heal: revoked grant (re-issued once before)", lambda: heal(revoke))
    assert result["outcome"] == "healed", result
    task_id = boto3.client("iam").delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
    deleted = heal_event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task_id})
    result = measure("Heal: deleted SLR (task id in the event), 2 grants", lambda: heal(deleted))
    assert result["outcome"] == "healed", result
    asked = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    boto3.client("iam").delete_service_linked_role(RoleName=SPOT_FLEET)
    deleted = heal_event("heal-delete-service-linked-role.json", eventTime=f"{asked:%Y-%m-%dT%H:%M:%SZ}")
    deleted["detail"].pop("responseElements")
    result = measure("Heal: deleted SLR (no task id), 2 grants", lambda: heal(deleted))
    assert result["outcome"] == "healed", result
    boundary = boto3.client("iam").create_policy(
        PolicyName="app-boundary",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    cfn(
        "role-ec2-application-create.json",
        "platform",
        {"RoleName": "app-bounded", "PermissionsBoundary": boundary},
        LogicalResourceId="BoundedRole",
    )
    boto3.client("iam").delete_role_permissions_boundary(RoleName="app-bounded")
    removed = heal_event(
        "heal-delete-role.json",
        eventName="DeleteRolePermissionsBoundary",
        requestParameters={"roleName": "app-bounded"},
    )
    result = measure("Heal: removed boundary", lambda: heal(removed))
    assert result["outcome"] == "healed", result


# --- 3. delete latency -----------------------------------------------------------------------


def delete_latency(table: Table, calls: Calls) -> None:
    timings: dict[str, list[float]] = {"Delete, last claim": [], "Retain": []}
    with mocked_aws(calls):
        for i in range(LATENCY_RUNS + 1):  # the first round warms clients and moto up, untimed
            for mode, on_delete in (("Delete, last claim", "Delete"), ("Retain", "Retain")):
                stack = f"latency-{on_delete}-{i}"
                arn = cfn("slr-create.json", stack, {"OnDelete": on_delete})["PhysicalResourceId"]
                start = time.perf_counter()
                cfn("slr-delete.json", stack, {"OnDelete": on_delete}, PhysicalResourceId=arn)
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


# --- 4. heal burst ---------------------------------------------------------------------------


def _atomic_dynamodb(patcher: Any) -> None:
    """Each AWS API call is atomic (DynamoDB's conditional writes are what the heal lease relies
    on); moto in threads is not, and its reads can even see a table mid-write. Serialise moto's
    actions, so the burst measures rolekeeper (whose own code still interleaves between calls)."""
    from moto.core.responses import BaseResponse

    lock = threading.RLock()
    original = BaseResponse.call_action

    def call_action(self: Any) -> Any:
        with lock:
            return original(self)

    patcher.setattr(BaseResponse, "call_action", call_action)


def heal_burst(table: Table, calls: Calls) -> None:
    import pytest

    names = ("RemoveRoleFromInstanceProfile", "DeleteInstanceProfile", "DetachRolePolicy", "DeleteRole")
    patcher = pytest.MonkeyPatch()
    try:
        with mocked_aws(calls):
            _atomic_dynamodb(patcher)
            cfn("role-ecs-instance-create.json", "platform", {"OnDelete": "Delete"})
            delete_ecs_role_by_hand()
            events = []
            for i in range(BURST_EVENTS):
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
                with ThreadPoolExecutor(max_workers=BURST_WORKERS) as pool:
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
        f"Heal burst: {BURST_EVENTS} events for one deleted `ecsInstanceRole` ({BURST_WORKERS} at a time)",
        f"CreateRole x{creates}; {elapsed:.2f} s wall",
        f"outcomes: {summary}; role back: {'yes' if healed else 'no'}",
        f"{len(made)} AWS calls in all ({len(made) / BURST_EVENTS:.1f} per event)",
        "CreateRole = 1",
        verdict(creates == 1 and healed),
    )


# --- 5. scheduled reconcile ------------------------------------------------------------------


def reconcile(table: Table, calls: Calls) -> None:
    from rolekeeper.handlers.custom_resource import provisioner
    from rolekeeper.provisioning.requests import Request

    scheduled = json.loads((EVENTS / "heal-scheduled.json").read_text())
    rows: list[tuple[int, int, int, int, float, dict[str, Any]]] = []
    with mocked_aws(calls):
        registered = 0
        for size in RECONCILE_SIZES:
            with quiet():
                while registered < size:
                    provisioner().converge(
                        Request(
                            request_type="Create",
                            resource_type="Custom::ServiceRole",
                            stack_id=stack_id(f"bench-{registered}"),
                            logical_id="AppRole",
                            properties={
                                "Blueprint": "ec2-application",
                                "RoleName": f"app-bench-{registered}",
                                "ManagedPolicyArns": [SSM_POLICY],
                                "OnDelete": "Delete",
                            },
                        )
                    )
                    registered += 1
            with calls.counting() as made:
                start = time.perf_counter()
                result = heal(scheduled)
                elapsed = time.perf_counter() - start
            counts = by_service(made)
            pages = sum(1 for _s, op in made if op == "GetAccountAuthorizationDetails")
            rows.append((size, counts["iam"], counts["dynamodb"], pages, elapsed, result))
    for size, iam_calls, db_calls, pages, elapsed, result in rows:
        healthy = result.get("healthy", 0)
        expected_pages = math.ceil((size + 0) / GAAD_PAGE)
        table.add(
            f"Scheduled reconcile: {size} registered roles",
            f"IAM {iam_calls} (GetAccountAuthorizationDetails pages {pages}) / DynamoDB {db_calls}; "
            f"{elapsed:.2f} s",
            f"{size} roles: {healthy} healthy; pages at {GAAD_PAGE} roles: >= {expected_pages}",
            f"per role: IAM {iam_calls / size:.2f}, DynamoDB {db_calls / size:.2f}",
            "IAM in pages, no per-role IAM calls",
            verdict(iam_calls == pages and pages >= expected_pages and healthy == size),
        )
    (n1, i1, d1, _p1, t1, _r1), (n2, i2, d2, _p2, t2, _r2) = rows[-2], rows[-1]
    growth = n2 / n1
    table.add(
        f"Scheduled reconcile: growth {n1} -> {n2} roles (x{growth:.0f})",
        f"IAM x{i2 / i1:.1f}, DynamoDB x{d2 / d1:.1f}, wall x{t2 / t1:.1f}",
        f"linear would be x{growth:.0f}",
        "-",
        "calls grow no faster than linearly",
        verdict(i2 / i1 <= growth * 1.05 and d2 / d1 <= growth * 1.05),
    )


# --- 6. memory -------------------------------------------------------------------------------

MEMORY_CHILD = r"""
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
    from tools.local_aws import Receiver, embedded_aws

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = dict(os.environ)
    receiver = Receiver().start()
    results = {}
    try:
        with embedded_aws():
            env = subprocess_env(AWS_ENDPOINT_URL=os.environ["AWS_ENDPOINT_URL"])
            env["REGISTRY_TABLE_NAME"] = os.environ["REGISTRY_TABLE_NAME"]
            for mode, stack in (("rss", "memory-rss"), ("trace", "memory-trace")):
                event = json.loads((EVENTS / "slr-create.json").read_text())
                request_id = str(uuid.uuid4())
                event.update(
                    StackId=stack_id(stack), RequestId=request_id, ResponseURL=receiver.url(request_id)
                )
                out = subprocess.run(
                    [sys.executable, "-c", MEMORY_CHILD, json.dumps(event), mode],
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
        os.environ.clear()
        os.environ.update(saved)
    rss_mb = results["rss"]["rss_kb"] / 1024
    table.notes.append(
        f"Memory: ru_maxrss of the same child was {results['rss']['maxrss_kb'] / 1024:.0f} MB, the bench "
        "parent's high-water mark carried across fork+exec by Linux, hence VmHWM. Lambda's CPU share "
        "grows with MemorySize, so 256 MB (template.yaml) also buys a faster cold start than 128 MB."
    )
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


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    began = time.perf_counter()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    table = Table()
    calls = Calls()
    cold_start(table)
    call_counts(table, calls)
    delete_latency(table, calls)
    heal_burst(table, calls)
    reconcile(table, calls)
    memory(table)
    cpu = platform.processor() or platform.machine()
    print(f"rolekeeper bench, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()} ({sys.executable})\n"
    )
    print(table.render())
    print("\nNotes:")
    print(
        "- AWS is moto: latencies exclude real AWS round trips (~20-100 ms per IAM call); call counts are exact."
    )
    print(
        "- moto returns GetAccountAuthorizationDetails in one page; the bench pages it at "
        f"{GAAD_PAGE} roles as IAM does (MaxItems default), so the page counts above are IAM-like."
    )
    print(
        "- Cold start: python -c timing the import only, Lambda-like env (LAMBDA_TASK_ROOT set, so the "
        "reference's Tracer is active); the Lambda runtime is python3.13 on arm64, this is "
        f"{platform.python_version()} on {platform.machine()}."
    )
    print(
        "- Reconcile wall time grows faster than the calls because moto's DynamoDB Query scans the "
        "whole table (O(table) per call) and rolekeeper makes one Query per registered object "
        "(Healer.heal_role re-reads the record that reconcile_all already scanned); DynamoDB's own "
        "Query is O(1) per key, so against AWS the wall time is ~linear in the calls."
    )
    for note in table.notes:
        if not note.startswith("Memory:"):
            continue
        print(f"- {note}")
    print("- Calls made, in order:")
    for note in table.notes:
        if not note.startswith("Memory:"):
            print(f"  - {note}")
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    peak = int(status["VmHWM"].split()[0]) / 1024 if "VmHWM" in status else float("nan")
    print(
        f"\n(bench took {time.perf_counter() - began:.0f} s; the bench process's own peak RSS: {peak:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
