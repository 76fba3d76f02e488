"""Stateful: three stacks create, update and delete the Spot Fleet service-linked role and the ECS
instance role (random OnDelete and Heal) while someone deletes roles and detaches policies by
hand, IAM events arrive and the schedule reconciles (hypothesis RuleBasedStateMachine).

A model keeps the claims CloudFormation believes in. Checked:
- after every step, the registry holds exactly the model's claims, and an object whose last
  claim was released with OnDelete: Delete is gone (service-linked role deletion completes at
  once, as with conftest's default deletion_tasks);
- after each scheduled reconcile, and after an IAM event about an object, every object that a
  claim with Heal on holds is as its desired state says: the role exists, the blueprint policy
  is attached, the instance profile holds the role.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rolekeeper.domain.events import ALL as ALL_ASPECTS
from rolekeeper.domain.events import ROLE_EVENTS
from rolekeeper.domain.records import claim_owner
from tests.conftest import Stack
from tools.devkit import cloudformation, fidelity
from tools.devkit.embedded import fast_aws, plain
from tools.devkit.environment import ACCOUNT
from tools.devkit.events import EVENTS, healer_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

STACKS = ("alpha", "bravo", "charlie")
KINDS = ("slr", "ecs")
ECS = "ecsInstanceRole"
ECS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
SPOT_FLEET = "AWSServiceRoleForEC2SpotFleet"
ROLE = {"slr": SPOT_FLEET, "ecs": ECS}
LOGICAL_ID = {"slr": "SpotFleetServiceLinkedRole", "ecs": "EcsInstanceRole"}
CREATE = {"slr": "slr-create.json", "ecs": "role-ecs-instance-create.json"}
DELETE = {"slr": "slr-delete.json", "ecs": "role-ecs-instance-delete.json"}
REGISTRY = "rolekeeper-test-registry"
HEALER_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:rolekeeper-HealerFunction"


load = healer_event


@dataclass
class Claim:
    on_delete: str
    heal: bool
    physical_id: str

    @property
    def props(self) -> dict[str, str]:
        return {"OnDelete": self.on_delete, "Heal": "true" if self.heal else "false"}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        from rolekeeper.handlers import custom_resource
        from rolekeeper.healing import service as healing

        self.monkeypatch = pytest.MonkeyPatch()
        self.monkeypatch.setenv("HEAL_RATE_LIMIT", "100000")  # this is not what is under test here
        self.moto = fast_aws(self.monkeypatch, fidelity.DeletionTasks())  # iam.sleep patched there
        self.moto.__enter__()
        self.monkeypatch.setattr(healing, "notify", lambda *_a: None)
        self.sent = Sent(issued=None)  # the double below signs the URLs; linked once it exists
        custom_resource.configure(sender=self.sent)
        rebuild_handlers()
        self.cfn = cloudformation.CloudFormation()
        cloudformation.install(self.monkeypatch, self.cfn)
        self.sent.issued = self.cfn.issued
        self.stacks = {name: Stack(name, self.sent, LambdaContext(), self.cfn) for name in STACKS}
        self.claims: dict[tuple[str, str], Claim] = {}
        self.gone: dict[str, bool] = dict.fromkeys(KINDS, False)
        self.deletion_task: str | None = None
        self.last_delete: tuple[str, str, Claim] | None = None

    def teardown(self) -> None:
        from rolekeeper.handlers import custom_resource

        custom_resource.configure()

        try:
            self.moto.__exit__(None, None, None)
        finally:
            self.monkeypatch.undo()
            rebuild_handlers()
            rebuild_handlers()

    # --- reading AWS back -----------------------------------------------------------------------

    def role(self, kind: str) -> dict[str, Any] | None:
        iam = plain("iam")
        try:
            return iam.get_role(RoleName=ROLE[kind])["Role"]
        except iam.exceptions.NoSuchEntityException:
            return None

    def profile_roles(self) -> list[str] | None:
        iam = plain("iam")
        try:
            profile = iam.get_instance_profile(InstanceProfileName=ECS)["InstanceProfile"]
        except iam.exceptions.NoSuchEntityException:
            return None
        return [r["RoleName"] for r in profile["Roles"]]

    def holders(self, kind: str) -> list[Claim]:
        return [claim for (_stack, k), claim in self.claims.items() if k == kind]

    def heal(self, payload: dict[str, Any]) -> dict[str, Any]:
        from rolekeeper.handlers import healer

        context = LambdaContext(function_name="rolekeeper-HealerFunction", invoked_function_arn=HEALER_ARN)
        return healer.lambda_handler(copy.deepcopy(payload), context)  # type: ignore[arg-type]

    # --- CloudFormation -------------------------------------------------------------------------

    @rule(
        stack=st.sampled_from(STACKS),
        kind=st.sampled_from(KINDS),
        on_delete=st.sampled_from(["Retain", "Delete"]),
        heal=st.booleans(),
    )
    def create(self, stack: str, kind: str, on_delete: str, heal: bool) -> None:
        if (stack, kind) in self.claims:
            return  # CloudFormation creates a resource once
        claim = Claim(on_delete, heal, "")
        response = self.stacks[stack].send(CREATE[kind], LOGICAL_ID[kind], props=claim.props)
        assert response["Status"] == "SUCCESS", response["Reason"]
        claim.physical_id = response["PhysicalResourceId"]
        self.claims[(stack, kind)] = claim
        self.gone[kind] = False

    @rule(
        stack=st.sampled_from(STACKS),
        kind=st.sampled_from(KINDS),
        on_delete=st.sampled_from(["Retain", "Delete"]),
        heal=st.booleans(),
    )
    def update(self, stack: str, kind: str, on_delete: str, heal: bool) -> None:
        old = self.claims.get((stack, kind))
        if old is None:
            return
        new = Claim(on_delete, heal, old.physical_id)
        response = self.stacks[stack].send(
            CREATE[kind],
            LOGICAL_ID[kind],
            props=new.props,
            old_props=old.props,
            RequestType="Update",
            PhysicalResourceId=old.physical_id,
        )
        assert response["Status"] == "SUCCESS", response["Reason"]
        assert response["PhysicalResourceId"] == old.physical_id, "an in-place update kept its physical id"
        self.claims[(stack, kind)] = new

    @rule(stack=st.sampled_from(STACKS), kind=st.sampled_from(KINDS))
    def delete(self, stack: str, kind: str) -> None:
        claim = self.claims.get((stack, kind))
        if claim is None:
            return
        response = self.stacks[stack].send(
            DELETE[kind], LOGICAL_ID[kind], props=claim.props, PhysicalResourceId=claim.physical_id
        )
        assert response["Status"] == "SUCCESS", response["Reason"]
        del self.claims[(stack, kind)]
        self.last_delete = (stack, kind, claim)
        if not self.holders(kind) and claim.on_delete == "Delete":
            self.gone[kind] = True

    @rule(stack=st.sampled_from(STACKS), kind=st.sampled_from(KINDS))
    def create_sent_again(self, stack: str, kind: str) -> None:
        """CloudFormation repeats a request whose answer it did not get: nothing changes."""
        claim = self.claims.get((stack, kind))
        if claim is None:
            return
        response = self.stacks[stack].send(CREATE[kind], LOGICAL_ID[kind], props=claim.props)
        assert response["Status"] == "SUCCESS", response["Reason"]
        assert response["PhysicalResourceId"] == claim.physical_id

    @rule()
    def delete_sent_again(self) -> None:
        if self.last_delete is None or self.last_delete[:2] in self.claims:
            return
        stack, kind, claim = self.last_delete
        response = self.stacks[stack].send(
            DELETE[kind], LOGICAL_ID[kind], props=claim.props, PhysicalResourceId=claim.physical_id
        )
        assert response["Status"] == "SUCCESS", response["Reason"]

    # --- people and AWS -------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS))
    def delete_role_by_hand(self, kind: str) -> None:
        if self.role(kind) is None:
            return
        iam = plain("iam")
        if kind == "slr":
            self.deletion_task = iam.delete_service_linked_role(RoleName=SPOT_FLEET)["DeletionTaskId"]
            return
        for profile in iam.list_instance_profiles_for_role(RoleName=ECS)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=profile["InstanceProfileName"], RoleName=ECS
            )
            iam.delete_instance_profile(InstanceProfileName=profile["InstanceProfileName"])
        for policy in iam.list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=ECS, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=ECS)

    @rule()
    def detach_policy_by_hand(self) -> None:
        if self.role("ecs") is None:
            return
        iam = plain("iam")
        attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]]
        if ECS_POLICY in attached:
            iam.detach_role_policy(RoleName=ECS, PolicyArn=ECS_POLICY)

    @rule()
    def remove_role_from_profile_by_hand(self) -> None:
        if self.profile_roles() == [ECS]:
            plain("iam").remove_role_from_instance_profile(InstanceProfileName=ECS, RoleName=ECS)

    @rule(
        name=st.sampled_from(
            [
                "heal-delete-role.json",
                "heal-detach-role-policy.json",
                "heal-remove-role-from-instance-profile.json",
                "heal-delete-instance-profile.json",
                "heal-delete-service-linked-role.json",
            ]
        )
    )
    def iam_event(self, name: str) -> None:
        kind = "slr" if "service-linked" in name else "ecs"
        payload = load(name)
        if kind == "slr" and self.deletion_task:
            payload = load(name, responseElements={"deletionTaskId": self.deletion_task})
        result = self.heal(payload)  # must not raise
        assert result["outcome"] in ("healed", "healthy", "ignored", "coalesced"), result
        # An event heals what it reports (and a missing role whole); damage done without its
        # event waits for that event or the schedule.
        self.assert_desired(kind, ROLE_EVENTS[payload["detail"]["eventName"]])

    @rule()
    def scheduled_reconcile(self) -> None:
        result = self.heal(json.loads((EVENTS / "heal-scheduled.json").read_text()))
        assert result["outcome"] == "reconciled", result
        for kind in KINDS:
            self.assert_desired(kind)

    # --- what must hold -------------------------------------------------------------------------

    def assert_desired(self, kind: str, aspects: frozenset[str] = ALL_ASPECTS) -> None:
        if not any(claim.heal for claim in self.holders(kind)):
            return
        role = self.role(kind)
        assert role is not None, f"{ROLE[kind]} is claimed with Heal on but missing"
        if kind == "ecs":
            attached = {
                p["PolicyArn"]
                for p in plain("iam").list_attached_role_policies(RoleName=ECS)["AttachedPolicies"]
            }
            if "policies" in aspects:
                assert ECS_POLICY in attached, "blueprint policy not attached"
            if "profile" in aspects:
                assert self.profile_roles() == [ECS], "instance profile does not hold the role"

    @invariant()
    def registry_holds_exactly_the_claims_cloudformation_holds(self) -> None:
        if not hasattr(self, "claims"):
            return
        items = plain("dynamodb").scan(TableName=REGISTRY)["Items"]
        found = sorted(
            (i["pk"]["S"], *reversed(claim_owner(i["sk"]["S"])), i["on_delete"]["S"], i["heal"]["BOOL"])
            for i in items
            if i["sk"]["S"].startswith("CLAIM#")
        )
        expected = sorted(
            (
                f"ROLE#{ROLE[kind].lower()}",
                LOGICAL_ID[kind],
                self.stacks[stack].stack_id,
                claim.on_delete,
                claim.heal,
            )
            for (stack, kind), claim in self.claims.items()
        )
        assert found == expected

    @invariant()
    def nothing_left_after_the_last_claim_went_with_on_delete_delete(self) -> None:
        if not hasattr(self, "claims"):
            return
        for kind in KINDS:
            if self.gone[kind]:
                assert not self.holders(kind)
                assert self.role(kind) is None, (
                    f"{ROLE[kind]} remains after its last claim (OnDelete: Delete)"
                )
                if kind == "ecs":
                    assert self.profile_roles() is None, "instance profile remains"


Lifecycle.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestLifecycle = Lifecycle.TestCase
