"""The guardrail (src/rolekeeper/guardrail.py): evaluated as IAM evaluates an SCP or a boundary.

An SCP or a boundary grants nothing; what it does is its explicit Deny, whatever the principal's
own policies allow. So each case asks whether a Deny statement applies (tests/iam_evaluator.py:
IAM's wildcards, explicit Deny, negated operators true on a missing key), and the functions' own
case also evaluates their policies from template.yaml together with the SCP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolekeeper import guardrail
from rolekeeper.cli import main
from rolekeeper.domain.catalog import FIXED_ROLE_NAMES, LINKED_SERVICES
from tests.iam_evaluator import denied_explicitly, evaluate
from tests.unit.test_iam_policies import EVERYTHING, KEY, MARKED, OPTED_IN, SSM, function_policies
from tools.policies import Loader, Resolver

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
IAM = f"arn:aws:iam::{ACCOUNT}"
PREFIX = "app-"
FUNCTION_PATTERNS = [
    "arn:aws:iam::*:role/rolekeeper-ProvisionerFunctionRole-*",
    "arn:aws:iam::*:role/rolekeeper-HealerFunctionRole-*",
]
BREAK_GLASS = ["arn:aws:iam::*:role/BreakGlass"]
EXEMPT = [*FUNCTION_PATTERNS, *BREAK_GLASS]
BOUNDARY_ARN = f"{IAM}:policy/Boundary"

# Principals, as aws:PrincipalArn shows them (an assumed role's session: its role ARN).
PROVISIONER = f"{IAM}:role/rolekeeper-ProvisionerFunctionRole-1A2B3C4D5E6F"
HEALER = f"{IAM}:role/rolekeeper-HealerFunctionRole-6F5E4D3C2B1A"
BREAK_GLASS_ROLE = f"{IAM}:role/BreakGlass"
STACK_AUTHOR = f"{IAM}:role/StackAuthor"
ADMINISTRATOR = f"{IAM}:role/Administrator"
ADMIN_USER = f"{IAM}:user/alice"
ROOT_USER = f"arn:aws:iam::{ACCOUNT}:root"
# Not exempt, though the names come close: another path, another stack, a role named after one.
LOOKALIKES = [
    f"{IAM}:role/ops/BreakGlass",
    f"{IAM}:role/BreakGlassX",
    f"{IAM}:role/other-ProvisionerFunctionRole-1A2B3C4D5E6F",
]
EXEMPT_PRINCIPALS = [PROVISIONER, HEALER, BREAK_GLASS_ROLE]
DENIED_PRINCIPALS = [STACK_AUTHOR, ADMINISTRATOR, ADMIN_USER, ROOT_USER, *LOOKALIKES]

SCP = guardrail.scp(EXEMPT, prefix=PREFIX)
BOUNDARY = guardrail.boundary_document(
    guardrail.boundary_statements(EXEMPT, prefix=PREFIX, boundary_policy_arn=BOUNDARY_ARN)
)
DOCUMENTS = {"scp": SCP, "boundary": BOUNDARY}
ADMINISTRATOR_POLICY = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _kept() -> list[tuple[str, str, dict[str, Any]]]:
    """Every kind of kept object with every action the guardrail denies on it."""
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for name in FIXED_ROLE_NAMES:
        for role in (f"{IAM}:role/{name}", f"{IAM}:role/team/batch/{name}"):
            cases += [(action, role, {}) for action in guardrail.ROLE_ACTIONS]
        for profile in (f"{IAM}:instance-profile/{name}", f"{IAM}:instance-profile/ecs/{name}"):
            cases += [(action, profile, {}) for action in guardrail.PROFILE_ACTIONS]
    for service in LINKED_SERVICES.values():
        names = [service.role_name, *([f"{service.role_name}_batch"] if service.accepts_suffix else [])]
        for name in names:
            role = f"{IAM}:role{service.path}{name}"
            cases += [
                (action, role, {})
                for action in ("iam:DeleteServiceLinkedRole", "iam:UpdateRole", "iam:UpdateRoleDescription")
            ]
    cases += [(action, f"{IAM}:role/app-web", MARKED) for action in guardrail.ROLE_ACTIONS]
    cases += [(action, f"{IAM}:instance-profile/app-web", {}) for action in guardrail.PROFILE_ACTIONS]
    for keys in (["rolekeeper:managed"], ["team", "Rolekeeper:Managed"], ["ROLEKEEPER:MANAGED"]):
        for role in (f"{IAM}:role/app-web", f"{IAM}:role/someone-elses", f"{IAM}:role/ops/x"):
            cases += [(action, role, {"aws:TagKeys": keys}) for action in guardrail.MARKER_ACTIONS]
    cases += [(action, KEY, OPTED_IN) for action in guardrail.GRANT_ACTIONS]
    return cases


KEPT = _kept()


def _ids(case: tuple[str, str, dict[str, Any]]) -> str:
    action, resource, context = case
    return f"{action}:{resource.split(':', 5)[-1]}:{json.dumps(context, sort_keys=True)}"


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("principal", DENIED_PRINCIPALS)
@pytest.mark.parametrize("case", KEPT, ids=[_ids(c) for c in KEPT])
def test_guardrail_denies_every_other_principal_every_action_on_kept_objects(document, principal, case):
    action, resource, context = case
    assert denied_explicitly(
        [DOCUMENTS[document]], action, resource, {**context, "aws:PrincipalArn": principal}
    )


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("principal", EXEMPT_PRINCIPALS)
@pytest.mark.parametrize("case", KEPT, ids=[_ids(c) for c in KEPT])
def test_guardrail_lets_rolekeepers_functions_and_break_glass_act(document, principal, case):
    action, resource, context = case
    assert not denied_explicitly(
        [DOCUMENTS[document]], action, resource, {**context, "aws:PrincipalArn": principal}
    )


@pytest.mark.parametrize("document", DOCUMENTS)
def test_guardrail_denies_when_the_principal_arn_is_missing(document):
    # A negated operator is true on a missing key: the Deny applies, not the exemption.
    assert denied_explicitly([DOCUMENTS[document]], "iam:DeleteRole", f"{IAM}:role/ecsInstanceRole", {})


# What is not rolekeeper's: another prefix, another path, an application role it did not create
# (no marker), another service's service-linked role, a profile of another name, a key that did
# not opt in, a tag other than the marker, names that only contain a kept one.
UNRELATED = [
    *[(a, f"{IAM}:role/other-web", EVERYTHING) for a in guardrail.ROLE_ACTIONS],
    *[(a, f"{IAM}:role/app-team/Administrator", {}) for a in guardrail.ROLE_ACTIONS],
    *[(a, f"{IAM}:role/app-web", {}) for a in guardrail.ROLE_ACTIONS],
    *[(a, f"{IAM}:role/ops/Deployer", {}) for a in guardrail.ROLE_ACTIONS],
    *[(a, f"{IAM}:role/myecsInstanceRole", {}) for a in guardrail.ROLE_ACTIONS],
    *[(a, f"{IAM}:role/ecsInstanceRole2", {}) for a in guardrail.ROLE_ACTIONS],
    *[
        (a, f"{IAM}:role/aws-service-role/sso.amazonaws.com/AWSServiceRoleForSSO", {})
        for a in ("iam:DeleteServiceLinkedRole", "iam:UpdateRole")
    ],
    *[(a, f"{IAM}:instance-profile/web", {}) for a in guardrail.PROFILE_ACTIONS],
    *[(a, f"{IAM}:instance-profile/team/web", {}) for a in guardrail.PROFILE_ACTIONS],
    *[(a, KEY, {}) for a in guardrail.GRANT_ACTIONS],
    *[(a, KEY, {"aws:ResourceTag/rolekeeper:spot-fleet-grants": "deny"}) for a in guardrail.GRANT_ACTIONS],
    ("iam:TagRole", f"{IAM}:role/ecsInstanceRole", {"aws:TagKeys": ["team"]}),
    ("iam:UntagRole", f"{IAM}:role/app-web", {**MARKED, "aws:TagKeys": ["team"]}),
    ("iam:CreateRole", f"{IAM}:role/web", {"aws:TagKeys": ["team"]}),
    ("iam:CreateRole", f"{IAM}:role/web", {}),
    ("iam:GetRole", f"{IAM}:role/ecsInstanceRole", {}),
    ("iam:ListAttachedRolePolicies", f"{IAM}:role/app-web", MARKED),
    ("iam:PassRole", f"{IAM}:role/ecsInstanceRole", {}),
    ("kms:CreateGrant", KEY, OPTED_IN),
    ("kms:ListGrants", KEY, OPTED_IN),
]


@pytest.mark.parametrize("case", UNRELATED, ids=[_ids(c) for c in UNRELATED])
def test_the_scp_leaves_what_is_not_rolekeepers_to_the_administrator(case):
    action, resource, context = case
    context = {**context, "aws:PrincipalArn": ADMINISTRATOR}
    assert not denied_explicitly([SCP], action, resource, context)
    assert evaluate([ADMINISTRATOR_POLICY, SCP], action, resource, context)


def test_an_administrator_without_break_glass_is_denied_though_its_policy_allows_everything():
    context = {"aws:PrincipalArn": ADMINISTRATOR}
    assert not evaluate([ADMINISTRATOR_POLICY, SCP], "iam:DeleteRole", f"{IAM}:role/ecsInstanceRole", context)
    assert not evaluate(
        [ADMINISTRATOR_POLICY, BOUNDARY], "iam:DetachRolePolicy", f"{IAM}:role/app-web", {**context, **MARKED}
    )
    context = {"aws:PrincipalArn": BREAK_GLASS_ROLE}
    assert evaluate([ADMINISTRATOR_POLICY, SCP], "iam:DeleteRole", f"{IAM}:role/ecsInstanceRole", context)


# What the functions do in their work (tests/unit/test_iam_policies.py: allowed by their own
# policies), still allowed with the SCP beside them.
FUNCTION_WORK = [
    (
        "ProvisionerFunction",
        "iam:CreateRole",
        f"{IAM}:role/app-web",
        {"aws:RequestTag/rolekeeper:managed": "true", "aws:TagKeys": ["rolekeeper:managed"]},
    ),
    (
        "ProvisionerFunction",
        "iam:TagRole",
        f"{IAM}:role/app-web",
        {"aws:RequestTag/rolekeeper:managed": "true", "aws:TagKeys": ["rolekeeper:managed"]},
    ),
    ("ProvisionerFunction", "iam:AttachRolePolicy", f"{IAM}:role/app-web", {**MARKED, "iam:PolicyARN": SSM}),
    ("ProvisionerFunction", "iam:DetachRolePolicy", f"{IAM}:role/app-web", MARKED),
    ("ProvisionerFunction", "iam:DeleteRole", f"{IAM}:role/app-web", MARKED),
    ("ProvisionerFunction", "iam:DeleteRole", f"{IAM}:role/ecsInstanceRole", {}),
    ("ProvisionerFunction", "iam:RemoveRoleFromInstanceProfile", f"{IAM}:instance-profile/app-web", {}),
    ("ProvisionerFunction", "iam:DeleteInstanceProfile", f"{IAM}:instance-profile/ecsInstanceRole", {}),
    (
        "ProvisionerFunction",
        "iam:DeleteServiceLinkedRole",
        f"{IAM}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
        {},
    ),
    (
        "ProvisionerFunction",
        "iam:UpdateRole",
        f"{IAM}:role/aws-service-role/batch.amazonaws.com/AWSServiceRoleForBatch",
        {},
    ),
    ("ProvisionerFunction", "kms:RevokeGrant", KEY, OPTED_IN),
    ("HealerFunction", "iam:UpdateAssumeRolePolicy", f"{IAM}:role/ecsInstanceRole", {}),
    ("HealerFunction", "iam:AttachRolePolicy", f"{IAM}:role/app-web", {**MARKED, "iam:PolicyARN": SSM}),
    ("HealerFunction", "iam:AddRoleToInstanceProfile", f"{IAM}:instance-profile/app-web", {}),
    (
        "HealerFunction",
        "iam:PutRolePermissionsBoundary",
        f"{IAM}:role/app-web",
        {**MARKED, "iam:PermissionsBoundary": f"{IAM}:policy/app-boundary"},
    ),
    ("HealerFunction", "kms:RevokeGrant", KEY, OPTED_IN),
]


@pytest.mark.parametrize(("function", "action", "resource", "context"), FUNCTION_WORK)
def test_rolekeepers_functions_keep_doing_their_work_under_the_scp(function, action, resource, context):
    principal = PROVISIONER if function == "ProvisionerFunction" else HEALER
    context = {**context, "aws:PrincipalArn": principal}
    policies = function_policies(function)
    assert evaluate(policies, action, resource, context)
    assert evaluate([*policies, SCP], action, resource, context)
    # The same call from a role that only looks like the function's is stopped.
    assert not evaluate([*policies, SCP], action, resource, {**context, "aws:PrincipalArn": STACK_AUTHOR})


# The boundary's own keep (--boundary-policy-arn): a bounded administrator cannot shed it.
@pytest.mark.parametrize(
    ("action", "resource", "context", "denied"),
    [
        ("iam:CreateRole", f"{IAM}:role/web", {}, True),
        ("iam:CreateRole", f"{IAM}:role/web", {"iam:PermissionsBoundary": f"{IAM}:policy/Other"}, True),
        ("iam:CreateRole", f"{IAM}:role/web", {"iam:PermissionsBoundary": BOUNDARY_ARN}, False),
        ("iam:CreateUser", f"{IAM}:user/bob", {}, True),
        (
            "iam:PutRolePermissionsBoundary",
            f"{IAM}:role/web",
            {"iam:PermissionsBoundary": f"{IAM}:policy/Other"},
            True,
        ),
        (
            "iam:PutUserPermissionsBoundary",
            f"{IAM}:user/bob",
            {"iam:PermissionsBoundary": BOUNDARY_ARN},
            False,
        ),
        (
            "iam:DeleteRolePermissionsBoundary",
            f"{IAM}:role/web",
            {"iam:PermissionsBoundary": BOUNDARY_ARN},
            True,
        ),
        ("iam:DeleteUserPermissionsBoundary", f"{IAM}:user/alice", {}, True),
        ("iam:CreatePolicyVersion", BOUNDARY_ARN, {}, True),
        ("iam:SetDefaultPolicyVersion", BOUNDARY_ARN, {}, True),
        ("iam:DeletePolicy", BOUNDARY_ARN, {}, True),
        ("iam:CreatePolicyVersion", f"{IAM}:policy/Other", {}, False),
    ],
)
def test_the_boundary_keeps_itself_on_every_bounded_principal(action, resource, context, denied):
    assert (
        denied_explicitly([BOUNDARY], action, resource, {**context, "aws:PrincipalArn": ADMINISTRATOR})
        is denied
    )
    assert not denied_explicitly(
        [BOUNDARY], action, resource, {**context, "aws:PrincipalArn": BREAK_GLASS_ROLE}
    )


def test_the_boundary_without_its_own_arn_holds_only_the_guardrail():
    assert guardrail.boundary_statements(EXEMPT, prefix=PREFIX) == SCP["Statement"]


# Sizes: an SCP holds 5,120 characters, white space included; a managed policy 6,144, without.
LONG_PATTERNS = [
    "arn:aws:iam::*:role/StackSet-rolekeeper-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d-ProvisionerFun-*",
    "arn:aws:iam::*:role/StackSet-rolekeeper-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d-HealerFunction-*",
]


def test_the_scp_fits_its_quota_with_stack_set_role_names_and_two_break_glass_roles():
    exempt = [
        *LONG_PATTERNS,
        "arn:aws:iam::*:role/BreakGlass",
        "arn:aws:iam::*:role/security/IncidentResponse",
    ]
    assert not guardrail.check_exemptions(LONG_PATTERNS, exempt[2:], prefix="platform-app-")
    document = guardrail.scp(exempt, prefix="platform-app-")
    assert len(guardrail.compact(document)) <= guardrail.SCP_MAX_CHARS
    # CloudFormation's serialisation of the template's Content is not documented: with spaces too.
    assert len(json.dumps(document)) <= guardrail.SCP_MAX_CHARS
    boundary = guardrail.boundary_document(
        guardrail.boundary_statements(exempt, prefix="platform-app-", boundary_policy_arn=BOUNDARY_ARN)
    )
    assert guardrail.policy_chars(boundary) <= guardrail.MANAGED_POLICY_MAX_CHARS


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_every_arn_is_in_the_partition_asked_for(partition):
    exempt = [f"arn:{partition}:iam::*:role/rolekeeper-ProvisionerFunctionRole-*"]
    statements = guardrail.scp(exempt, prefix=PREFIX, partition=partition)["Statement"]
    arns = [
        r for s in statements for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    ]
    assert len(arns) == 30  # 10 documented roles, 6 service-linked, 11 profiles, 3 more
    assert all(arn.startswith(f"arn:{partition}:") for arn in arns)


# The exemptions: a pattern that reaches what the guardrail keeps would exempt it.
@pytest.mark.parametrize(
    ("functions", "break_glass", "prefix", "complaint"),
    [
        (["arn:aws:iam::*:role/*"], BREAK_GLASS, PREFIX, "also matches roles the guardrail keeps"),
        (
            ["arn:aws:iam::*:role/*FunctionRole*"],
            BREAK_GLASS,
            PREFIX,
            "also matches roles the guardrail keeps",
        ),
        (["arn:aws:iam::*:role/app-*"], BREAK_GLASS, PREFIX, "also matches roles the guardrail keeps"),
        (["arn:aws:iam::*:role/ecs*"], BREAK_GLASS, PREFIX, "also matches roles the guardrail keeps"),
        (
            ["arn:aws:iam::*:role/rolekeeper-*"],
            BREAK_GLASS,
            "rolekeeper-",
            "also matches roles the guardrail keeps",
        ),
        (
            FUNCTION_PATTERNS,
            ["arn:aws:iam::*:role/app-admin"],
            PREFIX,
            "also matches roles the guardrail keeps",
        ),
        (FUNCTION_PATTERNS, ["arn:aws:iam::*:role/Break*"], PREFIX, "without wildcards"),
        (FUNCTION_PATTERNS, ["arn:aws:iam::*:user/alice"], PREFIX, "is not a role ARN"),
        (["arn:aws-cn:iam::*:role/rolekeeper-*"], BREAK_GLASS, PREFIX, "is not a role ARN of partition aws"),
        (["rolekeeper-ProvisionerFunctionRole-*"], BREAK_GLASS, PREFIX, "is not a role ARN"),
        ([], BREAK_GLASS, PREFIX, "name rolekeeper's function roles"),
        (FUNCTION_PATTERNS, [], PREFIX, "name a break-glass role"),
    ],
)
def test_exemptions_that_would_reach_kept_roles_are_refused(functions, break_glass, prefix, complaint):
    problems = guardrail.check_exemptions(functions, break_glass, prefix=prefix)
    assert any(complaint in p for p in problems), problems


@pytest.mark.parametrize(
    "functions",
    [
        FUNCTION_PATTERNS,
        LONG_PATTERNS,
        [
            f"{IAM}:role/rolekeeper-ProvisionerFunctionRole-1A2B3C4D5E6F",
            f"{IAM}:role/rolekeeper-HealerFunctionRole-6F5E4D3C2B1A",
        ],
    ],
)
def test_exemptions_for_rolekeepers_own_roles_are_accepted(functions):
    assert guardrail.check_exemptions(functions, [f"{IAM}:role/ops/BreakGlass"], prefix=PREFIX) == []


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("role/app-*", "role/app-web", True),
        ("role/app-*", "role/app-team/Administrator", True),  # IAM's "*" crosses "/"
        ("role/*/ecsInstanceRole", "role/ecsInstanceRole", False),
        ("role/*/ecsInstanceRole", "role/x*", True),
        ("role/rolekeeper-*", "role/app-*", False),
        ("role/a?c", "role/*b*", True),
        ("role/a?c", "role/abd", False),
        ("*", "", True),
        ("?", "", False),
    ],
)
def test_globs_overlap_is_whether_one_string_matches_both(a, b, overlap):
    assert guardrail.globs_overlap(a, b) is overlap
    assert guardrail.globs_overlap(b, a) is overlap


def test_arn_patterns_overlap_part_by_part():
    # Whole-string globs would let the account's "*" swallow ":role/rolekeeper-..."; ArnLike does not.
    a, b = "arn:aws:iam::*:role/rolekeeper-*", "arn:aws:iam::*:role/ecsInstanceRole"
    assert guardrail.globs_overlap(a, b)
    assert not guardrail.arns_overlap(a, b)


# examples/org-hub.yaml carries the same SCP, written with the template's parameters.
class _Parameters(Resolver):
    """tools.policies' resolver, with these parameter values instead of its samples."""

    def __init__(self, template: dict[str, Any], values: dict[str, str]) -> None:
        super().__init__(template)
        self.values = values

    def ref(self, name: str) -> Any:
        return self.values[name] if name in self.values else super().ref(name)


