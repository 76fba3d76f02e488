"""Fault matrix: every AWS operation the provisioner and the healer make, under four faults.

Faults are injected where botocore sends the request (tests/faults.py), so the client's standard
retry mode is what meets them: throttling, a 503 and a read timeout that happen once are retried
and the request succeeds; the same faults for good, and AccessDenied (never retried), end in one
FAILED response that names the operation and the error, with nothing half-made left behind. The
healer raises on a fault (Lambda's async retry and the failure queue take over) and never on an
event it drops or ignores.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Stack
from tests.faults import DENIED, FAULTS, SERVICE, TIMEOUT, TRANSIENT, UNAVAILABLE, Faults, error_code
from tools.devkit.clock import CLOCK
from tools.devkit.embedded import fast_aws, plain
from tools.devkit.environment import ACCOUNT, OPT_IN
from tools.devkit.events import EVENTS, healer_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

ECS = "ecsInstanceRole"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
TAGGING = "aws-ec2-spot-fleet-tagging-role"
BOUNDARY = "arn:aws:iam::aws:policy/PowerUserAccess"
OLD_DESCRIPTION = "Spot Fleet service-linked role (rolekeeper)"
NEW_DESCRIPTION = "Spot Fleet launches instances for the batch platform"
HEALER_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:rolekeeper-HealerFunction"


REGISTRY = "rolekeeper-test-registry"


event = healer_event


# --- the test environment -----------------------------------------------------------------------


@dataclass
class Env:
    stack: Stack
    sent: Sent
    faults: Faults
    heal: Callable[[Any], dict[str, Any]]
    iam: Any
    kms: Any
    dynamodb: Any
    key_arn: str = ""
    memo: dict[str, Any] = field(default_factory=dict)

    # reading AWS back with plain clients (not rolekeeper's: not faulted, not counted)
    def role(self, name: str) -> dict[str, Any] | None:
        try:
            return self.iam.get_role(RoleName=name)["Role"]
        except self.iam.exceptions.NoSuchEntityException:
            return None

    def attached(self, name: str) -> set[str]:
        found = self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        return {p["PolicyArn"] for p in found}

    def profile_roles(self, name: str) -> list[str] | None:
        try:
            profile = self.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except self.iam.exceptions.NoSuchEntityException:
            return None
        return [r["RoleName"] for r in profile["Roles"]]

    def items(self) -> list[dict[str, Any]]:
        """Objects and claims (request markers are bookkeeping that expires on its own)."""
        return [i for i in self.dynamodb.scan(TableName=REGISTRY)["Items"] if i["sk"]["S"] != "REQUEST"]

    def claims(self, prefix: str = "") -> list[tuple[str, str]]:
        return sorted(
            (i["pk"]["S"], i["sk"]["S"])
            for i in self.items()
            if i["sk"]["S"].startswith("CLAIM#") and i["pk"]["S"].startswith(prefix)
        )

    def grants(self) -> list[dict[str, Any]]:
        return self.kms.list_grants(KeyId=self.key_arn)["Grants"]


@pytest.fixture
def env(stack: Stack, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """conftest's aws/stack/sent (moto cheap enough for ~350 tests: tools/devkit/embedded.fast_aws), the
    healer as EventBridge calls it (no sleeps, no SNS), and faults hooked into rolekeeper's clients."""
    from rolekeeper.handlers import healer
    from rolekeeper.healing import service as healing

    def heal(payload: Any) -> dict[str, Any]:
        context = LambdaContext(function_name="rolekeeper-HealerFunction", invoked_function_arn=HEALER_ARN)
        return healer.lambda_handler(copy.deepcopy(payload), context)  # type: ignore[arg-type]

    with fast_aws(monkeypatch):
        rebuild_handlers()
        monkeypatch.setattr(healing, "notify", lambda *_a: None)
        yield Env(
            stack=stack,
            sent=sent,
            faults=Faults().install(monkeypatch),
            heal=heal,
            iam=plain("iam"),
            kms=plain("kms"),
            dynamodb=plain("dynamodb"),
        )
        rebuild_handlers()


# --- what each operation is met in ----------------------------------------------------------------


def ok(response: dict[str, Any]) -> None:
    assert response["Status"] == "SUCCESS", response["Reason"]


def ecs_complete(env: Env) -> None:
    assert env.role(ECS) is not None, "role missing"
    assert ECS_POLICY in env.attached(ECS), "blueprint policy not attached"
    assert env.profile_roles(ECS) == [ECS], "instance profile does not hold the role"


