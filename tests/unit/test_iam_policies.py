"""The functions' permissions, rendered from template.yaml and evaluated as IAM evaluates them
(tests/iam_evaluator.py: wildcards, explicit Deny, missing condition keys)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.iam_evaluator import evaluate
from tools.policies import template_policies

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
IAM = f"arn:aws:iam::{ACCOUNT}"
MARKED = {"aws:ResourceTag/rolekeeper:managed": "true"}
OPTED_IN = {"aws:ResourceTag/rolekeeper:spot-fleet-grants": "allow"}
SPOT_FLEET_ROLE = f"{IAM}:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
# tools/policies.py renders the template with AllowedPermissionsBoundaryArns set to this one.
BOUNDARY = f"{IAM}:policy/app-boundary"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
# Everything a caller could bring along: the strongest context an attacker can present.
EVERYTHING = {
    **MARKED,
    **OPTED_IN,
    "aws:RequestTag/rolekeeper:managed": "true",
    "iam:PolicyARN": SSM,
    "kms:GranteePrincipal": SPOT_FLEET_ROLE,
    "iam:PermissionsBoundary": BOUNDARY,
}


@cache
def function_policies(function: str, boundaries: str | None = None) -> list[dict[str, Any]]:
    """The function's policies as deployed (AllowedPermissionsBoundaryArns: boundaries, if given)."""
    given = None if boundaries is None else {"AllowedPermissionsBoundaryArns": boundaries}
    found = template_policies(ROOT / "template.yaml", given)
    return [doc for name, doc in found.items() if name.endswith(":ConvergePolicy") or f":{function}:" in name]


def can(
    function: str,
    action: str,
    resource: str,
    context: dict[str, Any] | None = None,
    boundaries: str | None = None,
) -> bool:
    return evaluate(function_policies(function, boundaries), action, resource, context or {})


FUNCTIONS = ("ProvisionerFunction", "HealerFunction")

# Item 5 of the ownership issue: roles under other paths that the old "app-*" patterns reached.
OTHER_PEOPLES_ROLES = [f"{IAM}:role/app-team/Administrator", f"{IAM}:role/ops/app-x/BreakGlass"]
ROLE_ACTIONS = [
    "iam:UpdateAssumeRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:DeleteRole",
    "iam:PassRole",
    "iam:CreateRole",
    "iam:AttachRolePolicy",
    "iam:DetachRolePolicy",
    "iam:TagRole",
    "iam:UntagRole",
]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("action", ROLE_ACTIONS)
@pytest.mark.parametrize("resource", OTHER_PEOPLES_ROLES)
def test_no_role_action_reaches_roles_under_other_paths_whatever_the_context(function, action, resource):
    assert not can(function, action, resource, EVERYTHING)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "resource",
    [f"{IAM}:instance-profile/app-team/Administrator", f"{IAM}:instance-profile/ops/app-x/BreakGlass"],
)
@pytest.mark.parametrize(
    "action",
    [
        "iam:CreateInstanceProfile",
        "iam:AddRoleToInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
    ],
)
def test_no_profile_action_reaches_profiles_under_other_paths(function, action, resource):
    assert not can(function, action, resource, EVERYTHING)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "resource",
    [
        f"{IAM}:role/aws-service-role/sso.amazonaws.com/AWSServiceRoleForSSO",
        f"{IAM}:role/aws-service-role/organizations.amazonaws.com/AWSServiceRoleForOrganizations",
    ],
)
@pytest.mark.parametrize(
    "action", ["iam:DeleteServiceLinkedRole", "iam:UpdateRole", "iam:CreateServiceLinkedRole"]
)
def test_service_linked_role_actions_do_not_reach_other_services_roles(function, action, resource):
    assert not can(function, action, resource, {**EVERYTHING, "iam:AWSServiceName": "sso.amazonaws.com"})


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("action", ["kms:CreateGrant", "kms:RevokeGrant"])
def test_grant_actions_only_on_keys_that_opted_in(function, action):
    context = {"kms:GranteePrincipal": SPOT_FLEET_ROLE}
    assert not can(function, action, KEY, context)
    assert can(function, action, KEY, {**context, **OPTED_IN})


