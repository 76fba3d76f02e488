"""The guardrail: Deny statements, made from the catalog, that keep every principal but rolekeeper's
functions and a break-glass role from deleting, detaching or rewriting what rolekeeper keeps.

Prevent first, heal second: the healer puts back what was removed; the guardrail stops the removal.
Pure (catalog -> policy documents, no AWS call). The same statements serve as a service control
policy (`rolekeeper guardrail scp`, examples/org-hub.yaml) and as the Deny statements of a
permissions boundary (`rolekeeper guardrail boundary`). docs/guardrail.md explains each choice.

Where IAM can tell a kept object from another one:
- documented role and instance-profile names: by name, at any path (IAM names are unique in an
  account; "*" also matches "/", so each name is matched as `role/<name>` and `role/*/<name>`);
- service-linked roles: by their fixed path and name;
- application roles (`role/<prefix>*`): only those carrying rolekeeper's marker tag. The
  Service Authorization Reference (IAM) lists aws:ResourceTag for the `role` resource type, which
  each of the role actions below names, so the condition holds for every one of them;
- their instance profiles: by name only. aws:ResourceTag on an instance-profile action reads the
  profile's own tags, and rolekeeper tags roles, not profiles: every `instance-profile/<prefix>*`
  is kept;
- grants: not resources in IAM. RetireGrant and RevokeGrant name the key, so every grant on a key
  tagged `rolekeeper:spot-fleet-grants=allow` is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from rolekeeper.domain.catalog import (
    FIXED_ROLE_NAMES,
    KMS_OPT_IN_TAG_KEY,
    KMS_OPT_IN_TAG_VALUE,
    LINKED_SERVICES,
    MARKER_TAG_KEY,
    MARKER_TAG_VALUE,
)

VERSION = "2012-10-17"
# AWS Organizations quotas: "Maximum size of a policy document: service control policies 5,120
# characters", and every character counts, white space included (SCP syntax, note).
SCP_MAX_CHARS = 5120
# IAM quotas: a managed policy (a boundary is one) holds 6,144 characters, white space not counted.
MANAGED_POLICY_MAX_CHARS = 6144

# Deleting, detaching from or rewriting a kept role. Attaching and putting inline policies widen
# the role; the healer never removes what someone added, so that damage would stay (see
# docs/guardrail.md). Tags other than the marker are left to their owners.
ROLE_ACTIONS = (
    "iam:DeleteRole",
    "iam:DeleteServiceLinkedRole",
    "iam:UpdateAssumeRolePolicy",
    "iam:AttachRolePolicy",
    "iam:DetachRolePolicy",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:DeleteRolePermissionsBoundary",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
)
PROFILE_ACTIONS = (
    "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:DeleteInstanceProfile",
)
# Removing or overwriting the marker lifts the Deny on an application role; adding it to another
# role forges rolekeeper's ownership. IAM role tag keys are case-insensitive ("Rolekeeper:Managed"
# replaces the marker), so the key is compared ignoring case. CreateRole with tags is included
# for the forged marker on a new role.
MARKER_ACTIONS = ("iam:CreateRole", "iam:TagRole", "iam:UntagRole")
GRANT_ACTIONS = ("kms:RetireGrant", "kms:RevokeGrant")

# Extra statements for a boundary: it holds only while every other principal carries it.
BOUNDARY_POLICY_ACTIONS = (
    "iam:CreatePolicyVersion",
    "iam:DeletePolicy",
    "iam:DeletePolicyVersion",
    "iam:SetDefaultPolicyVersion",
)
BOUNDARY_REMOVAL_ACTIONS = ("iam:DeleteRolePermissionsBoundary", "iam:DeleteUserPermissionsBoundary")
BOUNDARY_SETTING_ACTIONS = (
    "iam:CreateRole",
    "iam:CreateUser",
    "iam:PutRolePermissionsBoundary",
    "iam:PutUserPermissionsBoundary",
)

PRINCIPAL_ARN = "aws:PrincipalArn"
_ROLE_ARN = re.compile(r"^arn:(?P<partition>[a-z-]+):iam::(?P<account>\d{12}|\*):role/(?P<name>[^:]+)$")
_POLICY_ARN = re.compile(r"^arn:(?P<partition>[a-z-]+):iam::\d{12}:policy/[^:*?]+$")


def _iam(partition: str, resource: str) -> str:
    return f"arn:{partition}:iam::*:{resource}"


def _by_name(partition: str, kind: str, name: str) -> list[str]:
    return [_iam(partition, f"{kind}/{name}"), _iam(partition, f"{kind}/*/{name}")]


def service_linked_role_patterns(partition: str) -> list[str]:
    patterns = []
    for service in LINKED_SERVICES.values():
        role = f"role{service.path}{service.role_name}"
        patterns.append(_iam(partition, role))
        if service.accepts_suffix:
            patterns.append(_iam(partition, f"{role}_*"))
    return patterns


def kept_role_patterns(partition: str) -> list[str]:
    """The documented fixed names at any path and the catalog's service-linked roles."""
    named = [p for name in FIXED_ROLE_NAMES for p in _by_name(partition, "role", name)]
    return [*named, *service_linked_role_patterns(partition)]