def delete_ecs_by_hand(env: Env) -> None:
    env.iam.remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)
    env.iam.delete_instance_profile(InstanceProfileName=ECS)
    env.iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)
    env.iam.delete_role(RoleName=ECS)


def make_key(env: Env) -> None:
    env.key_arn = env.kms.create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[Env], None]
    act: Callable[[Env], Any]
    ok: Callable[[Env, Any], None]
    after_failure: Callable[[Env], None] = lambda _env: None


def _nothing(_env: Env) -> None:
    pass


# provisioner -------------------------------------------------------------------------------------


def _create_ecs_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    assert response["Data"]["Created"] == "true"
    ecs_complete(env)
    assert len(env.claims("ROLE#ecsinstancerole")) == 1


def _create_ecs_failed(env: Env) -> None:
    # Nothing half-made: the fault came before the role existed, or the rollback removed it all.
    assert env.role(ECS) is None, "a half-made role was left behind"
    assert env.profile_roles(ECS) is None, "a half-made instance profile was left behind"
    assert env.claims() == [], "a claim was recorded for a failed Create"


def _create_slr_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    assert env.role(SPOT_FLEET) is not None
    assert len(env.claims("ROLE#awsservicerole")) == 1


def _create_slr_failed(env: Env) -> None:
    assert env.role(SPOT_FLEET) is None
    assert env.claims() == []


def _update_slr_setup(env: Env) -> None:
    ok(env.stack.send("slr-create.json"))


def _update_slr_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    role = env.role(SPOT_FLEET)
    assert role is not None and role["Description"] == NEW_DESCRIPTION


def _update_slr_failed(env: Env) -> None:
    # The description may already be the new one (CloudFormation's rollback Update puts it back);
    # the role and the stack's claim must still be there.
    role = env.role(SPOT_FLEET)
    assert role is not None and role["Description"] in (OLD_DESCRIPTION, NEW_DESCRIPTION)
    assert len(env.claims()) == 1, "the failed Update must not drop the stack's claim"


def _delete_slr_setup(env: Env) -> None:
    created = env.stack.send("slr-create.json", props={"OnDelete": "Delete"})
    ok(created)
    env.memo["physical_id"] = created["PhysicalResourceId"]


def _delete_slr_act(env: Env) -> dict[str, Any]:
    return env.stack.send(
        "slr-delete.json", props={"OnDelete": "Delete"}, PhysicalResourceId=env.memo["physical_id"]
    )


def _delete_slr_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    assert env.role(SPOT_FLEET) is None
    # The deletion task finished at once here: nothing is left to wait for.
    assert env.items() == []