@pytest.mark.parametrize("function", FUNCTIONS)
def test_grants_go_to_the_spot_fleet_role_only(function):
    attacker = f"{IAM}:role/attacker"
    assert not can(function, "kms:CreateGrant", KEY, {**OPTED_IN, "kms:GranteePrincipal": attacker})


@pytest.mark.parametrize(
    "action",
    [
        "iam:DeleteRole",
        "iam:DetachRolePolicy",
        "iam:UntagRole",
        "iam:DeleteRolePermissionsBoundary",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
        "iam:DeleteServiceLinkedRole",
        "iam:DeleteRolePolicy",
    ],
)
@pytest.mark.parametrize(
    "resource",
    [
        f"{IAM}:role/ecsInstanceRole",
        f"{IAM}:role/app-web",
        f"{IAM}:instance-profile/ecsInstanceRole",
        f"{IAM}:instance-profile/app-web",
        f"{IAM}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
    ],
)
def test_the_healer_can_remove_nothing(action, resource):
    assert not can("HealerFunction", action, resource, EVERYTHING)


@pytest.mark.parametrize(
    ("resource", "context", "allowed"),
    [
        (f"{IAM}:role/ecsInstanceRole", {"iam:PermissionsBoundary": BOUNDARY}, True),
        (f"{IAM}:role/batch/AWSBatchServiceRole", {"iam:PermissionsBoundary": BOUNDARY}, True),
        (f"{IAM}:role/app-web", {**MARKED, "iam:PermissionsBoundary": BOUNDARY}, True),
        (f"{IAM}:role/app-web", {"iam:PermissionsBoundary": BOUNDARY}, False),
        (f"{IAM}:role/app-team/Administrator", {**MARKED, "iam:PermissionsBoundary": BOUNDARY}, False),
        (f"{IAM}:role/Administrator", EVERYTHING, False),
        (f"{IAM}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot", EVERYTHING, False),
    ],
)
def test_the_healer_puts_a_boundary_back_only_where_the_provisioner_may_set_one(resource, context, allowed):
    # Putting back the boundary a claim wants (issue 9): scoped as the provisioner's boundary
    # statements, documented names and prefixed names carrying the marker tag.
    assert can("HealerFunction", "iam:PutRolePermissionsBoundary", resource, context) is allowed
    assert can("ProvisionerFunction", "iam:PutRolePermissionsBoundary", resource, context) is allowed


# Issue 16, case 3: a stack author could name any policy as a boundary (AdministratorAccess,
# replacing the administrator's). IAM now refuses what the code's allow-list refuses.
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("resource", [f"{IAM}:role/ecsInstanceRole", f"{IAM}:role/app-web"])
def test_a_boundary_is_set_only_from_allowed_permissions_boundary_arns(function, resource):
    def put(boundary: str | None, boundaries: str | None = None) -> bool:
        context = {**MARKED, **({"iam:PermissionsBoundary": boundary} if boundary else {})}
        return can(function, "iam:PutRolePermissionsBoundary", resource, context, boundaries)

    assert put(BOUNDARY)
    assert not put(ADMIN)
    assert not put(None)  # IAM always sends the key for this action; without it, nothing matches
    assert put(ADMIN, f"{BOUNDARY},{ADMIN}")  # the operator listed it
    assert not put(BOUNDARY, "")  # empty: no boundary may be set or replaced
    assert not put(f"{IAM}:policy/app-boundary-v2")  # exact ARNs, no prefix match
    # IAM's wildcards, as a StackSet names one policy in every account (StringLike)
    everywhere = "arn:aws:iam::*:policy/app-boundary"
    assert put(BOUNDARY, everywhere)
    assert not put(ADMIN, everywhere)
    assert not put(f"{IAM}:policy/app-boundary-v2", everywhere)


@pytest.mark.parametrize(
    ("resource", "context"),
    [
        (f"{IAM}:role/ecsInstanceRole", {}),
        (f"{IAM}:role/app-web", {"aws:RequestTag/rolekeeper:managed": "true"}),
    ],
)
def test_a_role_is_created_with_an_allowed_boundary_or_none(resource, context):
    def create(boundary: str | None, boundaries: str | None = None) -> bool:
        request = {**context, **({"iam:PermissionsBoundary": boundary} if boundary else {})}
        return can("ProvisionerFunction", "iam:CreateRole", resource, request, boundaries)

    assert create(None)
    assert create(BOUNDARY)
    assert not create(ADMIN)
    assert create(None, "")
    assert not create(BOUNDARY, "")