def application_role_pattern(partition: str, prefix: str) -> str:
    return _iam(partition, f"role/{prefix}*")


def kept_profile_patterns(partition: str, prefix: str) -> list[str]:
    named = [p for name in FIXED_ROLE_NAMES for p in _by_name(partition, "instance-profile", name)]
    return [*named, _iam(partition, f"instance-profile/{prefix}*")]


def _deny(
    sid: str, actions: Sequence[str], resources: Sequence[str] | str, exempt: Sequence[str], **condition: Any
) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Deny",
        "Action": list(actions),
        "Resource": resources if isinstance(resources, str) else list(resources),
        "Condition": {**condition, "ArnNotLike": {PRINCIPAL_ARN: list(exempt)}},
    }


def statements(exempt: Sequence[str], *, prefix: str, partition: str = "aws") -> list[dict[str, Any]]:
    """The guardrail's Deny statements; `exempt`: principal ARN patterns (functions, break-glass).

    A role action never names a profile and a profile action never names a role, so one statement
    carries both (the SCP quota counts every character).
    """
    return [
        _deny(
            "RolekeeperKeptRolesAndProfiles",
            [*ROLE_ACTIONS, *PROFILE_ACTIONS],
            [*kept_role_patterns(partition), *kept_profile_patterns(partition, prefix)],
            exempt,
        ),
        _deny(
            "RolekeeperMarkedApplicationRoles",
            ROLE_ACTIONS,
            application_role_pattern(partition, prefix),
            exempt,
            StringEquals={f"aws:ResourceTag/{MARKER_TAG_KEY}": MARKER_TAG_VALUE},
        ),
        _deny(
            "RolekeeperMarkerTag",
            MARKER_ACTIONS,
            _iam(partition, "role/*"),
            exempt,
            **{"ForAnyValue:StringEqualsIgnoreCase": {"aws:TagKeys": [MARKER_TAG_KEY]}},
        ),
        _deny(
            "RolekeeperSpotFleetGrants",
            GRANT_ACTIONS,
            f"arn:{partition}:kms:*:*:key/*",
            exempt,
            StringEquals={f"aws:ResourceTag/{KMS_OPT_IN_TAG_KEY}": KMS_OPT_IN_TAG_VALUE},
        ),
    ]


def scp(exempt: Sequence[str], *, prefix: str, partition: str = "aws") -> dict[str, Any]:
    return {"Version": VERSION, "Statement": statements(exempt, prefix=prefix, partition=partition)}


def boundary_statements(
    exempt: Sequence[str], *, prefix: str, partition: str = "aws", boundary_policy_arn: str | None = None
) -> list[dict[str, Any]]:
    """The Deny statements an administrator adds to the boundary of every other principal.

    With `boundary_policy_arn` (the boundary that will hold them), three more keep that boundary in
    place: its policy cannot be edited or deleted, no boundary can be removed, and no role or user
    can be created or given a boundary other than this one (else a bounded administrator makes an
    unbounded role and acts through it).
    """
    found = statements(exempt, prefix=prefix, partition=partition)
    if boundary_policy_arn:
        found += [
            _deny("RolekeeperBoundaryPolicyUnchanged", BOUNDARY_POLICY_ACTIONS, boundary_policy_arn, exempt),
            _deny("RolekeeperBoundaryStays", BOUNDARY_REMOVAL_ACTIONS, "*", exempt),
            _deny(
                "RolekeeperOnlyThisBoundary",
                BOUNDARY_SETTING_ACTIONS,
                "*",
                exempt,
                ArnNotEquals={"iam:PermissionsBoundary": boundary_policy_arn},
            ),
        ]
    return found