def _adopt_setup(env: Env) -> None:
    # As a console first-run left it: trusts EC2 (and ECS), nothing attached, no profile, no tags.
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["ec2.amazonaws.com", "ecs.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    env.iam.create_role(RoleName=ECS, AssumeRolePolicyDocument=json.dumps(trust))
    env.memo["role_id"] = env.role(ECS)["RoleId"]  # type: ignore[index]


def _adopt_act(env: Env) -> dict[str, Any]:
    return env.stack.send("role-ecs-instance-create.json", drop=("Tags",))


def _adopt_ok(env: Env, response: dict[str, Any]) -> None:
    # Adoption only adds what the blueprint needs: trust, boundary and tags stay the owner's.
    ok(response)
    assert response["Data"]["Created"] == "false"
    ecs_complete(env)
    role = env.role(ECS)
    assert role is not None
    assert role["RoleId"] == env.memo["role_id"]
    assert "PermissionsBoundary" not in role
    assert env.iam.list_role_tags(RoleName=ECS)["Tags"] == []
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"]["Service"] == ["ec2.amazonaws.com", "ecs.amazonaws.com"]
    assert len(env.claims()) == 1


def _adopt_failed(env: Env) -> None:
    role = env.role(ECS)
    assert role is not None and role["RoleId"] == env.memo["role_id"], "an adopted role was deleted"
    assert env.claims() == []


def _update_ecs_setup(env: Env) -> None:
    created = env.stack.send("role-ecs-instance-create.json", drop=("Tags",))
    ok(created)
    env.memo["physical_id"] = created["PhysicalResourceId"]


def _update_ecs_act(env: Env) -> dict[str, Any]:
    return env.stack.send(
        "role-ecs-instance-create.json",
        props={"PermissionsBoundary": BOUNDARY, "Tags": [{"Key": "team", "Value": "platform"}]},
        old_props={},
        RequestType="Update",
        PhysicalResourceId=env.memo["physical_id"],
    )


def _update_ecs_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    ecs_complete(env)
    role = env.role(ECS)
    assert role is not None and role["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY
    tags = {t["Key"]: t["Value"] for t in env.iam.list_role_tags(RoleName=ECS)["Tags"]}
    assert tags == {"team": "platform", "rolekeeper:managed": "true"}
    assert len(env.claims()) == 1


def _update_ecs_failed(env: Env) -> None:
    # Part of the change may be in place (CloudFormation's rollback Update puts it back); the role
    # and the stack's claim must still be there.
    ecs_complete(env)
    assert len(env.claims()) == 1, "the failed Update must not drop the stack's claim"


def _update_ecs_remove_setup(env: Env) -> None:
    created = env.stack.send(
        "role-ecs-instance-create.json",
        props={"PermissionsBoundary": BOUNDARY, "Tags": [{"Key": "team", "Value": "platform"}]},
    )
    ok(created)
    env.memo["physical_id"] = created["PhysicalResourceId"]


def _update_ecs_remove_act(env: Env) -> dict[str, Any]:
    return env.stack.send(
        "role-ecs-instance-create.json",
        old_props={"PermissionsBoundary": BOUNDARY, "Tags": [{"Key": "team", "Value": "platform"}]},
        RequestType="Update",
        PhysicalResourceId=env.memo["physical_id"],
    )


def _update_ecs_remove_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    ecs_complete(env)
    role = env.role(ECS)
    assert role is not None and "PermissionsBoundary" not in role
    tags = {t["Key"]: t["Value"] for t in env.iam.list_role_tags(RoleName=ECS)["Tags"]}
    assert tags == {"rolekeeper:managed": "true"}
    assert len(env.claims()) == 1


def _delete_ecs_inline_setup(env: Env) -> None:
    _delete_ecs_setup(env)
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}],
    }
    env.iam.put_role_policy(RoleName=ECS, PolicyName="added-by-hand", PolicyDocument=json.dumps(document))


def _delete_ecs_setup(env: Env) -> None:
    created = env.stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"})
    ok(created)
    env.memo["physical_id"] = created["PhysicalResourceId"]


def _delete_ecs_act(env: Env) -> dict[str, Any]:
    return env.stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=env.memo["physical_id"],
    )


def _delete_ecs_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    assert env.role(ECS) is None
    assert env.profile_roles(ECS) is None
    assert env.items() == []


def _grant_setup(env: Env) -> None:
    ok(env.stack.send("slr-create.json"))
    make_key(env)


def _grant_act(env: Env) -> dict[str, Any]:
    return env.stack.send("grant-create.json", props={"KeyId": env.key_arn})


def _grant_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    (grant,) = env.grants()
    assert grant["GrantId"] == response["Data"]["GrantId"]
    assert len(env.claims("GRANT#")) == 1


def _grant_failed(env: Env) -> None:
    assert env.grants() == [], "a grant was left for a failed Create"
    assert env.claims("GRANT#") == []


def _delete_grant_setup(env: Env) -> None:
    _grant_setup(env)
    created = _grant_act(env)
    ok(created)
    env.memo["physical_id"] = created["PhysicalResourceId"]


def _delete_grant_act(env: Env) -> dict[str, Any]:
    return env.stack.send(
        "grant-delete.json", props={"KeyId": env.key_arn}, PhysicalResourceId=env.memo["physical_id"]
    )


def _delete_grant_ok(env: Env, response: dict[str, Any]) -> None:
    ok(response)
    assert env.grants() == []
    assert [i for i in env.items() if i["pk"]["S"].startswith("GRANT#")] == []


PROVISIONER_SCENARIOS: dict[str, Scenario] = {
    "create-ecs": Scenario(
        _nothing,
        lambda env: env.stack.send("role-ecs-instance-create.json"),
        _create_ecs_ok,
        _create_ecs_failed,
    ),
    "create-slr": Scenario(
        _nothing, lambda env: env.stack.send("slr-create.json"), _create_slr_ok, _create_slr_failed
    ),
    "update-slr": Scenario(
        _update_slr_setup, lambda env: env.stack.send("slr-update.json"), _update_slr_ok, _update_slr_failed
    ),
    "delete-slr": Scenario(_delete_slr_setup, _delete_slr_act, _delete_slr_ok),
    "adopt-ecs": Scenario(_adopt_setup, _adopt_act, _adopt_ok, _adopt_failed),
    "update-ecs": Scenario(_update_ecs_setup, _update_ecs_act, _update_ecs_ok, _update_ecs_failed),
    "update-ecs-remove": Scenario(
        _update_ecs_remove_setup, _update_ecs_remove_act, _update_ecs_remove_ok, _update_ecs_failed
    ),
    "delete-ecs": Scenario(_delete_ecs_setup, _delete_ecs_act, _delete_ecs_ok),
    "delete-ecs-inline": Scenario(_delete_ecs_inline_setup, _delete_ecs_act, _delete_ecs_ok),
    "create-grant": Scenario(_grant_setup, _grant_act, _grant_ok, _grant_failed),
    "delete-grant": Scenario(_delete_grant_setup, _delete_grant_act, _delete_grant_ok),
}