def _hub() -> dict[str, Any]:
    return yaml.load((ROOT / "examples" / "org-hub.yaml").read_text(), Loader=Loader)  # type: ignore[no-any-return]  # noqa: S506


@pytest.mark.parametrize(
    ("functions", "break_glass", "prefix"),
    [
        (FUNCTION_PATTERNS, BREAK_GLASS, "app-"),
        (LONG_PATTERNS, ["arn:aws:iam::*:role/BreakGlass", "arn:aws:iam::*:role/security/IR"], "team-app-"),
    ],
)
def test_the_org_hub_template_attaches_exactly_the_cli_scp(functions, break_glass, prefix):
    hub = _hub()
    resource = hub["Resources"]["Guardrail"]
    assert resource["Type"] == "AWS::Organizations::Policy"
    assert resource["Properties"]["Type"] == "SERVICE_CONTROL_POLICY"
    values = {
        "GuardrailTargetIds": "ou-abcd-11112222,ou-abcd-33334444",
        "FunctionRoleArnPatterns": ",".join(functions),
        "BreakGlassRoleArns": ",".join(break_glass),
        "ApplicationRoleNamePrefix": prefix,
    }
    for name, value in values.items():  # each value passes the parameter's own AllowedPattern
        assert re.fullmatch(hub["Parameters"][name]["AllowedPattern"], value)
    properties = _Parameters(hub, values)(resource["Properties"])
    assert properties["Content"] == guardrail.scp([*functions, *break_glass], prefix=prefix)
    assert properties["TargetIds"] == ["ou-abcd-11112222", "ou-abcd-33334444"]