def boundary_document(statements_: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A whole boundary for principals that have none: everything their own policies allow, less the Denies."""
    allow = {"Sid": "AllowWhatIdentityPoliciesAllow", "Effect": "Allow", "Action": "*", "Resource": "*"}
    return {"Version": VERSION, "Statement": [allow, *statements_]}


def compact(document: Any) -> str:
    """JSON without white space: the form whose length the SCP quota counts."""
    return json.dumps(document, separators=(",", ":"))


def policy_chars(document: Any) -> int:
    """Characters IAM counts against a managed policy's quota (white space outside strings is not)."""
    return len(compact(document))


def globs_overlap(a: str, b: str) -> bool:
    """Whether one string matches both IAM wildcard patterns ("*": any run, "?": any one character).

    Walks the pairs of positions both patterns can reach after reading the same characters; a
    string common to both exists when both can end together. At most (len(a)+1)*(len(b)+1) pairs.
    """
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            todo.append((i + 1, j))
        if j < len(b) and b[j] == "*":
            todo.append((i, j + 1))
        if i < len(a) and j < len(b) and (a[i] in "*?" or b[j] in "*?" or a[i] == b[j]):
            todo.append((i if a[i] == "*" else i + 1, j if b[j] == "*" else j + 1))
    return False


def arns_overlap(a: str, b: str) -> bool:
    """Whether one ARN matches both ARN patterns. As in ArnLike, each of the six colon-separated
    parts is matched on its own: a "*" in the account does not reach into the resource."""
    parts_a, parts_b = a.split(":", 5), b.split(":", 5)
    if len(parts_a) != 6 or len(parts_b) != 6:
        return globs_overlap(a, b)
    return all(globs_overlap(x, y) for x, y in zip(parts_a, parts_b, strict=True))


def check_exemptions(
    function_roles: Sequence[str], break_glass: Sequence[str], *, prefix: str, partition: str = "aws"
) -> list[str]:
    """What is wrong with the exempt principals (empty: nothing).

    Every exempt pattern is a role ARN of this partition that matches no documented role at the
    root path, no service-linked role and no application role name: else the roles EC2
    instances use, or a role a stack author names `<prefix>...`, would be exempt too. (A pattern
    ending in "*" also matches a documented role at a path that continues it; such a role gains
    nothing from the exemption, since the guardrail keeps anyone from attaching policies to it.)
    Break-glass roles are named exactly; their account may be "*".
    """
    problems = []
    if not function_roles:
        problems.append("name rolekeeper's function roles (--function-role-arn-pattern)")
    if not break_glass:
        problems.append("name a break-glass role (--break-glass-role)")
    reachable = [
        *(_iam(partition, f"role/{name}") for name in FIXED_ROLE_NAMES),
        *service_linked_role_patterns(partition),
        application_role_pattern(partition, prefix),
    ]
    for kind, patterns in (("function role pattern", function_roles), ("break-glass role", break_glass)):
        for pattern in patterns:
            match = _ROLE_ARN.match(pattern)
            if not match or match["partition"] != partition:
                problems.append(
                    f"{kind} {pattern!r} is not a role ARN of partition {partition} "
                    f"(arn:{partition}:iam::<account or *>:role/<path and name>)"
                )
                continue
            if kind == "break-glass role" and any(c in match["name"] for c in "*?"):
                problems.append(f"break-glass role {pattern!r}: name it exactly, without wildcards")
            reached = [kept for kept in reachable if arns_overlap(pattern, kept)]
            if reached:
                problems.append(
                    f"{kind} {pattern!r} also matches roles the guardrail keeps ({reached[0]}): "
                    "those roles would be exempt"
                )
    return problems


def check_prefix(prefix: str) -> list[str]:
    """ApplicationRoleNamePrefix as template.yaml accepts it (no wildcard can slip into a pattern)."""
    if re.fullmatch(r"[A-Za-z0-9_+=,.@-]{2,32}", prefix):
        return []
    return [f"prefix {prefix!r} is not an ApplicationRoleNamePrefix (2 to 32 of A-Z a-z 0-9 _+=,.@-)"]


def check_boundary_policy_arn(arn: str, *, partition: str = "aws") -> list[str]:
    match = _POLICY_ARN.match(arn)
    if match and match["partition"] == partition:
        return []
    return [f"boundary policy {arn!r} is not a customer managed policy ARN of partition {partition}"]