PROVISIONER_OPERATIONS: list[tuple[str, str]] = [
    ("GetRole", "create-ecs"),
    ("CreateRole", "create-ecs"),
    ("AttachRolePolicy", "create-ecs"),
    ("CreateInstanceProfile", "create-ecs"),
    ("AddRoleToInstanceProfile", "create-ecs"),
    ("TransactWriteItems", "create-ecs"),  # the object with its claim (and the claim count)
    ("CreateServiceLinkedRole", "create-slr"),
    ("UpdateRole", "update-slr"),
    ("TransactWriteItems", "update-slr"),  # an existing claim's Heal/OnDelete refreshed
    ("DeleteServiceLinkedRole", "delete-slr"),
    ("ListAttachedRolePolicies", "adopt-ecs"),
    ("GetInstanceProfile", "adopt-ecs"),
    ("TagRole", "update-ecs"),
    ("PutRolePermissionsBoundary", "update-ecs"),
    ("UntagRole", "update-ecs-remove"),
    ("DeleteRolePermissionsBoundary", "update-ecs-remove"),
    ("ListInstanceProfilesForRole", "delete-ecs"),
    ("RemoveRoleFromInstanceProfile", "delete-ecs"),
    ("DeleteInstanceProfile", "delete-ecs"),
    ("DetachRolePolicy", "delete-ecs"),
    ("ListRolePolicies", "delete-ecs"),
    ("DeleteRole", "delete-ecs"),
    ("DeleteRolePolicy", "delete-ecs-inline"),
    ("TransactWriteItems", "delete-ecs"),  # the release
    ("UpdateItem", "delete-ecs"),  # the object taken for deletion (state deleting)
    ("DeleteItem", "delete-ecs"),  # the object forgotten once the role is gone
    ("DescribeKey", "create-grant"),
    ("ListResourceTags", "create-grant"),
    ("CreateGrant", "create-grant"),
    ("RevokeGrant", "delete-grant"),
    ("Query", "delete-grant"),
]

# What takes away happens in a request's second phase, once CloudFormation accepted its answer
# (provisioning/intents.py): a fault there cannot change the answer, which is out already; the
# change stays pending, and the schedule settles it once the fault is gone.
SECOND_PHASE: frozenset[tuple[str, str]] = frozenset(
    {
        ("DeleteServiceLinkedRole", "delete-slr"),
        ("UntagRole", "update-ecs-remove"),
        ("DeleteRolePermissionsBoundary", "update-ecs-remove"),
        ("ListInstanceProfilesForRole", "delete-ecs"),
        ("RemoveRoleFromInstanceProfile", "delete-ecs"),
        ("DeleteInstanceProfile", "delete-ecs"),
        ("DetachRolePolicy", "delete-ecs"),
        ("ListRolePolicies", "delete-ecs"),
        ("DeleteRole", "delete-ecs"),
        ("DeleteRolePolicy", "delete-ecs-inline"),
        ("UpdateItem", "delete-ecs"),
        ("DeleteItem", "delete-ecs"),
        ("RevokeGrant", "delete-grant"),
    }
)


def settle_on_schedule(env: Env) -> None:
    """The provisioner's schedule, after the invocations' deadlines: what they left pending."""
    from rolekeeper.handlers.custom_resource import lambda_handler

    CLOCK[0].offset += 3600
    event = {
        "id": "s1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-07T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {},
        "version": "0",
    }
    assert lambda_handler(event, LambdaContext())["outcome"] == "settled"


# healer ------------------------------------------------------------------------------------------


def _heal_ecs_deleted_setup(env: Env) -> None:
    ok(env.stack.send("role-ecs-instance-create.json"))
    delete_ecs_by_hand(env)


def _heal_ecs_detached_setup(env: Env) -> None:
    ok(env.stack.send("role-ecs-instance-create.json"))
    env.iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)