def test_the_healer_may_revoke_a_grant_it_reissued_on_an_opted_in_key():
    assert can("HealerFunction", "kms:RevokeGrant", KEY, OPTED_IN)


# Positive cases: what the functions need to do their job (so the tests above cannot pass by
# allowing nothing).
@pytest.mark.parametrize(
    ("function", "action", "resource", "context"),
    [
        (
            "ProvisionerFunction",
            "iam:CreateRole",
            f"{IAM}:role/app-web",
            {"aws:RequestTag/rolekeeper:managed": "true"},
        ),
        (
            "ProvisionerFunction",
            "iam:AttachRolePolicy",
            f"{IAM}:role/app-web",
            {**MARKED, "iam:PolicyARN": SSM},
        ),
        ("ProvisionerFunction", "iam:DeleteRole", f"{IAM}:role/app-web", MARKED),
        ("ProvisionerFunction", "iam:PassRole", f"{IAM}:role/app-web", MARKED),
        ("ProvisionerFunction", "iam:DeleteRole", f"{IAM}:role/ecsInstanceRole", {}),
        ("ProvisionerFunction", "iam:DeleteRole", f"{IAM}:role/batch/ecsInstanceRole", {}),
        ("ProvisionerFunction", "iam:CreateInstanceProfile", f"{IAM}:instance-profile/app-web", {}),
        ("ProvisionerFunction", "iam:DeleteInstanceProfile", f"{IAM}:instance-profile/ecsInstanceRole", {}),
        (
            "ProvisionerFunction",
            "iam:DeleteServiceLinkedRole",
            f"{IAM}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
            {},
        ),
        (
            "ProvisionerFunction",
            "iam:CreateServiceLinkedRole",
            f"{IAM}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling_batch",
            {"iam:AWSServiceName": "autoscaling.amazonaws.com"},
        ),
        (
            "ProvisionerFunction",
            "cloudformation:DescribeStackResource",
            f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/app/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f",
            {},
        ),
        (
            "ProvisionerFunction",
            "kms:CreateGrant",
            KEY,
            {**OPTED_IN, "kms:GranteePrincipal": SPOT_FLEET_ROLE},
        ),
        ("HealerFunction", "iam:CreateRole", f"{IAM}:role/ecsInstanceRole", {}),
        ("HealerFunction", "iam:AddRoleToInstanceProfile", f"{IAM}:instance-profile/app-web", {}),
        ("HealerFunction", "iam:AttachRolePolicy", f"{IAM}:role/app-web", {**MARKED, "iam:PolicyARN": SSM}),
    ],
)
def test_what_the_functions_need_is_allowed(function, action, resource, context):
    assert can(function, action, resource, context)


@pytest.mark.parametrize(
    ("action", "context"),
    [
        ("iam:DeleteRole", {}),
        ("iam:AttachRolePolicy", {"iam:PolicyARN": SSM}),
        ("iam:PassRole", {}),
        ("iam:UpdateAssumeRolePolicy", {}),
        ("iam:CreateRole", {}),
    ],
)
def test_an_application_role_rolekeeper_did_not_create_is_out_of_reach(action, context):
    # app-web made by someone else carries no marker tag (and CreateRole must set it).
    assert not can("ProvisionerFunction", action, f"{IAM}:role/app-web", context)


def test_the_marker_tag_can_never_be_removed():
    assert not can(
        "ProvisionerFunction",
        "iam:UntagRole",
        f"{IAM}:role/app-web",
        {**MARKED, "aws:TagKeys": ["rolekeeper:managed"]},
    )
    assert can(
        "ProvisionerFunction", "iam:UntagRole", f"{IAM}:role/app-web", {**MARKED, "aws:TagKeys": ["team"]}
    )


def test_the_evaluator_applies_iams_wildcard_rules():
    # "*" crosses "/": the reason the old patterns reached other paths.
    document = {
        "Statement": [{"Effect": "Allow", "Action": "iam:DeleteRole", "Resource": f"{IAM}:role/app-*"}]
    }
    assert evaluate([document], "iam:deleterole", f"{IAM}:role/app-team/Administrator", {})
    assert not evaluate([document], "iam:DeleteRole", f"{IAM}:role/App-x", {})