def test_the_org_hub_guardrail_is_optional_and_needs_its_exemptions():
    hub = _hub()
    assert hub["Resources"]["Guardrail"]["Condition"] == "HasGuardrail"
    assert hub["Parameters"]["GuardrailTargetIds"]["Default"] == ""
    rule = hub["Rules"]["GuardrailNeedsItsExemptions"]
    asserted = {json.dumps(a["Assert"], default=lambda t: {t.tag: t.value}) for a in rule["Assertions"]}
    assert any("FunctionRoleArnPatterns" in a for a in asserted)
    assert any("BreakGlassRoleArns" in a for a in asserted)


# The command line.
ARGS = [
    *(f"--function-role-arn-pattern={p}" for p in FUNCTION_PATTERNS),
    *(f"--break-glass-role={b}" for b in BREAK_GLASS),
]


def test_cli_prints_the_compact_scp(capsys):
    assert main(["guardrail", "scp", *ARGS]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == SCP
    assert out.strip() == guardrail.compact(SCP)
    assert f"{len(out.strip())} of 5120 characters" in err


def test_cli_prints_the_boundary_statements_or_a_whole_boundary(capsys):
    assert main(["guardrail", "boundary", *ARGS]) == 0
    assert json.loads(capsys.readouterr().out) == SCP["Statement"]
    assert main(["guardrail", "boundary", *ARGS, f"--boundary-policy-arn={BOUNDARY_ARN}", "--document"]) == 0
    assert json.loads(capsys.readouterr().out) == BOUNDARY


def test_cli_refuses_an_exemption_that_reaches_kept_roles_and_prints_nothing(capsys):
    assert main(["guardrail", "scp", "--function-role-arn-pattern=arn:aws:iam::*:role/*", *ARGS[2:]]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "also matches roles the guardrail keeps" in err


def test_cli_refuses_an_scp_over_the_quota(capsys):
    many = [
        f"--break-glass-role=arn:aws:iam::*:role/break-glass/BreakGlassRoleNumber{i:03d}" for i in range(30)
    ]
    assert main(["guardrail", "scp", *ARGS[:2], *many]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "too large for the 5120-character quota" in err


def test_cli_refuses_a_boundary_arn_that_is_not_a_policy(capsys):
    assert main(["guardrail", "boundary", *ARGS, "--boundary-policy-arn=arn:aws:iam::aws:policy/*"]) == 2
    assert "is not a customer managed policy ARN" in capsys.readouterr().err


@pytest.mark.parametrize("prefix", ["app*", "a", "app/"])
def test_cli_refuses_a_prefix_that_is_not_one(capsys, prefix):
    assert main(["guardrail", "scp", *ARGS, f"--prefix={prefix}"]) == 2
    assert "is not an ApplicationRoleNamePrefix" in capsys.readouterr().err