def _heal_ecs_profile_setup(env: Env) -> None:
    ok(env.stack.send("role-ecs-instance-create.json"))
    env.iam.remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)


def _healed_ecs(env: Env, result: dict[str, Any]) -> None:
    assert result["outcome"] in ("healed", "healthy"), result
    ecs_complete(env)


def _heal_trust_setup(env: Env) -> None:
    ok(env.stack.send("role-spot-fleet-tagging-create.json"))
    damaged = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    env.iam.update_assume_role_policy(RoleName=TAGGING, PolicyDocument=json.dumps(damaged))


def _healed_trust(env: Env, result: dict[str, Any]) -> None:
    assert result["outcome"] in ("healed", "healthy"), result
    role = env.role(TAGGING)
    assert role is not None
    services = [s["Principal"].get("Service") for s in role["AssumeRolePolicyDocument"]["Statement"]]
    assert "spotfleet.amazonaws.com" in services, services


def _heal_slr_setup(env: Env) -> None:
    slr = env.stack.send("slr-create.json")
    ok(slr)
    make_key(env)
    ok(env.stack.send("grant-create.json", props={"KeyId": env.key_arn}))
    env.memo["old_role_id"] = slr["Data"]["RoleId"]
    env.memo["task"] = env.iam.delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]


def _heal_slr_act(env: Env) -> dict[str, Any]:
    return env.heal(
        event("heal-delete-service-linked-role.json", responseElements={"deletionTaskId": env.memo["task"]})
    )


def _healed_slr(env: Env, result: dict[str, Any]) -> None:
    assert result["outcome"] in ("healed", "healthy"), result
    role = env.role(SPOT_FLEET)
    assert role is not None, "service-linked role not recreated"
    assert role["RoleId"] != env.memo["old_role_id"]
    grants = env.grants()
    assert [role["RoleId"] in g["Name"] for g in grants] == [True], (
        "exactly one grant, naming the recreated role, should remain: "
        + ", ".join(g["Name"].rsplit("-", 1)[-1] for g in grants)
    )


def _reconcile_grant_setup(env: Env) -> None:
    ok(env.stack.send("slr-create.json"))
    make_key(env)
    grant = env.stack.send("grant-create.json", props={"KeyId": env.key_arn})
    ok(grant)
    env.kms.revoke_grant(KeyId=env.key_arn, GrantId=grant["Data"]["GrantId"])


def _reconcile(env: Env) -> dict[str, Any]:
    return env.heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))


def _reconciled_role(env: Env, result: dict[str, Any]) -> None:
    assert result["outcome"] == "reconciled", result
    ecs_complete(env)


def _reconciled_grant(env: Env, result: dict[str, Any]) -> None:
    assert result["outcome"] == "reconciled", result
    assert len(env.grants()) == 1


HEALER_SCENARIOS: dict[str, Scenario] = {
    "heal-ecs-deleted": Scenario(
        _heal_ecs_deleted_setup, lambda env: env.heal(event("heal-delete-role.json")), _healed_ecs
    ),
    "heal-ecs-detached": Scenario(
        _heal_ecs_detached_setup, lambda env: env.heal(event("heal-detach-role-policy.json")), _healed_ecs
    ),
    # A DetachRolePolicy heal checks the policies only; this one lists the role's profiles.
    "heal-ecs-profile": Scenario(
        _heal_ecs_profile_setup,
        lambda env: env.heal(event("heal-remove-role-from-instance-profile.json")),
        _healed_ecs,
    ),
    "heal-trust": Scenario(
        _heal_trust_setup, lambda env: env.heal(event("heal-update-assume-role-policy.json")), _healed_trust
    ),
    "heal-slr-deleted": Scenario(_heal_slr_setup, _heal_slr_act, _healed_slr),
    "reconcile-role": Scenario(_heal_ecs_deleted_setup, _reconcile, _reconciled_role),
    "reconcile-grant": Scenario(_reconcile_grant_setup, _reconcile, _reconciled_grant),
}

