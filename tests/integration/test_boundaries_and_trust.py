"""Issue 16 cases 3 and 4: boundaries and trust stay under the deployer's control.

- A stack may name only a boundary the deployer allowed (AllowedPermissionsBoundaryArns), and
  never replaces one an administrator set;
- the healer puts back only what a claim recorded and was removed: an administrator's boundary,
  tag value or trust condition stays;
- a role keeps the blueprint it was made for: a Blueprint change is a replacement (a new RoleName),
  never a union of two blueprints' trust.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.integration.test_service_role import (
    ADMINISTRATOR,
    SPOT_FLEET_CONDITION,
    assert_nothing_created,
    attached,
    boundary,
    get_role,
    iam,
    registry,
    statements,
    tags,
)
from tools.devkit.environment import ACCOUNT
from tools.devkit.events import healer_event, load_event
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext

APP = "app-web"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
SPOT_FLEET_TAGGING = "aws-ec2-spot-fleet-tagging-role"
APP_BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/app-boundary"
EC2_TRUST = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
# What an administrator adds to the blueprint's statement: it only narrows who may assume the role.
NARROWED = {**EC2_TRUST, "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}


@pytest.fixture
def heal(aws, monkeypatch):
    from rolekeeper.handlers import healer
    from rolekeeper.healing import service as healing

    rebuild_handlers()
    monkeypatch.setattr(healing, "notify", lambda *_args: None)

    def deliver(payload: dict[str, Any]) -> dict[str, Any]:
        return healer.lambda_handler(
            copy.deepcopy(payload), LambdaContext(function_name="rolekeeper-HealerFunction")
        )

    yield deliver
    rebuild_handlers()


@pytest.fixture
def policies(aws) -> dict[str, str]:
    """Customer managed policies to use as boundaries: app-boundary is allowed, the other is not."""
    document = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
        }
    )
    return {
        name: iam().create_policy(PolicyName=name, PolicyDocument=document)["Policy"]["Arn"]
        for name in ("app-boundary", "admins-boundary")
    }


def scheduled() -> dict[str, Any]:
    return load_event("heal-scheduled.json")


def trust_changed(role_name: str) -> dict[str, Any]:
    return healer_event("heal-update-assume-role-policy.json", requestParameters={"roleName": role_name})


def set_trust(role_name: str, *statement: dict[str, Any]) -> None:
    document = {"Version": "2012-10-17", "Statement": list(statement)}
    iam().update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(document))


def update(
    stack,
    created: dict[str, Any],
    props: dict[str, Any],
    old: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
):
    return stack.send(
        "role-ec2-application-create.json",
        props=props,
        drop=drop,
        old_props=old or {},
        RequestType="Update",
        PhysicalResourceId=created["PhysicalResourceId"],
    )


# --- case 3: a boundary only from the deployer's list -------------------------------------------


def test_a_boundary_outside_the_allow_list_is_refused_and_nothing_is_made(aws, stack):
    answer = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": ADMINISTRATOR})
    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith(
        f"PermissionsBoundary: {ADMINISTRATOR} is not in AllowedPermissionsBoundaryArns: use one of "
        f"{APP_BOUNDARY}"
    ), answer["Reason"]
    assert_nothing_created()


def test_an_update_to_a_boundary_outside_the_allow_list_is_refused_and_changes_nothing(aws, stack, policies):
    created = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": APP_BOUNDARY})
    assert created["Status"] == "SUCCESS", created["Reason"]
    before = registry().objects.read(f"ROLE#{APP}")
    answer = update(
        stack, created, {"PermissionsBoundary": ADMINISTRATOR}, {"PermissionsBoundary": APP_BOUNDARY}
    )
    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith(f"PermissionsBoundary: {ADMINISTRATOR} is not in"), answer["Reason"]
    assert boundary(APP) == APP_BOUNDARY
    assert registry().objects.read(f"ROLE#{APP}") == before


def test_an_empty_allow_list_lets_no_stack_set_a_boundary(aws, stack, policies, monkeypatch):
    monkeypatch.setenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS", "")
    rebuild_handlers()
    try:
        refused = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": APP_BOUNDARY})
        assert refused["Status"] == "FAILED"
        assert refused["Reason"].startswith(
            "PermissionsBoundary: this rolekeeper lets no stack set a permissions boundary "
            "(AllowedPermissionsBoundaryArns is empty): remove PermissionsBoundary"
        ), refused["Reason"]
        assert_nothing_created()
        made = stack.send("role-ec2-application-create.json")
        assert made["Status"] == "SUCCESS", made["Reason"]
        assert boundary(APP) is None
    finally:
        monkeypatch.delenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS")
        rebuild_handlers()


def test_an_allow_list_entry_with_iams_wildcards_names_a_policy_in_every_account(
    aws, stack, policies, monkeypatch
):
    """A StackSet gives every account the same parameters: arn:aws:iam::*:policy/app-boundary."""
    monkeypatch.setenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS", "arn:aws:iam::*:policy/app-boundary")
    rebuild_handlers()
    try:
        refused = stack.send(
            "role-ec2-application-create.json", props={"PermissionsBoundary": policies["admins-boundary"]}
        )
        assert refused["Status"] == "FAILED"
        assert refused["Reason"].startswith("PermissionsBoundary: "), refused["Reason"]
        made = stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": APP_BOUNDARY})
        assert made["Status"] == "SUCCESS", made["Reason"]
        assert boundary(APP) == APP_BOUNDARY
    finally:
        monkeypatch.delenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS")
        rebuild_handlers()


def test_a_stack_update_never_replaces_a_boundary_an_administrator_set(aws, stack, policies):
    kept = {"PermissionsBoundary": APP_BOUNDARY, "OnDelete": "Retain"}
    created = stack.send("role-ec2-application-create.json", props=kept)
    iam().put_role_permissions_boundary(RoleName=APP, PermissionsBoundary=policies["admins-boundary"])
    answer = update(stack, created, {**kept, "Tags": [{"Key": "team", "Value": "web"}]}, kept)
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert boundary(APP) == policies["admins-boundary"]
    assert tags(APP) == {"team": "web"}
    # and the stack letting go of the role never removes it either: rolekeeper did not set it
    gone = stack.send(
        "role-ec2-application-delete.json", props=kept, PhysicalResourceId=created["PhysicalResourceId"]
    )
    assert gone["Status"] == "SUCCESS", gone["Reason"]
    assert boundary(APP) == policies["admins-boundary"]


def test_a_stack_update_sets_a_boundary_where_none_is_and_replaces_its_own(aws, stack, policies, monkeypatch):
    monkeypatch.setenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS", f"{APP_BOUNDARY},{policies['admins-boundary']}")
    rebuild_handlers()
    try:
        created = stack.send("role-ec2-application-create.json")
        added = update(stack, created, {"PermissionsBoundary": APP_BOUNDARY})
        assert added["Status"] == "SUCCESS", added["Reason"]
        assert boundary(APP) == APP_BOUNDARY
        replaced = update(
            stack,
            created,
            {"PermissionsBoundary": policies["admins-boundary"]},
            {"PermissionsBoundary": APP_BOUNDARY},
        )
        assert replaced["Status"] == "SUCCESS", replaced["Reason"]
        assert boundary(APP) == policies["admins-boundary"]
    finally:
        monkeypatch.delenv("ALLOWED_PERMISSIONS_BOUNDARY_ARNS")
        rebuild_handlers()


@pytest.mark.parametrize("how", ["event", "schedule"])
def test_the_healer_keeps_an_administrators_boundary_and_restores_a_removed_one(
    aws, stack, heal, policies, how
):
    stack.send("role-ec2-application-create.json", props={"PermissionsBoundary": APP_BOUNDARY})
    admins = policies["admins-boundary"]
    iam().put_role_permissions_boundary(RoleName=APP, PermissionsBoundary=admins)
    event = healer_event(
        "heal-delete-role.json",
        eventName="PutRolePermissionsBoundary",
        requestParameters={"roleName": APP, "permissionsBoundary": admins},
    )
    heal(event if how == "event" else scheduled())
    assert boundary(APP) == admins
    iam().delete_role_permissions_boundary(RoleName=APP)
    removed = healer_event(
        "heal-delete-role.json",
        eventName="DeleteRolePermissionsBoundary",
        requestParameters={"roleName": APP},
    )
    heal(removed if how == "event" else scheduled())
    assert boundary(APP) == APP_BOUNDARY


def test_the_healer_keeps_a_tag_value_an_administrator_changed_and_restores_a_removed_tag(aws, stack, heal):
    stack.send("role-ec2-application-create.json", props={"Tags": [{"Key": "team", "Value": "web"}]})
    iam().tag_role(RoleName=APP, Tags=[{"Key": "team", "Value": "platform"}])
    assert heal(scheduled()).get("healed", 0) == 0
    assert tags(APP) == {"team": "platform"}
    iam().untag_role(RoleName=APP, TagKeys=["team"])
    assert heal(scheduled()).get("healed", 0) == 1
    assert tags(APP) == {"team": "web"}


# --- case 3: trust conditions an administrator added stay ---------------------------------------


@pytest.mark.parametrize("how", ["event", "schedule"])
def test_the_healer_keeps_a_condition_an_administrator_added_to_a_role_it_created(aws, stack, heal, how):
    stack.send("role-ec2-application-create.json")
    set_trust(APP, NARROWED)
    result = heal(trust_changed(APP) if how == "event" else scheduled())
    assert result["outcome"] in ("healthy", "reconciled") and not result.get("healed"), result
    assert statements(APP) == [NARROWED]


def test_a_stack_update_keeps_a_condition_an_administrator_added(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    set_trust(APP, NARROWED)
    answer = update(stack, created, {"Tags": [{"Key": "team", "Value": "web"}]})
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert statements(APP) == [NARROWED]


def test_the_healer_keeps_a_condition_added_to_the_spot_fleet_statement(aws, stack, heal):
    stack.send("role-spot-fleet-tagging-create.json")
    (statement,) = statements(SPOT_FLEET_TAGGING)
    narrowed = copy.deepcopy(statement)
    narrowed["Condition"]["StringEquals"]["aws:SourceOrgID"] = "o-example1234"
    set_trust(SPOT_FLEET_TAGGING, narrowed)
    heal(trust_changed(SPOT_FLEET_TAGGING))
    assert statements(SPOT_FLEET_TAGGING) == [narrowed]


def test_the_healer_puts_back_the_confused_deputy_conditions_an_administrator_removed(aws, stack, heal):
    stack.send("role-spot-fleet-tagging-create.json")
    bare = {
        "Effect": "Allow",
        "Principal": {"Service": "spotfleet.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
    set_trust(SPOT_FLEET_TAGGING, bare)
    assert heal(trust_changed(SPOT_FLEET_TAGGING))["outcome"] == "healed"
    (statement,) = statements(SPOT_FLEET_TAGGING)
    assert statement["Condition"] == SPOT_FLEET_CONDITION


def test_a_statement_without_the_conditions_beside_the_narrowed_one_is_taken_out(aws, stack, heal):
    """A second, bare statement for the same service would undo the conditions (IAM allows if any
    statement does): it goes, the narrowed one and everything for other principals stays."""
    stack.send("role-ec2-application-create.json")
    other = {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole",
    }
    spot = {
        "Effect": "Allow",
        "Principal": {"Service": "spotfleet.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
    set_trust(APP, EC2_TRUST, NARROWED, other, spot)
    assert heal(trust_changed(APP))["outcome"] == "healed"
    assert statements(APP) == [NARROWED, other, spot]


# --- case 4: a role keeps its blueprint ---------------------------------------------------------


def test_a_blueprint_change_on_update_is_refused_and_the_trust_is_unchanged(aws, stack):
    created = stack.send("role-ec2-application-create.json")
    before = statements(APP)
    answer = update(
        stack,
        created,
        {"Blueprint": "spot-fleet-tagging"},
        {"Blueprint": "ec2-application"},
        drop=("ManagedPolicyArns",),
    )
    assert answer["Status"] == "FAILED"
    assert answer["Reason"] == (
        f"Blueprint: role {APP} was made for Blueprint ec2-application and a role keeps its blueprint: "
        "give the resource a new RoleName for Blueprint spot-fleet-tagging (CloudFormation then replaces it)"
    )
    assert statements(APP) == before == [EC2_TRUST]
    assert attached(APP) == {SSM}


def test_a_retained_role_claimed_again_for_another_blueprint_is_refused(aws, stack, other_stack):
    created = stack.send("role-ec2-application-create.json", props={"OnDelete": "Retain"})
    gone = stack.send(
        "role-ec2-application-delete.json",
        props={"OnDelete": "Retain"},
        PhysicalResourceId=created["PhysicalResourceId"],
    )
    assert gone["Status"] == "SUCCESS", gone["Reason"]
    assert get_role(APP) is not None
    answer = other_stack.send(
        "role-ec2-application-create.json", props={"Blueprint": "batch-service"}, drop=("ManagedPolicyArns",)
    )
    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith(
        f"Blueprint: role {APP} was made for Blueprint ec2-application and a role keeps its blueprint"
    ), answer["Reason"]
    assert statements(APP) == [EC2_TRUST]
    assert attached(APP) == {SSM}