HEALER_OPERATIONS: list[tuple[str, str]] = [
    ("Query", "heal-ecs-deleted"),
    ("GetRole", "heal-ecs-deleted"),
    ("UpdateItem", "heal-ecs-deleted"),
    ("CreateRole", "heal-ecs-deleted"),
    ("AttachRolePolicy", "heal-ecs-deleted"),
    ("CreateInstanceProfile", "heal-ecs-deleted"),
    ("AddRoleToInstanceProfile", "heal-ecs-deleted"),
    ("ListInstanceProfilesForRole", "heal-ecs-profile"),
    ("ListAttachedRolePolicies", "heal-ecs-detached"),
    ("UpdateAssumeRolePolicy", "heal-trust"),
    ("GetServiceLinkedRoleDeletionStatus", "heal-slr-deleted"),
    ("CreateServiceLinkedRole", "heal-slr-deleted"),
    ("CreateGrant", "heal-slr-deleted"),
    ("RevokeGrant", "heal-slr-deleted"),
    ("Scan", "reconcile-role"),
    ("GetAccountAuthorizationDetails", "reconcile-role"),
    ("ListGrants", "reconcile-grant"),
]


def test_the_matrix_covers_every_operation():
    covered = {op for op, _ in PROVISIONER_OPERATIONS} | {op for op, _ in HEALER_OPERATIONS}
    assert covered == set(SERVICE)


def matrix(cases: list[tuple[str, str]], faults: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(operation, scenario, fault, id=f"{scenario}:{operation}:{fault}")
        for operation, scenario in cases
        for fault in faults
    ]


# --- what the attempts must show ----------------------------------------------------------------


def assert_retried_once(faults: Faults, operation: str) -> None:
    injected = faults.injected(operation)
    assert len(injected) == 1, f"{operation}: the fault was not met exactly once ({len(injected)})"
    first = injected[0]
    assert first.attempt == 1
    following = faults.attempts[faults.attempts.index(first) + 1]
    assert (following.operation, following.attempt, following.injected) == (operation, 2, None), (
        "botocore should have retried the same call at once"
    )
    assert faults.backoff, "botocore should have backed off before retrying"


def assert_persistent_attempts(faults: Faults, operation: str, fault: str) -> None:
    calls = faults.calls(operation)
    assert calls, f"{operation} was never called: the matrix entry tests nothing"
    assert all(a.injected for a in calls)
    if fault == DENIED:
        assert {a.attempt for a in calls} == {1}, "AccessDenied must not be retried"
    else:
        most = calls[0].max_attempts
        assert [a.attempt for a in calls[:most]] == list(range(1, most + 1)), (
            f"botocore should have made all {most} attempts: {[a.attempt for a in calls]}"
        )


def assert_reason(response: dict[str, Any], operation: str, fault: str) -> None:
    reason = response["Reason"]
    assert reason, "a FAILED response needs a Reason"
    assert len(reason) <= 256, len(reason)
    assert operation in reason, f"Reason does not name {operation}: {reason!r}"
    if fault == TIMEOUT:
        assert "timeout" in reason.lower() or "timed out" in reason.lower(), reason
    else:
        assert error_code(operation, fault) in reason, reason


# --- provisioner --------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "scenario", "fault"), matrix(PROVISIONER_OPERATIONS, TRANSIENT))
def test_provisioner_transient_fault_once_is_retried_and_succeeds(env, operation, scenario, fault):
    case = PROVISIONER_SCENARIOS[scenario]
    case.setup(env)
    env.faults.forget()
    env.faults.arm(operation, fault, times=1)
    response = case.act(env)  # Stack.send: exactly one response
    assert_retried_once(env.faults, operation)
    case.ok(env, response)


@pytest.mark.parametrize(("operation", "scenario", "fault"), matrix(PROVISIONER_OPERATIONS, FAULTS))
def test_provisioner_persistent_fault_answers_one_failed_and_leaves_nothing_half_made(
    env, operation, scenario, fault
):
    case = PROVISIONER_SCENARIOS[scenario]
    case.setup(env)
    env.faults.forget()
    env.faults.arm(operation, fault)
    response = case.act(env)  # Stack.send: exactly one response
    env.faults.disarm()
    assert_persistent_attempts(env.faults, operation, fault)
    if (operation, scenario) in SECOND_PHASE:
        # The answer went out before the change that met the fault; the schedule finishes it.
        assert response["Status"] == "SUCCESS", response
        settle_on_schedule(env)
        case.ok(env, response)
        return
    assert response["Status"] == "FAILED", response
    assert response["Data"] == {}
    case.after_failure(env)
    assert_reason(response, operation, fault)


# A failed Create leaves nothing (checked above), so repeating it is the transient test again; these
# are the requests whose failure leaves state that the repeated request must finish from.
LEAVES_STATE = (
    "update-slr",
    "delete-slr",
    "adopt-ecs",
    "update-ecs",
    "update-ecs-remove",
    "delete-ecs",
    "delete-ecs-inline",
    "delete-grant",
)


@pytest.mark.parametrize(
    ("operation", "scenario"),
    [pytest.param(op, sc, id=f"{sc}:{op}") for op, sc in PROVISIONER_OPERATIONS if sc in LEAVES_STATE],
)
def test_provisioner_request_repeated_after_the_fault_clears_reaches_the_end_state(env, operation, scenario):
    """CloudFormation's retry: Delete again after DELETE_FAILED, Update again, a redeploy."""
    case = PROVISIONER_SCENARIOS[scenario]
    case.setup(env)
    with env.faults.only(operation, DENIED):
        first = case.act(env)
    if (operation, scenario) in SECOND_PHASE:
        assert first["Status"] == "SUCCESS"  # CloudFormation does not repeat it: the schedule settles it
        settle_on_schedule(env)
        case.ok(env, first)
        return
    assert first["Status"] == "FAILED"
    case.ok(env, case.act(env))


# --- healer -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "scenario", "fault"), matrix(HEALER_OPERATIONS, TRANSIENT))
def test_healer_transient_fault_once_is_retried_and_heals(env, operation, scenario, fault):
    case = HEALER_SCENARIOS[scenario]
    case.setup(env)
    env.faults.forget()
    env.faults.arm(operation, fault, times=1)
    result = case.act(env)
    assert_retried_once(env.faults, operation)
    case.ok(env, result)


@pytest.mark.parametrize(("operation", "scenario", "fault"), matrix(HEALER_OPERATIONS, FAULTS))
def test_healer_persistent_fault_raises_for_lambdas_retry(env, operation, scenario, fault):
    case = HEALER_SCENARIOS[scenario]
    case.setup(env)
    env.faults.forget()
    env.faults.arm(operation, fault)
    with pytest.raises(Exception):  # noqa: B017 - whatever it is, it must reach Lambda
        case.act(env)
    env.faults.disarm()
    assert_persistent_attempts(env.faults, operation, fault)


@pytest.mark.parametrize(
    ("operation", "scenario"), [pytest.param(op, sc, id=f"{sc}:{op}") for op, sc in HEALER_OPERATIONS]
)
def test_healer_redelivery_after_the_fault_clears_completes_the_heal(env, operation, scenario):
    """Lambda's async retry delivers the same event again once AWS answers."""
    case = HEALER_SCENARIOS[scenario]
    case.setup(env)
    with env.faults.only(operation, UNAVAILABLE), pytest.raises(Exception):  # noqa: B017
        case.act(env)
    case.ok(env, case.act(env))


ALL_IAM_AND_KMS = [op for op, service in SERVICE.items() if service in ("iam", "kms")]


@pytest.mark.parametrize("fault", FAULTS)
def test_healer_never_raises_on_events_it_drops_or_ignores(env, fault):
    ok(env.stack.send("role-batch-service-create.json", props={"Heal": "false"}))
    env.faults.forget()
    for operation in SERVICE:
        env.faults.arm(operation, fault)
    dropped = [
        {**event("heal-delete-role.json"), "account": "999999999999"},
        event("heal-delete-role-failed.json"),
        event("heal-delete-role.json", eventName="CreateRole"),
        {"hello": "world"},
        {**event("heal-delete-role.json"), "detail": "oops"},
    ]
    for payload in dropped:
        assert env.heal(payload)["outcome"] == "dropped"
    assert env.faults.attempts == [], "a dropped event made AWS calls"
    # Ignored events read the registry (it must answer) and nothing else.
    for operation in ("Query", "Scan"):
        env.faults.armed.pop(operation)
    assert env.heal(event("heal-delete-role.json"))["outcome"] == "ignored"  # not registered
    env.iam.detach_role_policy(
        RoleName="AWSBatchServiceRole", PolicyArn="arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole"
    )
    detached = event(
        "heal-detach-role-policy.json",
        requestParameters={"roleName": "AWSBatchServiceRole"},
    )
    assert env.heal(detached)["outcome"] == "ignored"  # Heal: false
    assert set(env.faults.operations()) <= {"Query"}


# --- the deadline -------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["CreateRole"])
def test_a_hanging_call_is_answered_failed_once_before_the_deadline_and_its_late_result_abandoned(
    env, stack, monkeypatch, operation
):
    from rolekeeper.handlers import custom_resource

    custom_resource.configure(timeout_margin=0.5)
    answered: list[float] = []

    def timed(url: str, body: dict[str, Any], *args: Any) -> int:
        answered.append(time.monotonic())
        return env.sent(url, body, *args)

    custom_resource.configure(sender=timed)
    stack = Stack("app", env.sent, LambdaContext(remaining_ms=2_000), stack.cfn)
    env.faults.hang(operation, 2.3)
    start = time.monotonic()
    response = stack.send("role-ecs-instance-create.json")
    finished = time.monotonic()
    assert finished - start >= 2.3, "the hang did not happen"
    assert len(answered) == 1, "exactly one response"
    assert answered[0] - start < 2.0, f"answered {answered[0] - start:.2f} s in: after the deadline"
    assert response["Status"] == "FAILED"
    assert "time" in response["Reason"]
    assert env.claims() == [], "the late result's claim was not abandoned"


# --- the registry unavailable -------------------------------------------------------------------


def test_registry_table_missing_answers_failed_and_creates_nothing(env):
    # The registry is read (the other claims' wants) before anything is made in IAM.
    env.dynamodb.delete_table(TableName=REGISTRY)
    response = env.stack.send("role-ecs-instance-create.json")
    assert response["Status"] == "FAILED"
    assert "Query" in response["Reason"] and "ResourceNotFoundException" in response["Reason"]
    assert len(response["Reason"]) <= 256
    assert env.role(ECS) is None
    assert env.profile_roles(ECS) is None


@pytest.mark.parametrize("operation", ["TransactWriteItems"])
def test_registry_5xx_answers_failed_and_removes_the_service_linked_role_just_created(env, operation):
    env.faults.arm(operation, UNAVAILABLE)
    response = env.stack.send("slr-create.json")
    assert response["Status"] == "FAILED"
    assert operation in response["Reason"] and "ServiceUnavailable" in response["Reason"]
    assert "DeleteServiceLinkedRole" in env.faults.operations()
    assert env.role(SPOT_FLEET) is None


@pytest.mark.parametrize("operation", ["TransactWriteItems"])
def test_registry_5xx_answers_failed_and_revokes_the_grant_just_created(env, operation):
    _grant_setup(env)
    env.faults.arm(operation, UNAVAILABLE)
    response = _grant_act(env)
    assert response["Status"] == "FAILED"
    assert operation in response["Reason"]
    assert env.grants() == []


def test_registry_failure_never_removes_an_adopted_role(env):
    _adopt_setup(env)
    env.faults.arm("TransactWriteItems", UNAVAILABLE)
    response = _adopt_act(env)
    assert response["Status"] == "FAILED"
    _adopt_failed(env)


def test_a_failed_claim_leaves_no_record_that_marks_a_later_role_as_rolekeepers(env):
    """The write of the object with its claim (TransactWriteItems) fails: the rollback removes the
    role, and the registry must not keep saying rolekeeper created it. Otherwise the
    role someone makes by hand later is reported Created=true and deleted by OnDelete: Delete."""
    env.faults.arm("TransactWriteItems", DENIED)
    assert env.stack.send("role-ecs-instance-create.json")["Status"] == "FAILED"
    env.faults.disarm()
    assert env.role(ECS) is None
    # Someone else makes the role (the ECS console's first run), then a stack adopts it.
    _adopt_setup(env)
    adopted = env.stack.send("role-ecs-instance-create.json", props={"OnDelete": "Delete"}, drop=("Tags",))
    ok(adopted)
    deleted = env.stack.send(
        "role-ecs-instance-delete.json",
        props={"OnDelete": "Delete"},
        PhysicalResourceId=adopted["PhysicalResourceId"],
    )
    ok(deleted)
    assert env.role(ECS) is not None, (
        f"rolekeeper deleted a role it adopted (it answered Created={adopted['Data']['Created']})"
    )
    assert adopted["Data"]["Created"] == "false"


# --- ambiguous timeouts: the service did the work, the answer was lost --------------------------


@pytest.mark.parametrize(
    ("operation", "scenario"),
    [
        ("CreateRole", "create-ecs"),
        ("CreateInstanceProfile", "create-ecs"),
        ("AddRoleToInstanceProfile", "create-ecs"),
        ("TransactWriteItems", "create-ecs"),
        ("CreateServiceLinkedRole", "create-slr"),
        ("CreateGrant", "create-grant"),
    ],
)
def test_a_read_timeout_after_the_service_acted_still_converges_or_leaves_nothing(env, operation, scenario):
    case = PROVISIONER_SCENARIOS[scenario]
    case.setup(env)
    env.faults.time_out_after_applying(operation)
    response = case.act(env)
    assert [a.attempt for a in env.faults.calls(operation)][:2] == [1, 2]
    if response["Status"] == "SUCCESS":
        case.ok(env, response)
    else:
        case.after_failure(env)
